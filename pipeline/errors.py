"""The one base class of failures whose message is meant for the user.

A stage ends on such an error with its message alone (`error: <stage>: <message>`); any other
exception is a bug, shown with its type and its traceback written to a log (pipeline/stages/_guard.py).
Every module's own error (DataError, ParamsError, NumericalError, TrackingError, WriteError) derives
from it, so the guard needs no list of them.
"""


class UserError(Exception):
    """One line, for the user: what happened and what to do about it."""


def one_line(text: object, limit: int = 500) -> str:
    """`text` on one line (whitespace runs collapsed), cut at `limit` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else f"{flat[: limit - 3]}..."
