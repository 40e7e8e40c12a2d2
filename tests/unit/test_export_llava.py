"""`deco model export --format llava`: a DecoModel with the mlp projector becomes a plain transformers
LlavaForConditionalGeneration checkpoint with the same logits; other projectors are refused by name."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from deco_core.config import compose
from deco_core.model.deco import DecoModel


@pytest.fixture(scope="module")
def mlp_export(tmp_path_factory, shapes_tokenizer):
    cfg = compose("pipeline/tiny", ["model.projector=projector/mlp"])
    model = DecoModel.from_config(cfg.model, shapes_tokenizer).eval()
    path = tmp_path_factory.mktemp("mlp") / "export"
    model.save_pretrained(path)
    return model, path


def test_llava_export_loads_in_plain_transformers_with_equal_logits(mlp_export, tmp_path) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from deco_core.cli import app

    ours, path = mlp_export
    result = CliRunner().invoke(app, ["model", "export", str(path), str(tmp_path / "llava"), "--format", "llava"])
    assert result.exit_code == 0, result.output
    llava = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "llava")
    n = ours.num_image_tokens
    ids = torch.tensor([[ours.tokenizer.bos_token_id or 1] + [ours.image_token_id] * n
                        + ours.tokenizer("What colour is the circle?", add_special_tokens=False)["input_ids"]])
    pixels = torch.randn(1, 3, ours.vision.image_size, ours.vision.image_size)
    with torch.no_grad():
        theirs = llava(input_ids=ids, pixel_values=pixels).logits
        mine = ours(input_ids=ids, pixel_values=pixels).logits
    assert torch.allclose(theirs, mine, atol=1e-5), (theirs - mine).abs().max()
    assert processor.image_processor.crop_size["height"] == ours.vision.image_size


def test_pooling_projectors_have_no_llava_export(tmp_path, shapes_tokenizer) -> None:
    from deco_core.model.export_llava import to_llava

    model = DecoModel.from_config(compose("pipeline/tiny").model, shapes_tokenizer)
    with pytest.raises(ValueError, match="model.projector='deco'.*projector 'mlp' with mlp_depth 2"):
        to_llava(model)


def test_export_rejects_an_unknown_format_and_a_missing_model(tmp_path) -> None:
    from deco_core.cli import app

    bad = CliRunner().invoke(app, ["model", "export", str(tmp_path), str(tmp_path / "o"), "--format", "onnx"])
    assert bad.exit_code == 2 and "expected one of llava" in bad.output
    missing = CliRunner().invoke(app, ["model", "export", str(tmp_path / "nope"), str(tmp_path / "o")])
    assert missing.exit_code == 1 and "not an exported DeCo model" in " ".join(missing.output.split())
