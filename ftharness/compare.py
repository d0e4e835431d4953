"""`python -m ftharness.compare RUN_DIR...`: the base model's and each run's answers to the same prompts, side by side.

Greedy answers through the chat template, one column per model: the base, then each run's adapter (a sweep
directory stands for its finished jobs), as a Markdown table and a self-contained HTML page
(ftharness/report/answers.py). A run that cannot be compared is one line on stderr, exit code 2.
"""

import argparse
from pathlib import Path
from typing import List, Optional

from omegaconf import OmegaConf

from ftharness.report.answers import (
    answer_rows,
    answers_header,
    as_prompts,
    check_same_base,
    default_prompts,
    expand_runs,
    generate_columns,
    html_report,
    markdown_report,
    read_prompts,
)
from ftharness.ui.console import quiet_library_notices

DEFAULT_MAX_NEW_TOKENS = 40


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ftharness.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="finished run directories with an adapter, or sweep directories (all their jobs)")
    parser.add_argument("--prompts", type=Path, metavar="FILE",
                        help="one prompt per line, or a JSON list (default: the first run's eval.prompts, or the "
                             "first user turn of held-out dialogues of its data, with their reference replies)")
    parser.add_argument("--max-new-tokens", type=int, metavar="N",
                        help="tokens per answer (default: the first run's eval.max_new_tokens, "
                             f"else {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--output", type=Path, default=Path("compare.md"), metavar="FILE.md",
                        help="the Markdown file to write; the HTML page goes next to it (default: compare.md)")
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    quiet_library_notices()
    parser = _parser()
    args = parser.parse_args(argv)

    def fail(message) -> None:
        parser.exit(2, f"ftharness.compare: error: {message}\n")  # one line, no usage

    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        fail("--max-new-tokens must be at least 1")
    if args.output.suffix != ".md":
        fail(f"--output {args.output}: a .md file (the .html goes beside it)")
    try:
        runs = expand_runs(args.runs)
        check_same_base(runs)
        system_prompt = OmegaConf.select(runs[0].cfg, "data.system_prompt")
        prompts = as_prompts(read_prompts(args.prompts), system_prompt) if args.prompts else default_prompts(runs[0])
    except (ValueError, OSError) as error:  # RunDirError and DataError included
        fail(error)
    if not prompts:
        fail("the first run has no prompts (eval.prompts, or held-out dialogues of its data): pass --prompts FILE")
    max_new_tokens = args.max_new_tokens or runs[0].cfg.eval.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    rows = answer_rows(prompts, generate_columns(runs, prompts, max_new_tokens))
    header = answers_header(runs, max_new_tokens)
    markdown = markdown_report(rows, header)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(markdown)
    args.output.with_suffix(".html").write_text(html_report(rows, header))
    print(markdown + f"\nwrote {args.output} and {args.output.with_suffix('.html')}")


if __name__ == "__main__":
    main()
