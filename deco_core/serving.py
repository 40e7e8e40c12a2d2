"""The registered model as MLflow serves it: an MLflow pyfunc around an exported DecoModel.

Input: a table with columns ``image`` (a base64-encoded PNG or JPEG) and ``prompt`` (the user's question; an
``<image>`` placeholder is put in front when the prompt has none). Output: a table with one column ``answer``
(greedy decoding; parameter ``max_new_tokens``, default 32). The pyfunc directory holds ``MLmodel``, the
signature, an input example and the export itself under ``artifacts/export`` (``DecoModel.from_pretrained``
reads such a directory directly), so ``mlflow models serve -m models:/NAME@ALIAS`` and
``mlflow.pyfunc.load_model`` work, and the DeCo tools keep loading the same registered version.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import io
import logging
import os
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from deco_core.data.prompts import with_image

log = logging.getLogger(__name__)

EXPORT_ARTIFACT = "export"
INPUT_COLUMNS = ("image", "prompt")
OUTPUT_COLUMN = "answer"
DEFAULT_MAX_NEW_TOKENS = 32
# Logged as code, not pickled: loading a registered version never unpickles anything.
MODEL_CODE = Path(__file__).with_name("serving_model.py")
# What a serving environment needs besides the Python standard library (pinned to what built the model).
REQUIREMENTS = ("deco-pipeline", "torch", "transformers", "tokenizers", "safetensors", "mlflow", "pillow",
                "numpy", "pandas", "omegaconf")


class ServingInputError(ValueError):
    """A request row cannot be answered: names the row and the column."""


def decode_request_image(value: Any, row: int):
    """Base64 PNG/JPEG text -> an RGB PIL image; a clear error naming the row otherwise."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(value, str | bytes) or not value:
        raise ServingInputError(f"row {row}: column 'image' must be a base64-encoded PNG or JPEG string")
    try:
        data = base64.b64decode(value, validate=True)
        image = Image.open(io.BytesIO(data))
        image.load()
    except (binascii.Error, ValueError) as exc:
        raise ServingInputError(f"row {row}: column 'image' is not valid base64: {exc}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ServingInputError(f"row {row}: column 'image' is not a PNG or JPEG image: {exc}") from None
    return image.convert("RGB")


def user_turn(prompt: Any, row: int) -> str:
    """The user turn for one request: the prompt with the image placeholder first when it has none."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ServingInputError(f"row {row}: column 'prompt' must be non-empty text")
    return with_image(prompt)


def answer_table(model, frame: pd.DataFrame, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> pd.DataFrame:
    """One greedy answer per row of ``frame`` (columns image, prompt) -> a frame with column ``answer``."""
    from deco_core.data.transforms import ImageTransform
    from deco_core.eval.generate import generate_answers

    missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
    if missing:
        raise ServingInputError(f"input table lacks column(s) {missing}; expected columns {list(INPUT_COLUMNS)}")
    if frame.empty:
        return pd.DataFrame({OUTPUT_COLUMN: pd.Series([], dtype=str)})
    transform = ImageTransform.from_vision_config(model.cfg.vision)
    rows = list(frame[list(INPUT_COLUMNS)].itertuples(index=False))
    pixels = [transform(decode_request_image(image, i)) for i, (image, _) in enumerate(rows)]
    prompts = [user_turn(prompt, i) for i, (_, prompt) in enumerate(rows)]
    return pd.DataFrame({OUTPUT_COLUMN: generate_answers(model, prompts, pixels, int(max_new_tokens))})


class DecoPyfuncModel(mlflow.pyfunc.PythonModel):
    """The pyfunc flavour of an exported DecoModel (its files are the ``export`` artifact)."""

    def load_context(self, context) -> None:
        from deco_core.model.deco import DecoModel

        self.model = DecoModel.from_pretrained(context.artifacts[EXPORT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        max_new_tokens = (params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        return answer_table(self.model, pd.DataFrame(model_input), max_new_tokens)


def signature():
    """Columns image (string: base64 PNG/JPEG) and prompt (string) -> column answer (string)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", c) for c in INPUT_COLUMNS]),
                          outputs=Schema([ColSpec("string", OUTPUT_COLUMN)]),
                          params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]))


def example_image_base64(size: int) -> str:
    """A small ShapesWorld-style picture (a red square on grey), PNG, base64: the logged input example."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (128, 128, 128))
    ImageDraw.Draw(image).rectangle([size // 4, size // 4, size // 2, size // 2], fill=(220, 30, 30))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def input_example(image_size: int) -> pd.DataFrame:
    return pd.DataFrame({"image": [example_image_base64(image_size)], "prompt": ["What colour is the square?"]})


def pip_requirements() -> list[str]:
    """REQUIREMENTS pinned to the installed versions (so serving needs no dependency inference)."""
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def save_pyfunc(export_dir: str | os.PathLike, out_dir: str | os.PathLike, image_size: int) -> Path:
    """Write the pyfunc directory for the export at ``export_dir`` into ``out_dir`` (which must not exist)."""
    mlflow.pyfunc.save_model(
        path=os.fspath(out_dir), python_model=str(MODEL_CODE), artifacts={EXPORT_ARTIFACT: os.fspath(export_dir)},
        signature=signature(), input_example=input_example(image_size), pip_requirements=pip_requirements(),
    )  # fmt: skip
    log.info("wrote the MLflow pyfunc model for %s to %s", export_dir, out_dir)
    return Path(out_dir)


__all__ = ["DecoPyfuncModel", "ServingInputError", "answer_table", "input_example", "save_pyfunc",
           "signature"]
