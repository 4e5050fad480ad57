"""Stage `train_teacher@<seed>`: DeepNN with cross-entropy, one per entry of teacher.seeds. Reads
data.{train,test,val}_size, normalize, train, teacher.epochs (and, undeclared, mlflow.experiment and
data.url: they change where things are recorded or fetched from, not what is computed)."""

from __future__ import annotations

from pipeline import losses, models, params
from pipeline.stages import _outputs
from pipeline.stages._cli import run, seed_argument
from pipeline.stages._training import common_params, load_dataset, train_and_record

ARCH = "DeepNN"


def main(p: params.Params, args: list[str]) -> None:
    seed = seed_argument(args, p.teacher.seeds, "teacher.seeds")
    train_and_record(
        stage=f"train_teacher@{seed}",
        role=_outputs.teacher_role(seed),
        seed=seed,
        p=p,
        ds=load_dataset(p, seed),
        net=models.build(ARCH, seed),
        loss_fn=losses.bind("ce", {}),
        epochs=p.teacher.epochs,
        run_params={
            **common_params(p, seed),
            "teacher": {"epochs": p.teacher.epochs},
            "model": ARCH,
        },
    )


if __name__ == "__main__":
    run(main)
