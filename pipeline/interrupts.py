"""Stop requests (Ctrl-C, SIGTERM) that wait for a checkpoint write in progress to end.

A stage turns both signals into KeyboardInterrupt, so a stop unwinds like Ctrl-C: its run is closed
as KILLED and its temporary files are removed. But an exception raised while torch.save's C++ zip
writer is calling back into Python comes out as a RuntimeError about the archive ("unexpected pos"),
which reads as a bug and closes the run as FAILED. So a write runs inside `deferred()`: a stop that
arrives then is held, and raised as KeyboardInterrupt once the write has ended (a few ms).
Once a stop is on its way out, a further SIGTERM is ignored so that it cannot cut the cleanup short.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_depth = 0  # how many deferred() blocks are open (they nest)
_held: int | None = None  # the signal that arrived inside one
_stopping = False  # the process is on its way out (a stop was raised, or a peer rank ended)


def stop(signum: int, frame: object) -> None:
    """The handler a stage installs for SIGINT and SIGTERM."""
    global _held
    if _stopping and signum == signal.SIGTERM:
        # Already unwinding: another KeyboardInterrupt would break off the cleanup (closing the
        # run, removing temporary files) half way, in whatever code it lands. torchrun sends its
        # SIGTERM to a rank that is already stopping because another rank ended. A second
        # Ctrl-C still interrupts.
        return
    if _depth:
        _held = signum
        return
    stopping()
    raise KeyboardInterrupt(f"signal {signum}")


def stopping() -> None:
    """From now on a SIGTERM changes nothing: the process is already ending."""
    global _stopping
    _stopping = True


def install() -> None:
    global _stopping
    _stopping = False
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold a stop (with `stop` installed) until the block ends, then raise it."""
    global _depth, _held
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
    if not _depth and _held is not None:
        signum, _held = _held, None
        stopping()
        raise KeyboardInterrupt(f"signal {signum}")
