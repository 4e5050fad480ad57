"""Training on several processes: torchrun starts them, DistributedDataParallel keeps them in step.

With `train.processes: N` > 1 a training stage launches itself N times under torchrun (launch()),
one rank per process, on this machine: NCCL and a GPU per rank on CUDA, gloo on CPU.
`train.batch_size` stays the global batch: every rank draws the same batch indices from the same
seeded generator and trains on its own slice of each batch (shard()); DDP averages the gradients,
so one step sees the same images as on one process, and the learning rate needs no rule (no
scaling with N). Rank 0 alone has side effects (the MLflow run, outputs, checkpoints, printing).

How a rank ends on a failure (quiet_status): rank 0 reports its own errors in one line; an error
that only follows from another rank's end (a collective whose peer is gone, the SIGTERM torchrun
sends the survivors) is left to the launcher, which names the rank that failed first.
No MLflow or DVC here: the library stays importable without them.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from pipeline import interrupts
from pipeline.errors import UserError

# A worker's exit status when it stopped only because another rank ended (it printed nothing).
PEER_ENDED = 75
INTERRUPTED = 130
# The longest a collective waits for a rank that neither answers nor ends (a hang, not a crash).
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
# torchrun waits this long for the survivors of a failure to stop before it SIGKILLs them.
SHUTDOWN_TIMEOUT_S = 15


class RankFailure(UserError):
    """A rank ended with an error; `reported`: it said why itself, the launcher adds nothing."""

    def __init__(self, message: str, status: int, reported: bool):
        super().__init__(message)
        self.status, self.reported = status, reported


class PeerEnded(KeyboardInterrupt):
    """Another rank ended, so a collective failed here: this rank stops as if interrupted (its
    run closes as KILLED) and leaves the line to the launcher."""


@contextlib.contextmanager
def peers_watched() -> Iterator[None]:
    """Turn a collective's failure because a peer is gone into PeerEnded."""
    try:
        yield
    except Exception as e:
        if active() and (isinstance(e, dist.DistError) or _peer_gone(e)):
            interrupts.stopping()  # torchrun's SIGTERM follows: it must not break the cleanup
            raise PeerEnded(str(e)) from e
        raise


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    """Whether this process is one of several ranks with a process group to sync over."""
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def rank_device(device: torch.device) -> torch.device:
    """Each rank's own GPU (by torchrun's LOCAL_RANK) when training on CUDA; else `device`."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """The ranks' process group for the block (nothing on one process)."""
    if world_size() == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend(device), timeout=COLLECTIVE_TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(batch: int) -> slice:
    """This rank's part of a global batch of `batch` items: contiguous, sizes within one."""
    size, index = world_size(), rank()
    return slice(index * batch // size, (index + 1) * batch // size)


def summed(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks (in place); itself on one process."""
    if active():
        dist.all_reduce(tensor, dist.ReduceOp.SUM)
    return tensor


def smallest(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, dist.ReduceOp.MIN)
    return tensor


def gathered(obj: Any) -> list[Any]:
    """Every rank's `obj`, by rank (a collective: every rank must call it)."""
    if not active():
        return [obj]
    every: list[Any] = [None] * world_size()
    dist.all_gather_object(every, obj)
    return every


def describe(device: torch.device, batch_size: int) -> dict[str, Any]:
    """What a run records of how it was spread: the world size, the per-rank and effective (global)
    batch, the backend and the devices."""
    size = world_size()
    devices = ([f"cuda:{i}" for i in range(size)] if device.type == "cuda" and size > 1
               else [str(device)] * size)  # fmt: skip
    return {"world_size": size, "per_rank_batch_size": -(-batch_size // size),
            "effective_batch_size": batch_size, "backend": backend(device) if size > 1 else "none",
            "devices": ",".join(devices)}  # fmt: skip


def quiet_status(error: BaseException) -> int | None:
    """The exit status for a worker to end on without a line of its own, None where it reports
    `error` itself. Ranks other than 0 meet the same data and the same reduced values as rank 0,
    which reports a user error for all; a stop or a lost peer is the launcher's to name."""
    if world_size() == 1:
        return None
    if isinstance(error, PeerEnded | dist.DistError) or _peer_gone(error):
        return PEER_ENDED
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    return 1 if isinstance(error, UserError) and not is_main() else None


def _peer_gone(error: BaseException) -> bool:
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        sign in text for sign in ("Connection closed by peer", "Connection reset by peer",
                                  "Broken pipe", "Socket Timeout"))  # fmt: skip


def launch(processes: int, module: str, args: list[str]) -> None:
    """`python -m module args` as `processes` ranks under torchrun on this machine, with at most
    one line of their failure: RankFailure names the rank that ended first and how."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # Split the cores between the ranks (torchrun would set 1 thread each, and say so).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    # torchrun logs every start, stop and worker's failure at WARNING and above, on loggers of its
    # own level (set by torch at import): the one line below says what failed.
    for name in [*logging.root.manager.loggerDict]:
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    argv = ["--standalone", "--nnodes", "1", "--nproc-per-node", str(processes),
            "--max-restarts", "0", "--monitor-interval", "0.2",
            "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S), "-m", module, *args]  # fmt: skip
    try:
        run(get_args_parser().parse_args(argv))
    except ChildFailedError as e:
        raise _failure(e.failures, processes) from None
    except SignalException as e:  # Ctrl-C or SIGTERM reached torchrun too: it stopped the ranks
        raise KeyboardInterrupt(f"signal {e.sigval}") from None


def _failure(failures: dict[int, Any], processes: int) -> BaseException:
    """What to raise for torchrun's failures (ProcessFailure by rank): nothing more to say when a
    rank reported its error; else the first rank that ended on its own (the others stopped
    because of it: a lost peer, or torchrun's SIGTERM); an interrupt when there is none."""
    statuses = {r: f.exitcode for r, f in failures.items()}
    if 1 in statuses.values():  # that rank printed its line
        return RankFailure("", 1, reported=True)
    causes = [r for r, status in statuses.items() if status not in (PEER_ENDED, INTERRUPTED)]
    if not causes:
        return KeyboardInterrupt("the ranks were stopped")
    first = min(causes, key=lambda r: failures[r].timestamp)
    status = statuses[first]
    how = (f"was killed by {signal.Signals(-status).name}" if status < 0
           else f"ended with status {status}")  # fmt: skip
    return RankFailure(
        f"rank {first} of {processes} {how}, so torchrun stopped the others; rerun the stage to "
        "resume after the last complete epoch",
        status=1,
        reported=False,
    )
