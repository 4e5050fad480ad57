"""Stage `train_teacher@<seed>`: the teacher.model with cross-entropy, one per entry of
teacher.seeds; or, when teacher.weights names a teacher already trained, that one, checked and
evaluated, with no training. Reads data.{source,md5,image_size,train_size,test_size,val_size},
normalize, train and teacher (and, undeclared, mlflow.experiment and data.url: they change where
things are recorded or fetched from, not what is computed)."""

from __future__ import annotations

from pipeline import losses, params, tracking
from pipeline.stages import _networks, _outputs
from pipeline.stages._cli import run, seed_argument
from pipeline.stages._training import (
    TRAINING,
    Dataset,
    common_params,
    evaluated,
    load_dataset,
    model_card,
    model_outputs,
    record_dataset,
    record_outputs,
    train_and_record,
)
from pipeline.taps import Tapped


def main(p: params.Params, args: list[str]) -> None:
    seed = seed_argument(args, p.teacher.seeds, "teacher.seeds")
    ds = load_dataset(p, seed)
    run_params = {
        **common_params(p, seed),
        "teacher": {"epochs": p.teacher.epochs, "weights": p.teacher.weights},
        "model": p.teacher.model,
        "model_args": p.teacher.args,
    }
    if p.teacher.weights is not None:
        adopt(p, seed, ds, run_params)
        return
    train_and_record(
        stage=f"train_teacher@{seed}",
        role=_outputs.teacher_role(seed),
        seed=seed,
        p=p,
        ds=ds,
        net=Tapped(_networks.build(p.teacher, "teacher", ds, seed)),
        loss_fn=losses.bind("ce", {}),
        epochs=p.teacher.epochs,
        run_params=run_params,
        spec=p.teacher,
    )


def adopt(p: params.Params, seed: int, ds: Dataset, run_params: dict) -> None:
    """A teacher trained elsewhere: loaded into teacher.model, evaluated like a trained one, and
    written where a trained one would be, with where it came from as params and tags."""
    stage, role = f"train_teacher@{seed}", _outputs.teacher_role(seed)
    outputs = model_outputs(role)
    outputs.check()
    net, origin = _networks.pretrained(p.teacher, ds, seed)
    print(f"{stage}: no training; the teacher is {p.teacher.weights}")
    # Where it came from, as params (compared across runs) and as tags (searched in the UI).
    run_params = run_params | {"teacher": run_params["teacher"] | origin}
    with tracking.stage_run(stage, p.mlflow.experiment, run_params, p.data.md5) as r:
        r.set_tags({f"teacher.{key}": value for key, value in origin.items()})
        record_dataset(r, p, ds)
        deployable, summary = evaluated(net, p, ds)
        r.log_metrics(
            summary, prefix=TRAINING
        )  # as a trained one's end: the evaluate stage adds the rest
        record_outputs(r, outputs, role, deployable, model_card(p.teacher, p, ds),
                       ds.test.images[:2], [], summary)  # fmt: skip


if __name__ == "__main__":
    run(main, trains=True)
