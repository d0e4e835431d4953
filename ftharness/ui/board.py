"""SwanLab's local board for a folder of runs, served on a free loopback port, and what its JSON API says.

    with serve_board(Path("outputs/swanlog/default-study")) as url:
        experiments(url)   # [{"name", "light" (colour), "status" (1 finished, -1 crashed, 0 running), "config"}]

The same server as `swanlab watch DIR`; the tests and scripts/screenshots.py read the board through it.
"""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List

HOST = "127.0.0.1"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def serve_board(log_dir: Path) -> Iterator[str]:
    """`swanlab watch log_dir` on a free port of 127.0.0.1 until the block ends; yields the board's URL."""
    port = free_port()
    swanlab = Path(sys.executable).with_name("swanlab")
    server = subprocess.Popen([str(swanlab), "watch", str(log_dir), "--host", HOST, "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                _get(f"{url}/api/v1/project")
                break
            except OSError as error:
                if server.poll() is not None:
                    raise RuntimeError(f"swanlab watch {log_dir} exited: {server.stderr.read()[-2000:]}") from error
                if time.monotonic() > deadline:
                    raise TimeoutError(f"swanlab watch {log_dir} did not answer within {START_TIMEOUT_S} s") from error
                time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def experiments(url: str) -> List[dict]:
    """The board's experiments (name, light colour, status, description, config {key: {"value": ...}})."""
    return _get(f"{url}/api/v1/project")["data"]["experiments"]
