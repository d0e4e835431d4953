"""The one formatter of numbers for people: tables, figure labels, run names and console lines."""

import math
import re
from typing import Any

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
