"""What every stage entry point shares: the user-facing error contract."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

from pipeline.data import DataError
from pipeline.params import ParamsError
from pipeline.tracking import TrackingError, check_server, tracking_uri
from pipeline.train import NumericalError, tune_allocator

# Problems the user can fix from the message alone: shown as one line, no traceback.
USER_ERRORS = (DataError, ParamsError, NumericalError, TrackingError, ValueError)


def seed_argument(argv: list[str], allowed: tuple[int, ...], key: str, stage: str) -> int:
    """The seed a stage was started with (its last argument), which params must list."""
    if not argv or not argv[-1].isdigit() or int(argv[-1]) not in allowed:
        given = argv[-1] if argv else "nothing"
        raise ValueError(f"{stage}: seed {given!r} is not in {key} = {list(allowed)}; "
                         f"run it through dvc repro, or pass one of those seeds")  # fmt: skip
    return int(argv[-1])


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run(main: Callable[[], None]) -> None:
    """Call `main`; a user error becomes one line on stderr and exit status 1.

    SIGTERM (how DVC, CI and schedulers stop a process) is turned into KeyboardInterrupt, so it
    unwinds like Ctrl-C: the MLflow run is closed as KILLED and temporary files are removed.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    # One line per epoch must reach a CI log when it happens, not when the buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    tune_allocator()
    try:
        check_server(tracking_uri())  # before any work: a dead server must not cost a training
        main()
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("error: interrupted; rerun the stage to continue (a training stage resumes after "
              "its last complete epoch)", file=sys.stderr)  # fmt: skip
        sys.exit(130)
