"""Stage `distill@<variant>-<seed>`: train the student.model with the variant's method from
params.yaml `variants`, with one of the `seeds`.

Reads data.*, normalize, train, student, teacher, variants.<variant> and, when the method needs a
teacher, the cached outputs of its teacher (the one of the same seed, else the first; with
augmentation, its weights, to run it live). For one seed every variant starts from the same initial
weights and sees the same batches in the same order, so variants are paired.
"""

from __future__ import annotations

from torch import nn

from pipeline import losses, models, params
from pipeline.stages import _inputs, _networks, _outputs
from pipeline.stages._cli import UsageError, run, seed_argument
from pipeline.stages._training import (
    NO_TEACHING,
    Dataset,
    Teaching,
    common_params,
    load_dataset,
    train_and_record,
    training_device,
)
from pipeline.taps import Tapped
from pipeline.train import Targets, cached_teacher, live_teacher


def main(p: params.Params, args: list[str]) -> None:
    if len(args) != 2:
        raise UsageError("usage: python -m pipeline.stages.distill <variant> <seed> (from "
                         "params.yaml)")  # fmt: skip
    variant = p.variant(args[0])
    seed = seed_argument(args, p.seeds, "seeds")
    role = _outputs.student_role(variant.name, seed)
    ds = load_dataset(p, seed)
    teacher = _teacher(p, seed, ds) if losses.get(variant.method).needs_teacher else None
    student = _networks.build(p.student, "student", ds, seed)  # the same for every variant
    # Right after the student, as the tutorial makes its regressor: the parts' initial weights
    # come from the same random stream for every run of this seed.
    teaching = _teaching(p, variant, seed, ds, student, teacher)
    train_and_record(
        stage=_outputs.stage_of(role),
        role=role,
        seed=seed,
        p=p,
        ds=ds,
        net=Tapped(student, _networks.layers(variant, "student").values()),
        loss_fn=losses.bind(variant.method, variant.kwargs),
        epochs=p.student.epochs,
        run_params={
            **common_params(p, seed),
            "student": {
                "epochs": p.student.epochs,
                "model": p.student.model,
                "model_args": p.student.args,
            },
            "teacher_seed": p.teacher_seed(seed),
            "teacher_model": p.teacher.model,
            "model": p.student.model,
            "variant": {
                "name": variant.name,
                "method": variant.method,
                "augment": variant.augment,
                **variant.kwargs,
            },
        },
        spec=p.student,
        teaching=teaching,
        augment=variant.augment,
    )


def _teacher(p: params.Params, seed: int, ds: Dataset) -> nn.Module:
    """The trained teacher of this seed's students, on the training device."""
    role = _outputs.teacher_role(p.teacher_seed(seed))
    return _inputs.weights(p.teacher, role, len(ds.classes)).to(training_device(p))


def _teaching(p: params.Params, variant: params.Variant, seed: int, ds: Dataset,
              student: nn.Module, teacher: nn.Module | None) -> Teaching:  # fmt: skip
    if teacher is None:
        return NO_TEACHING
    parts = _networks.parts(variant, student, teacher, p, ds)
    targets, source = teacher_targets(p, variant, seed, ds, teacher)
    weights = _outputs.model(_outputs.teacher_role(p.teacher_seed(seed)))
    return Teaching(targets, source, weights, parts)


def teacher_targets(p: params.Params, variant: params.Variant, seed: int, ds: Dataset,
                    teacher: nn.Module) -> tuple[Targets, str]:  # fmt: skip
    """The cached outputs of this seed's teacher; the live teacher when augmentation changes the
    images. The teacher's weights are read either way: they are part of the checkpoint's key."""
    device = training_device(p)
    layers = list(_networks.layers(variant, "teacher").values())
    if variant.augment:
        print("augmentation is on, so the teacher runs live on every batch (not cached)")
        return live_teacher(Tapped(teacher, layers), p.train.precision), "live"
    teacher_seed = p.teacher_seed(seed)
    cache = _inputs.teacher_outputs(teacher_seed, len(ds.train_indices) + _held_out(ds), layers)
    rows = ds.train_indices  # this seed's training split, in the order fit() indexes it
    outputs = models.Outputs(
        cache.logits[rows].to(device), {k: v[rows].to(device) for k, v in cache.features.items()}
    )
    return cached_teacher(outputs), "cached"


def _held_out(ds: Dataset) -> int:
    return len(ds.val.labels) if ds.val is not None else 0


if __name__ == "__main__":
    run(main, trains=True)
