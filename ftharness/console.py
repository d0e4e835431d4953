"""What a user sees on the console while trials run: progress bars for long work (training, evaluation).

Everything else (the Trainer's raw logs, library notices) belongs in the job's log file, not here.
"""

import sys

from tqdm.auto import tqdm


def progress(total: int, description: str, unit: str = "it") -> tqdm:
    """A progress bar on stderr for `total` units of work; use it as a context manager and call
    `.update(n)` (and `.set_postfix(...)` for live figures). It closes without a trace when done."""
    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr)
