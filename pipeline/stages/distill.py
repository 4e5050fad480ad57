"""Stage `distill@<variant>-<seed>`: train LightNN with the variant's method from params.yaml
`variants`, with one of the `seeds`.

Reads data.{train,test,val}_size, normalize, train, student, variants.<variant>, teacher.seeds and,
when the method needs a teacher, the cached outputs of its teacher (the one of the same seed, else
the first; with augmentation, its weights, to run it live). For one seed every variant starts from
the same initial weights and sees the same batches in the same order, so variants are paired.
"""

from __future__ import annotations

from pipeline import losses, models, params
from pipeline.stages import _inputs, _outputs
from pipeline.stages._cli import UsageError, run, seed_argument
from pipeline.stages._training import Dataset, common_params, load_dataset, train_and_record
from pipeline.stages.train_teacher import ARCH as TEACHER_ARCH
from pipeline.train import Targets, cached_teacher, live_teacher, resolve_device

ARCH = "LightNN"


def main(p: params.Params, args: list[str]) -> None:
    if len(args) != 2:
        raise UsageError("usage: python -m pipeline.stages.distill <variant> <seed> (from "
                         "params.yaml)")  # fmt: skip
    variant = p.variant(args[0])
    seed = seed_argument(args, p.seeds, "seeds")
    method = losses.get(variant.method)
    role = _outputs.student_role(variant.name, seed)
    ds = load_dataset(p, seed)
    targets, source, teacher_weights = None, None, None
    if method.needs_teacher:
        targets, source = teacher_targets(p, variant, seed, ds)
        teacher_weights = _outputs.model(_outputs.teacher_role(p.teacher_seed(seed)))
    train_and_record(
        stage=_outputs.stage_of(role),
        role=role,
        seed=seed,
        p=p,
        ds=ds,
        net=models.build(ARCH, seed),
        loss_fn=losses.bind(variant.method, variant.kwargs),
        epochs=p.student.epochs,
        run_params={
            **common_params(p, seed),
            "student": vars(p.student),
            "teacher_seed": p.teacher_seed(seed),
            "model": ARCH,
            "variant": {
                "name": variant.name,
                "method": variant.method,
                "augment": variant.augment,
                **variant.kwargs,
            },
        },
        targets=targets,
        teacher_source=source,
        teacher_weights=teacher_weights,
        head=method.make_head() if method.make_head else None,
        augment=variant.augment,
    )


def teacher_targets(
    p: params.Params, variant: params.Variant, seed: int, ds: Dataset
) -> tuple[Targets, str]:
    """The cached outputs of this seed's teacher; the live teacher when augmentation changes the
    images. The teacher's weights are read either way: they are part of the checkpoint's key."""
    device = resolve_device(p.train.device)
    teacher_seed = p.teacher_seed(seed)
    teacher = _inputs.weights(TEACHER_ARCH, _outputs.teacher_role(teacher_seed)).to(device)
    if variant.augment:
        print("augmentation is on, so the teacher runs live on every batch (not cached)")
        return live_teacher(teacher, p.train.precision), "live"
    cache = _inputs.teacher_outputs(teacher_seed, rows=len(ds.train_indices) + _held_out(ds))
    rows = ds.train_indices  # this seed's training split, in the order fit() indexes it
    outputs = models.Outputs(cache.logits[rows].to(device), cache.features[rows].to(device))
    return cached_teacher(outputs), "cached"


def _held_out(ds: Dataset) -> int:
    return len(ds.val.labels) if ds.val is not None else 0


if __name__ == "__main__":
    run(main)
