"""One fit() for the teacher and for every student.

The loop is method-agnostic: the bound loss function decides what is computed, the teacher's targets
come from a function (a live frozen teacher, or outputs cached once), and the method's parts (the
regressor's convolution, say) train alongside the model. The model is a taps.Tapped network, so the
loss sees the layers it taps. Convolutions run channels_last, under bf16 autocast
when config.precision says so.
Images stay uint8 on the training device and are normalised per batch there; batches are drawn by
index with a generator seeded from `seed`, so runs with the same seed see the same batches in the same
order. Losses and accuracy accumulate on the device and are read back once per epoch.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pipeline import distributed, progress
from pipeline.data import Normalizer, Split, augment, batch_indices
from pipeline.errors import UserError
from pipeline.evaluate import accuracy, predict
from pipeline.losses import TOTAL, Context, Terms
from pipeline.models import Outputs
from pipeline.taps import Tapped

CPU = torch.device("cpu")
EpochCallback = Callable[[int, dict[str, float]], None]
# What fit() needs to continue after an epoch: see loop_state(). Tensors are the live ones (valid
# until training goes on), so a callback that keeps them must copy or serialise them at once.
LoopState = dict[str, Any]


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device = CPU
    precision: str = "fp32"  # or "bf16": autocast to bfloat16 where the device supports it
    augment: bool = False  # random crop (4 px padding) and horizontal flip, on the device


PRECISIONS = ("fp32", "bf16")


class NumericalError(UserError):
    """Training diverged: a loss was NaN or infinite. The message is one line meant for the user."""


# The teacher's targets for a batch: given the batch's indices into the training set and its
# (normalised, possibly augmented) images. A live teacher uses the images; a cache uses the indices.
Targets = Callable[[torch.Tensor, torch.Tensor], Outputs]


def tune_allocator() -> None:
    """Keep glibc malloc from returning each batch's multi-megabyte buffers to the OS.

    By default glibc serves large allocations with mmap and unmaps them on free, so every training
    step pays fresh page faults for its activations: measured here, a LightNN epoch took 4.4 s
    instead of 2.7 s in a fresh process. Raising the mmap threshold is not enough for the teacher:
    glibc caps it at 32 MiB, and a 128 x 128 x 32 x 32 bf16 activation is just over that (a ReLU on
    it took 11.6 ms instead of 1.2 ms). So mmap is switched off and the heap is never trimmed below
    1 GiB: freed buffers are reused by the next step. Process-wide, so entry points call it; a no-op
    where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1024 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc's malloc.h


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; else `name` (checked by check_device)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_device(name: str) -> None:
    """ValueError unless `name` is auto, cpu, or a CUDA or MPS device that this machine has."""
    if name in ("auto", "cpu"):
        return
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps") or (index and not (index.isascii() and index.isdigit())):
        raise ValueError("expected auto, cpu, cuda, cuda:<index> or mps")
    available = (
        torch.cuda.device_count() if kind == "cuda" else int(torch.backends.mps.is_available())
    )
    if int(index or 0) >= available:
        raise ValueError(f"this machine has {available} {kind} device(s); use auto or cpu")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on CPU and on GPUs that support it; fp32 (a no-op) otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32" or (device.type == "cuda" and not torch.cuda.is_bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode (dropout off) and no gradients: the teacher only provides targets."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def live_teacher(teacher: Tapped, precision: str) -> Targets:
    """Targets from running the frozen teacher on each batch (needed when batches are augmented)."""
    device = next(teacher.parameters()).device
    freeze(teacher.to(memory_format=torch.channels_last))

    @torch.no_grad()
    def targets(idx: torch.Tensor, x: torch.Tensor) -> Outputs:
        with autocast(device, precision):
            out = teacher(x)
        return Outputs(out.logits.float(), {k: v.float() for k, v in out.features.items()})

    return targets


def cached_teacher(cache: Outputs) -> Targets:
    """Targets looked up by index in outputs computed once (exact without augmentation)."""
    return lambda idx, x: Outputs(cache.logits[idx], {k: v[idx] for k, v in cache.features.items()})


@torch.no_grad()
def teacher_outputs(
    teacher: Tapped,
    images: torch.Tensor,
    normalize: Normalizer,
    precision: str,
    batch_size: int = 512,
) -> Outputs:
    """The frozen teacher's logits and tapped layers for every image (on the images' device)."""
    targets = live_teacher(teacher, precision)
    normalize = normalize.to(images.device)
    outs = [
        targets(None, normalize(chunk).contiguous(memory_format=torch.channels_last))
        for chunk in images.split(batch_size)
    ]
    return Outputs(
        torch.cat([o.logits for o in outs]),
        {name: torch.cat([o.features[name] for o in outs]).contiguous() for name in teacher.layers},
    )


def fit(
    model: Tapped,
    train: Split,
    loss_fn: Callable[..., Terms],
    config: FitConfig,
    normalize: Normalizer,
    *,
    num_classes: int,
    targets: Targets | None = None,
    parts: nn.Module | None = None,
    eval_sets: Mapping[str, Split] | None = None,
    on_epoch: EpochCallback | None = None,
    on_checkpoint: Callable[[LoopState], None] | None = None,
    start: LoopState | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train `model` (and the method's `parts`) with Adam on `loss_fn`; returns the trained model.

    `targets` gives the teacher's outputs per batch (live_teacher or cached_teacher), None when the
    method needs no teacher. After each epoch `on_epoch(epoch, metrics)` gets the epoch's mean of
    every loss component as `train_<component>` (the total as `train_loss`), `train_accuracy`,
    `<name>_accuracy` for each split in `eval_sets` and `epoch_seconds`. Epochs count from 1.

    Then `on_checkpoint` gets the loop's state; given back as `start`, training continues after
    that epoch exactly as if it had never stopped (the same weights on CPU): the state holds the
    weights, the optimizer's moments and both random streams (batch order and dropout).

    Under torchrun (pipeline/distributed.py) every rank calls fit() with the same arguments, but
    only rank 0 passes `eval_sets` and the callbacks: each rank trains on its slice of every batch,
    and the figures it reports are summed over the ranks first.
    """
    loop = _set_up(model, train, loss_fn, config, normalize, num_classes, targets, parts)
    done = 0
    if start is not None:
        done = _restore(start, model, parts, loop.optimizer, loop.order, config.device)
        _say(f"{desc}: resuming after epoch {done}/{config.epochs}")
    on_device = {k: Split(s.images.to(config.device), s.labels.to(config.device))
                 for k, s in (eval_sets or {}).items()}  # fmt: skip

    # Closed on any way out, so that an error line starts on a line of its own in a terminal.
    with distributed.peers_watched(), progress.bar(
        total=config.epochs * loop.steps, desc=desc, unit="step", initial=done * loop.steps,
        shown=distributed.is_main(),
    ) as bar:  # fmt: skip
        for epoch in range(done + 1, config.epochs + 1):
            started = time.perf_counter()
            metrics = _train_epoch(loop, epoch, bar)
            metrics |= _monitored(model, on_device, loop.normalize, config)
            metrics["epoch_seconds"] = time.perf_counter() - started
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            _say(f"{desc} epoch {epoch}/{config.epochs}: {shown}")
            ranks = distributed.gathered(_rng_states(config.device))  # a collective: every rank
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if on_checkpoint is not None:
                state = loop_state(epoch, model, parts, loop.optimizer, loop.order, config.device)
                on_checkpoint(state | ({"rank_rngs": ranks} if len(ranks) > 1 else {}))
    loop.optimizer.zero_grad(set_to_none=True)  # the returned model carries no stale gradients
    return model.to(memory_format=torch.contiguous_format)


def _set_up(
    model: Tapped,
    train: Split,
    loss_fn: Callable[..., Terms],
    config: FitConfig,
    normalize: Normalizer,
    num_classes: int,
    targets: Targets | None,
    parts: nn.Module | None,
) -> _Loop:
    """Model, parts and data on the training device, the optimizer, and both random streams
    seeded: batch order (its own generator) and dropout (torch's, the same for every variant)."""
    device = config.device
    model.to(device, memory_format=torch.channels_last)  # faster convolutions on CPU and GPU
    trainable = [*model.parameters()]
    if parts is not None:
        trainable += parts.to(device, memory_format=torch.channels_last).parameters()
    optimizer = torch.optim.Adam(trainable, lr=config.lr)
    order = torch.Generator().manual_seed(config.seed)  # the same batches on every rank
    torch.manual_seed(config.seed + distributed.rank())  # dropout: each rank masks its own slice
    step: nn.Module = _Step(model, parts, loss_fn)
    if distributed.active():  # gradients averaged over the ranks, the initial weights rank 0's
        step = nn.parallel.DistributedDataParallel(step)
    return _Loop(model, parts, optimizer, step, targets, normalize.to(device), config, order,
                 Split(train.images.to(device), train.labels.to(device)), num_classes)  # fmt: skip


class _Step(nn.Module):
    """The model and the method's parts as one module whose forward is the training loss, so that
    DistributedDataParallel syncs the gradients of both."""

    def __init__(self, model: Tapped, parts: nn.Module | None, loss_fn: Callable[..., Terms]):
        super().__init__()
        self.model, self.parts, self.loss_fn = model, parts, loss_fn

    def forward(self, x: torch.Tensor, teacher_out: Outputs | None, y: torch.Tensor,
                ctx: Context) -> tuple[Outputs, Terms]:  # fmt: skip
        out = self.model(x)
        return out, self.loss_fn(out, teacher_out, y, self.parts, ctx)


@dataclass(frozen=True)
class _Loop:
    """What every training step uses, set up once by fit()."""

    model: Tapped
    parts: nn.Module | None
    optimizer: torch.optim.Optimizer
    step: nn.Module  # _Step, or DistributedDataParallel around it
    targets: Targets | None
    normalize: Normalizer
    config: FitConfig
    order: torch.Generator  # batch order (and augmentation)
    train: Split  # on the training device
    num_classes: int

    @property
    def steps(self) -> int:
        return -(-len(self.train.labels) // self.config.batch_size)


def _train_epoch(loop: _Loop, epoch: int, bar: tqdm) -> dict[str, float]:
    """One epoch of steps; the mean of every loss component (`train_<name>`) and the accuracy."""
    config, images, labels = loop.config, loop.train.images, loop.train.labels
    device = config.device
    loop.model.train()
    sums: dict[str, torch.Tensor] = {}
    correct = torch.zeros((), device=device, dtype=torch.long)
    # The first batch whose loss is not finite, kept on the device (no sync per step) and checked
    # once per epoch: a diverged model is never reported or saved as trained.
    first_bad = torch.zeros((), device=device, dtype=torch.long)
    for step, idx in enumerate(
        batch_indices(len(labels), config.batch_size, loop.order, device), 1
    ):
        # Augmented whole, then sliced: every rank's batch-order stream stays in step.
        batch = augment(images[idx], loop.order) if config.augment else images[idx]
        idx, batch, scale = _rank_slice(idx, batch)
        x, y = loop.normalize(batch).contiguous(memory_format=torch.channels_last), labels[idx]
        teacher_out = loop.targets(idx, x) if loop.targets is not None else None
        ctx = Context(epoch, idx, loop.num_classes, len(labels))
        with autocast(device, config.precision):
            out, terms = loop.step(x, teacher_out, y, ctx)
        loop.optimizer.zero_grad(set_to_none=True)
        (terms[TOTAL] * scale if scale != 1.0 else terms[TOTAL]).backward()
        loop.optimizer.step()
        bad = (first_bad == 0) & ~torch.isfinite(terms[TOTAL].detach())
        first_bad = torch.where(bad, step, first_bad)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0) + value.detach().float() * len(idx)
        correct += (out.logits.argmax(dim=1) == y).sum()
        bar.update()
    sums, correct, first_bad = _over_ranks(sums, correct, first_bad)
    if (bad_step := first_bad.item()) > 0:
        raise NumericalError(
            f"the training loss became NaN or infinite at epoch {epoch}, batch {bad_step} of "
            f"{loop.steps}; lower train.lr or the variant's weights and rerun"
        )
    metrics = {f"train_{name}": (total / len(labels)).item() for name, total in sums.items()}
    metrics["train_accuracy"] = correct.item() / len(labels)
    return metrics


def _rank_slice(idx: torch.Tensor, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's part of a batch, and the factor on its loss: DDP averages the ranks'
    gradients, so a slice counts by its size for the average to be the whole batch's mean (1.0
    on one process, and for slices of equal size)."""
    if not distributed.active():
        return idx, batch, 1.0
    mine = distributed.shard(len(idx))
    return idx[mine], batch[mine], (mine.stop - mine.start) * distributed.world_size() / len(idx)


def _over_ranks(
    sums: dict[str, torch.Tensor], correct: torch.Tensor, first_bad: torch.Tensor
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """An epoch's sums and counts over every rank, and the first bad batch of any (as they are
    on one process)."""
    if not distributed.active():
        return sums, correct, first_bad
    names = sorted(sums)  # the same terms, so the same order, on every rank
    packed = distributed.summed(torch.stack([*(sums[k].double() for k in names), correct.double()]))
    never = torch.iinfo(torch.long).max
    bad = distributed.smallest(torch.where(first_bad == 0, never, first_bad))
    return (dict(zip(names, packed[:-1], strict=True)), packed[-1].long(),
            torch.where(bad == never, 0, bad))  # fmt: skip


def _say(line: str) -> None:
    if distributed.is_main():
        tqdm.write(line)


def _rng_states(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """This process's dropout streams (CPU, and CUDA when training there)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _monitored(
    model: nn.Module, splits: Mapping[str, Split], normalize: Normalizer, config: FitConfig
) -> dict[str, float]:
    """`<name>_accuracy` of each split. At the training precision: bf16 halves the teacher's
    evaluation time and moved test accuracy by < 0.1 point here; the evaluate stage measures the
    final models in fp32."""
    metrics = {}
    for name, split in splits.items():
        with autocast(config.device, config.precision):
            logits = predict(model, split.images, normalize)
        metrics[f"{name}_accuracy"] = accuracy(logits, split.labels)
    return metrics


def loop_state(
    epoch: int,
    model: nn.Module,
    parts: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    device: torch.device,
) -> LoopState:
    """Everything the loop carries from one epoch to the next."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "parts": parts.state_dict() if parts is not None else None,
        "optimizer": optimizer.state_dict(),
        "batch_order_rng": order.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _restore(
    state: LoopState,
    model: nn.Module,
    parts: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    order: torch.Generator,
    device: torch.device,
) -> int:
    """Put `state` back into the loop's objects; returns the epoch it was taken after."""
    model.load_state_dict(state["model"])
    if parts is not None:
        parts.load_state_dict(state["parts"])
    optimizer.load_state_dict(state["optimizer"])
    order.set_state(state["batch_order_rng"])
    # Several ranks: each its own dropout streams (the checkpoint's key holds the world size).
    cpu, cuda = state.get("rank_rngs", [(state["torch_rng"], state["cuda_rng"])])[
        distributed.rank()
    ]
    torch.set_rng_state(cpu)
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    return state["epoch"]
