"""The models that the evaluating stages (evaluate, export) measure, and how they time one."""

from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline import params
from pipeline.evaluate import latency_ms, throughput
from pipeline.stages import _outputs

LATENCY_WARMUP, THROUGHPUT_WARMUP, THROUGHPUT_BATCH = 20, 2, 256


class ModelRef(NamedTuple):
    role: str
    where: tuple[str, ...]  # where its metrics go: ("teacher", seed) or ("students", variant, seed)
    spec: params.RoleParams  # the model it is: p.teacher or p.student
    seed: int
    teacher_role: str | None  # whose predictions its agreement is measured against


def every_model(p: params.Params) -> list[ModelRef]:
    """Every teacher, then every student; a student's teacher comes before it."""
    teachers = [
        ModelRef(_outputs.teacher_role(s), ("teacher", str(s)), p.teacher, s, None)
        for s in p.teacher.seeds
    ]
    students = [
        ModelRef(_outputs.student_role(v, s), ("students", v, str(s)), p.student, s,
                 _outputs.teacher_role(p.teacher_seed(s)))
        for v in p.variants for s in p.seeds
    ]  # fmt: skip
    return teachers + students


def measured_params(p: params.Params) -> dict:
    """The params that a stage measuring every model reads, as its run records them."""
    return {
        "data": {
            "source": p.data.source,
            "md5": p.data.md5,
            "image_size": p.data.image_size,
            "test_size": p.data.test_size,
            "val_size": p.data.val_size,
        },
        "normalize": {"mean": p.normalize.mean, "std": p.normalize.std},
        "evaluate": vars(p.evaluate),
        "seeds": list(p.seeds),
        "teacher": {
            "seeds": list(p.teacher.seeds),
            "model": p.teacher.model,
            "model_args": p.teacher.args,
        },
        "student": {"model": p.student.model, "model_args": p.student.args},
        "variants": list(p.variants),
    }


def speed(deployable: torch.nn.Module, images: torch.Tensor, e: params.EvaluateParams) -> dict:
    """Batch-1 latency (median, p95, ms) and batch-256 throughput (images/s) of a deployable
    model (uint8 in, logits out), after warm-up, in this process."""
    batch = images[:THROUGHPUT_BATCH].cpu()
    return {
        **latency_ms(deployable, batch[:1], LATENCY_WARMUP, e.latency_iters),
        "throughput": throughput(deployable, batch, THROUGHPUT_WARMUP, e.throughput_iters),
    }


def place(tree: dict, where: tuple[str, ...], metrics: dict) -> None:
    """tree["teacher"][seed] or tree["students"][variant][seed]: the DVC/MLflow metric names."""
    node = tree
    for key in where[:-1]:
        node = node.setdefault(key, {})
    node[where[-1]] = metrics
