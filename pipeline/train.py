"""One fit() for the teacher and for every student.

The loop is method-agnostic: the bound loss function decides what is computed, the optional teacher
is frozen here and only here, and an optional head (the regressor's) is trained alongside the model.
Images stay uint8 on the training device and are normalised per batch there; batches are drawn by
index with a generator seeded from `seed`, so runs with the same seed see the same batches in the same
order. Losses and accuracy accumulate on the device and are read back once per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from pipeline.data import Normalizer, Split, batch_indices
from pipeline.evaluate import accuracy, predict
from pipeline.losses import TOTAL, Terms

CPU = torch.device("cpu")
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device = CPU


def resolve_device(name: str) -> torch.device:
    """'auto' -> CUDA when present, else CPU; anything else is taken as a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def freeze(teacher: nn.Module) -> nn.Module:
    """Eval mode (dropout off) and no gradients: the teacher only provides targets."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def fit(
    model: nn.Module,
    train: Split,
    loss_fn: Callable[..., Terms],
    config: FitConfig,
    normalize: Normalizer,
    *,
    teacher: nn.Module | None = None,
    head: nn.Module | None = None,
    eval_sets: Mapping[str, Split] | None = None,
    on_epoch: EpochCallback | None = None,
    desc: str = "train",
) -> nn.Module:
    """Train `model` (and `head`) with Adam on `loss_fn`; returns the trained model.

    After each epoch `on_epoch(epoch, metrics)` gets the epoch's mean of every loss component as
    `train_<component>` (the total as `train_loss`), `train_accuracy`, `<name>_accuracy` for each
    split in `eval_sets` and `epoch_seconds`. Epochs count from 1.
    """
    device = config.device
    model.to(device)
    normalize = normalize.to(device)
    if teacher is not None:
        freeze(teacher.to(device))
    if head is not None:
        head.to(device)
    trainable = [*model.parameters(), *(head.parameters() if head is not None else [])]
    optimizer = torch.optim.Adam(trainable, lr=config.lr)

    images, labels = train.images.to(device), train.labels.to(device)
    on_device = {
        k: Split(s.images.to(device), s.labels.to(device)) for k, s in (eval_sets or {}).items()
    }
    order = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)  # dropout masks: the same stream for every variant

    steps_per_epoch = -(-len(labels) // config.batch_size)
    bar = tqdm(total=config.epochs * steps_per_epoch, desc=desc, unit="step", disable=None)
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        model.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=device, dtype=torch.long)
        for idx in batch_indices(len(labels), config.batch_size, order, device):
            x, y = normalize(images[idx]), labels[idx]
            out = model(x)
            with torch.no_grad():
                teacher_out = teacher(x) if teacher is not None else None
            terms = loss_fn(out, teacher_out, y, head)
            optimizer.zero_grad(set_to_none=True)
            terms[TOTAL].backward()
            optimizer.step()
            for name, value in terms.items():
                sums[name] = sums.get(name, 0) + value.detach() * len(idx)
            correct += (out.logits.argmax(dim=1) == y).sum()
            bar.update()
        metrics = {f"train_{name}": (total / len(labels)).item() for name, total in sums.items()}
        metrics["train_accuracy"] = correct.item() / len(labels)
        for name, split in on_device.items():
            metrics[f"{name}_accuracy"] = accuracy(
                predict(model, split.images, normalize), split.labels
            )
        metrics["epoch_seconds"] = time.perf_counter() - started
        shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        tqdm.write(f"{desc} epoch {epoch}/{config.epochs}: {shown}")
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    bar.close()
    optimizer.zero_grad(set_to_none=True)  # the returned model carries no stale gradients
    return model
