"""Stage `distill@<variant>`: train LightNN with the variant's method from params.yaml `variants`.

Reads data.{train,test}_size, normalize, train, student, variants.<variant>, and the teacher's
weights when the method needs them. Every variant starts from the same initial weights (the seed)
and sees the same batches, so the comparison between variants is paired.
"""

from __future__ import annotations

import sys

from pipeline import losses, models, params
from pipeline.stages import _outputs
from pipeline.stages._cli import run
from pipeline.stages._training import common_params, load_dataset, train_and_record
from pipeline.stages.train_teacher import ARCH as TEACHER_ARCH

ARCH = "LightNN"


def main() -> None:
    if len(sys.argv) != 2:
        raise ValueError("usage: python -m pipeline.stages.distill <variant name from params.yaml>")
    p = params.load_all()
    variant = p.variant(sys.argv[1])
    method = losses.get(variant.method)
    teacher = None
    if method.needs_teacher:
        teacher = models.load_weights(TEACHER_ARCH, _outputs.TEACHER_MODEL)
    student = models.build(ARCH, p.train.seed)
    train_and_record(
        stage=f"distill@{variant.name}",
        role=variant.name,
        p=p,
        ds=load_dataset(p),
        net=student,
        loss_fn=losses.bind(variant.method, variant.kwargs),
        epochs=p.student.epochs,
        run_params={
            **common_params(p),
            "student": vars(p.student),
            "model": ARCH,
            "variant": {"name": variant.name, "method": variant.method, **variant.kwargs},
        },
        teacher=teacher,
        head=method.make_head() if method.make_head else None,
    )


if __name__ == "__main__":
    run(main)
