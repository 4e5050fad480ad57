"""The code MLflow runs to load a logged model (models from code): the classifier, whose weights
and card load_context reads from the model's artifacts (see served.py)."""

from mlflow.models import set_model

from pipeline.tracking.served import ImageClassifier

set_model(ImageClassifier())
