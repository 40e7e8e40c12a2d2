"""The pyfunc model definition MLflow loads from code (no pickle): ``deco_core.serving.save_pyfunc`` logs this file
as the ``python_model``; loading runs it, which hands MLflow a fresh ``DecoPyfuncModel``."""

from mlflow.models import set_model

from deco_core.serving import DecoPyfuncModel

set_model(DecoPyfuncModel())
