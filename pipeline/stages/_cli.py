"""What every stage entry point shares: the user-facing error contract."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline.data import DataError
from pipeline.params import ParamsError

# Problems the user can fix from the message alone: shown as one line, no traceback.
USER_ERRORS = (DataError, ParamsError, ValueError)


def run(main: Callable[[], None]) -> None:
    """Call `main`; a user error becomes one line on stderr and exit status 1."""
    try:
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
