"""What every stage entry point shares: checks before any work, and the error contract.

A stage module defines `main(p, args)` and ends with `run(main)`. Before `main` runs, all of
params.yaml is checked and the tracking store is opened, so a mistake in either costs no work.
Whatever `main` raises then ends as _guard describes: one line, a non-zero exit status, and (by
the tracking module and files.OutputSet) no run left RUNNING and no half-written output.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from pipeline import distributed, interrupts, params, tracking
from pipeline.errors import UserError
from pipeline.stages import _guard
from pipeline.train import tune_allocator

Main = Callable[[params.Params, list[str]], None]


class UsageError(UserError):
    """A stage started with arguments that params.yaml does not define."""


def seed_argument(args: list[str], allowed: tuple[int, ...], key: str) -> int:
    """The seed a stage was started with (its last argument), which params must list."""
    if not args or not args[-1].isdigit() or int(args[-1]) not in allowed:
        given = args[-1] if args else "nothing"
        raise UsageError(f"seed {given!r} is not in {key} = {list(allowed)}; run the stage "
                         "through dvc repro, or pass one of those seeds")  # fmt: skip
    return int(args[-1])


def no_arguments(args: list[str]) -> None:
    if args:
        raise UsageError(f"takes no arguments, got {' '.join(args)!r}; run it through dvc repro")


def run(main: Main, trains: bool = False) -> None:
    """Check params and the tracking store, call `main`, and exit as _guard says. A training stage
    (`trains`) with train.processes > 1 starts itself that many times under torchrun instead, and
    each rank calls `main` (pipeline/distributed.py).

    SIGTERM (how DVC, CI and schedulers stop a process) is turned into KeyboardInterrupt, so it
    unwinds like Ctrl-C: the MLflow run is closed as KILLED and temporary files are removed. Both
    wait for a checkpoint write in progress (pipeline/interrupts.py). Ranks other than 0 keep the
    default: they hold nothing to clean up, and end at once when torchrun stops them.
    """
    args, verbose = _guard.split_verbose(sys.argv[1:])
    stage = _guard.stage_name(_module_name(main), args)
    if distributed.is_main():
        interrupts.install()
    # One line per epoch must reach a CI log when it happens, not when the buffer fills.
    sys.stdout.reconfigure(line_buffering=True)
    tune_allocator()
    body = lambda: start(main, args, trains, verbose)  # noqa: E731
    sys.exit(_guard.guarded(stage, body, verbose, quiet=distributed.quiet_status))


def start(main: Main, args: list[str], trains: bool = False, verbose: bool = False) -> None:
    """What each stage does first: all of params.yaml, then the tracking store, then its work."""
    p = params.load_all()
    tracking.check_store(tracking.tracking_uri(), p.mlflow.experiment)
    if trains and p.train.processes > 1 and distributed.world_size() == 1:
        _launch(p.train.processes, _module_name(main), [*args, *(["-v"] if verbose else [])])
        return
    main(p, args)


def _launch(processes: int, module: str, args: list[str]) -> None:
    """This stage as `processes` ranks; a rank that said why it failed leaves nothing to add."""
    try:
        distributed.launch(processes, module, args)
    except distributed.RankFailure as e:
        if e.reported:
            raise SystemExit(e.status) from None
        raise


def _module_name(main: Main) -> str:
    module = main.__module__
    if module == "__main__":  # started with python -m: the module's real name is in its spec
        module = sys.modules["__main__"].__spec__.name
    return module
