"""How every stage process ends on an exception: one line on stderr, the traceback in a log file.

    error: <stage>: <what happened>; <what to do>

A UserError (pipeline/errors.py) is shown by its message alone. An OSError names the file and the
system's reason. Anything else is a bug: the line names the exception's type and the log file that
holds the traceback. With PIPELINE_VERBOSE=1 in the environment, or -v/--verbose on the stage's
command line, the traceback is printed to the terminal as well, as DVC's -v does.

Standard library only, so that it can also report a failure while torch or MLflow are imported
(pipeline/stages/__init__.py installs it as sys.excepthook for that).
"""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from pipeline import provenance
from pipeline.errors import UserError, one_line

VERBOSE_ENV = "PIPELINE_VERBOSE"
VERBOSE_FLAGS = ("-v", "--verbose")
LOGS_DIR = "logs"  # in the project root (git-ignored); also for DVC's temporary experiment copies
INTERRUPTED = 130  # the shell's status for a process ended by SIGINT


def split_verbose(argv: list[str]) -> tuple[list[str], bool]:
    """The stage's arguments without -v/--verbose, and whether tracebacks go to the terminal."""
    args = [a for a in argv if a not in VERBOSE_FLAGS]
    env = os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return args, env or len(args) != len(argv)


def stage_name(module: str, args: list[str]) -> str:
    """DVC's name of the stage: `distill@kd-42` for `python -m pipeline.stages.distill kd 42`."""
    name = module.rsplit(".", 1)[-1]
    return one_line(f"{name}@{'-'.join(args)}" if args else name, limit=120)


def guarded(
    stage: str,
    body: Callable[[], None],
    verbose: bool,
    err: TextIO | None = None,
    quiet: Callable[[BaseException], int | None] = lambda error: None,
) -> int:
    """Run `body`; return the process's exit status, having said in one line why it failed, unless
    `quiet` gives the status to end on without a line (a rank whose launcher says it)."""
    err = err or sys.stderr
    try:
        body()
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as stages/_cli.py maps it
        if (status := quiet(e)) is not None:
            return status
        interrupted(stage, err)
        return INTERRUPTED
    except Exception as e:
        if (status := quiet(e)) is not None:
            return status
        report(stage, e, verbose, err)
        return 1
    return 0


def interrupted(stage: str, err: TextIO) -> None:
    print(f"error: {stage}: interrupted; rerun the stage to continue (a training stage resumes "
          "after its last complete epoch)", file=err)  # fmt: skip


def report(stage: str, error: BaseException, verbose: bool, err: TextIO) -> None:
    """Print the one line for `error` (and with `verbose`, its traceback first)."""
    if verbose:
        traceback.print_exception(error, file=err)
    if isinstance(error, UserError):
        print(f"error: {stage}: {one_line(error)}", file=err)
        return
    where = "above" if verbose else f"in {write_log(stage, error)} ({VERBOSE_ENV}=1 prints it here)"
    if isinstance(error, ImportError):  # a broken or foreign environment, not a bug
        print(f"error: {stage}: {one_line(error)} ({type(error).__name__}); run the stage with the "
              "project's environment (scripts/setup makes it; scripts/dvc uses it), then rerun; "
              f"traceback {where}", file=err)  # fmt: skip
        return
    if isinstance(error, OSError):
        name, fix = (f"{error.filename}: ", "check that file and the disk it is on") if (
            error.filename) else ("", "check the disks the stage writes to (free space, permissions)")  # fmt: skip
        print(f"error: {stage}: {name}{error.strerror or one_line(error)} ({type(error).__name__}); "
              f"{fix}, then rerun; traceback {where}", file=err)  # fmt: skip
        return
    print(f"error: {stage}: unexpected {type(error).__name__}: {one_line(error)}; this is a bug in "
          f"the pipeline: please report it with the traceback {where}", file=err)  # fmt: skip


def write_log(stage: str, error: BaseException) -> str:
    """Write the traceback to logs/<time>-<stage>.log; returns its path, or why there is none."""
    text = "".join([
        f"stage: {stage}\ncommand: {' '.join(sys.argv)}\ncwd: {Path.cwd()}\n",
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\npython: {platform.python_version()}\n\n",
        *traceback.format_exception(error),
    ])  # fmt: skip
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{re.sub(r'[^A-Za-z0-9@_.-]', '_', stage)}.log"
    failures = []
    for folder in (provenance.project_root() / LOGS_DIR, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return str(folder / name)
        except OSError as e:  # a full or read-only disk may be what failed the stage
            failures.append(f"{folder}: {e.strerror}")
    return f"no log file ({'; '.join(failures)})"


def excepthook(kind: type[BaseException], error: BaseException, tb) -> None:
    """sys.excepthook for what escapes before a stage's guard runs: a failing import, say, or
    Ctrl-C during the seconds torch and MLflow take to import."""
    args, verbose = split_verbose(sys.argv[1:])
    stage = stage_name(Path(sys.argv[0]).stem, args)
    if isinstance(error, KeyboardInterrupt):
        interrupted(stage, sys.stderr)
        sys.stderr.flush()
        os._exit(INTERRUPTED)  # the status guarded() gives an interrupt; nothing else is running
    elif isinstance(error, Exception):
        report(stage, error, verbose, sys.stderr)
    else:
        sys.__excepthook__(kind, error, tb)
