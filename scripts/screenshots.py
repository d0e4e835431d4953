"""The README's screenshots: SwanLab's charts and a pruned run's page of a sweep, its report.html; headless Chromium.

    .venv/bin/python scripts/screenshots.py                      run a short default study, then shoot it
    .venv/bin/python scripts/screenshots.py outputs/multirun/default-study/<time>   shoot a finished sweep

Writes docs/swanlab-charts.png, docs/swanlab-run.png (a pruned trial's page) and docs/report.png. The board is
`swanlab watch` on a free 127.0.0.1 port (ftharness/ui/board.py); the browser is Debian's /usr/bin/chromium driven
by Playwright (no browser download). Extra arguments after `--` go to the study's command line.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ftharness.ui.board import experiments, serve_board  # noqa: E402 -- once the repository is on sys.path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# A short default study: every trial's first steps, enough for the curves of low / good / too high lr.
SHORT_STUDY = ["sweep=default", "hydra.sweeper.n_trials=6", "train.max_steps=8", "data.test_size=40"]


@contextmanager
def browser_page(width: int = 1500, height: int = 900) -> Iterator:
    """A Chromium page (Playwright) that collects JavaScript errors in `page.errors`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": width, "height": height})
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on("console", lambda message: page.errors.append(message.text) if message.type == "error" else None)
        try:
            yield page
        finally:
            context.close()


def run_study(extra: List[str]) -> Path:
    """Run the short default study in a fresh folder (outputs/screenshots: an earlier default study in
    outputs/ would be resumed, not rerun); return its sweep folder."""
    cwd = REPO / "outputs" / "screenshots"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "ftharness", "-m", *SHORT_STUDY, *extra], cwd=cwd, env=env, check=True)
    sweep_dir, = (cwd / "outputs" / "multirun" / "default-study").iterdir()
    return sweep_dir


def swanlog_dir(sweep_dir: Path) -> Path:
    """The SwanLab folder of a sweep, from the config it ran with (a relative path: from where it ran)."""
    config = OmegaConf.load(sweep_dir / "multirun.yaml")
    log_dir = Path(config.tracker.log_dir)
    return log_dir if log_dir.is_absolute() else Path(config.hydra.runtime.cwd) / log_dir


def shoot_board(url: str, docs: Path) -> None:
    """The charts of every run, and the page of a run that stopped early (its state and reason on top)."""
    with browser_page(1500, 640) as page:
        page.goto(f"{url}/charts")
        page.locator(".lc-legend-item").first.wait_for()  # the legends come with the charts' data
        page.wait_for_timeout(1500)  # the charts animate in
        page.screenshot(path=docs / "swanlab-charts.png")
    runs = experiments(url)

    def state(run: dict) -> str:
        return run.get("config", {}).get("result.state", {}).get("value")

    diverged = next((r for r in runs if state(r) == "diverged"), runs[0])
    stopped = next((r for r in runs if state(r) == "pruned"), diverged)
    with browser_page(1500, 640) as page:
        page.goto(f"{url}/experiment/{stopped['id']}")
        page.locator(".lc-legend-item, canvas").first.wait_for()
        page.wait_for_timeout(1500)
        page.screenshot(path=docs / "swanlab-run.png")


def shoot_report(sweep_dir: Path, docs: Path) -> None:
    """report.html redrawn by the current code (a finished sweep's page may predate it), then its top."""
    from ftharness.report.sweep_report import write_report

    write_report(sweep_dir)
    with browser_page(1300, 1000) as page:
        page.goto((sweep_dir / "report.html").resolve().as_uri())
        page.screenshot(path=docs / "report.png")


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", nargs="?", type=Path, help="a finished sweep folder (default: run a short study)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where the PNGs go")
    parser.add_argument("overrides", nargs="*", help="after --: overrides for the study")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir or run_study(args.overrides)
    args.docs.mkdir(parents=True, exist_ok=True)
    with serve_board(swanlog_dir(sweep_dir)) as url:
        shoot_board(url, args.docs)
    shoot_report(sweep_dir, args.docs)
    print(f"screenshots of {sweep_dir}: " + ", ".join(str(args.docs / n) for n in
                                                       ("swanlab-charts.png", "swanlab-run.png", "report.png")))


if __name__ == "__main__":
    main(sys.argv[1:])
