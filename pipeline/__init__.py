"""Knowledge distillation on CIFAR-10: a small training library under thin DVC stage entry points.

The library (params, data, models, losses, train, evaluate) imports neither mlflow nor dvc, so it runs
anywhere torch does; `pipeline.tracking` is the only module that talks to MLflow.
"""
