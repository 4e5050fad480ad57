"""Stage `train_teacher`: DeepNN with cross-entropy. Reads data.{train,test}_size, normalize, train,
teacher (and, undeclared, mlflow.experiment and data.url: they change where things are recorded or
fetched from, not what is computed)."""

from __future__ import annotations

from pipeline import losses, models, params
from pipeline.stages._cli import run
from pipeline.stages._training import common_params, load_dataset, train_and_record

ARCH = "DeepNN"


def main() -> None:
    p = params.load_all()
    train_and_record(
        stage="train_teacher",
        role="teacher",
        p=p,
        ds=load_dataset(p),
        net=models.build(ARCH, p.train.seed),
        loss_fn=losses.bind("ce", {}),
        epochs=p.teacher.epochs,
        run_params={**common_params(p), "teacher": vars(p.teacher), "model": ARCH},
    )


if __name__ == "__main__":
    run(main)
