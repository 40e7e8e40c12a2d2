"""The pyfunc model that the registry serves: a table of (image base64 PNG/JPEG, prompt) rows in, one answer per
row out; bad rows are named; the saved pyfunc directory loads with plain MLflow and with DecoModel."""

from __future__ import annotations

import base64
import io

import mlflow.pyfunc
import pandas as pd
import pytest
from PIL import Image

from deco_core.model.deco import DecoModel
from deco_core.serving import (
    ServingInputError,
    answer_table,
    example_image_base64,
    input_example,
    save_pyfunc,
    signature,
)


@pytest.fixture(scope="module")
def model(tiny_cfg, shapes_tokenizer) -> DecoModel:
    return DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).eval()


def _jpeg_base64(size: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 10)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def test_one_answer_per_row_for_png_and_jpeg(model, tiny_cfg) -> None:
    size = tiny_cfg.model.vision.image_size
    frame = pd.DataFrame({"image": [example_image_base64(size), _jpeg_base64(size)],
                          "prompt": ["What colour is the square?", "<image>\nHow many shapes are there?"]})
    out = answer_table(model, frame, max_new_tokens=4)
    assert list(out.columns) == ["answer"] and len(out) == 2
    assert all(isinstance(a, str) for a in out["answer"])


def test_bad_rows_and_tables_are_named(model) -> None:
    with pytest.raises(ServingInputError, match="row 1: column 'image' is not valid base64"):
        answer_table(model, pd.DataFrame({"image": [example_image_base64(64), "not base64!"], "prompt": ["a", "b"]}))
    not_an_image = base64.b64encode(b"hello").decode()
    with pytest.raises(ServingInputError, match="row 0: column 'image' is not a PNG or JPEG"):
        answer_table(model, pd.DataFrame({"image": [not_an_image], "prompt": ["a"]}))
    with pytest.raises(ServingInputError, match="row 0: column 'prompt' must be non-empty"):
        answer_table(model, pd.DataFrame({"image": [example_image_base64(64)], "prompt": [" "]}))
    with pytest.raises(ServingInputError, match=r"lacks column\(s\) \['prompt'\]"):
        answer_table(model, pd.DataFrame({"image": [example_image_base64(64)]}))


def test_saved_pyfunc_has_signature_and_example_and_loads_both_ways(model, tiny_cfg, tmp_path) -> None:
    export = tmp_path / "export"
    model.save_pretrained(export)
    pyfunc_dir = save_pyfunc(export, tmp_path / "pyfunc", tiny_cfg.model.vision.image_size)
    info = mlflow.models.get_model_info(str(pyfunc_dir))
    assert info.signature == signature()
    assert [c.name for c in info.signature.inputs] == ["image", "prompt"]
    assert [c.name for c in info.signature.outputs] == ["answer"]
    assert info.saved_input_example_info is not None
    loaded = mlflow.pyfunc.load_model(str(pyfunc_dir))
    example = input_example(tiny_cfg.model.vision.image_size)
    served = loaded.predict(example, params={"max_new_tokens": 4})
    assert served["answer"].tolist() == answer_table(model, example, max_new_tokens=4)["answer"].tolist()
    assert isinstance(DecoModel.from_pretrained(pyfunc_dir), DecoModel)  # the same version feeds our own tools
