"""The one formatter of numbers for people: tables, figure labels, run names and console lines; and the one
reader of the numbers that arrive as text (override values, table cells).

`format_value` writes 3 significant digits, the figures of tables and names; the findings' checks write their
numbers without exponents (`format_plain`) and their changes as percentages (`format_change`); durations read
as seconds or minutes; counts name their noun in the right number (`number_of`: 1 point, 2 points). Tables are
Markdown, one shape for the results table, the answers side by side and the study write-up.
"""

import math
import re
from typing import Any, Dict, List, Optional, Sequence

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def format_value(value: Any) -> str:
    """Numbers to 3 significant digits (`1.09e-3`, `0.05`, `4.5`, `16`, `1235`), also numbers that arrive as
    text (override values); anything else as it is, None as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, str):
        if not NUMBER.fullmatch(value) or re.fullmatch(r"[-+]?\d+", value):
            return value
        value = float(value)
    if isinstance(value, bool) or isinstance(value, int) or not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e6 or abs(value) >= 1000:
        return str(round(value))
    if value != 0 and abs(value) < 1e-2:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:.3g}"


def format_plain(value: Optional[float]) -> str:
    """3 significant digits, without exponents for the large numbers (MB, seconds); `n/a` for None."""
    if value is None:
        return "n/a"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def format_change(value: float) -> str:
    """A relative change as a signed percentage: `-12%`."""
    return f"{value:+.0%}"


def format_seconds(value: Optional[float]) -> str:
    """`12.3 s`, from two minutes on `2.5 min`; "" for None."""
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def format_minutes(seconds: Optional[float]) -> str:
    """`14.5 min`; `n/a` for None."""
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def as_number(value: Any) -> float:
    """The value as a float, NaN when it is not a number (booleans are categories, not numbers)."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def number_of(count: int, noun: str, nouns: Optional[str] = None) -> str:
    """`2 points`, `1 point`, `0 studies` (`nouns`: a plural other than noun + s), where lines said `point(s)`."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def markdown_table(rows: List[Dict[str, Any]], columns: Optional[Sequence[str]] = None, line_break: str = " ") -> str:
    """Rows as a Markdown table, `columns` in order (default: the first row's keys); a cell a row lacks is empty,
    a `|` in a cell is escaped and a line break becomes `line_break` (`<br>` where the table is read rendered)."""
    if not rows:
        return "(no runs)\n"
    columns = list(columns or rows[0])

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", line_break)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
