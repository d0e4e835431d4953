"""What a user sees: the console's lines and progress bars (console), SwanLab runs (tracking) and its local
board (board), a run's colour from its swept value (colours), and the one formatter of numbers (formatting)."""

from ftharness.lazy import exports

__getattr__, __all__ = exports(__name__, {
    "console": ["Console", "ConsoleFilter", "progress", "say"],
    "tracking": ["Tracker", "run_name"],
    "board": ["experiments", "serve_board"],
    "colours": ["Scale", "colours_for"],
    "formatting": ["format_value", "number_of"],
})
