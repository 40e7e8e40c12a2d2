"""Specification tests for DecoModel (deco_core/model/deco.py).

Covers parity with transformers' LLaVA on copied weights, image-token accounting, text-only rows, save/load,
the per-stage freeze and left-padded generation. Everything runs on the tiny config.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from deco_core.config import compose
from deco_core.model.deco import CONFIG_FILE, WEIGHTS_FILE, DecoModel
from deco_core.model.projectors import ProjectorConfig, build_projector

TEXT = " a small red square on the right."


# ---------------------------------------------------------------------------------------------- helpers
def _text_ids(tokenizer, text: str = TEXT) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def _image_row(model: DecoModel, n_image_tokens: int | None = None, text: str = TEXT) -> list[int]:
    """[bos, <image> × M, text...] as a list of ids."""
    n = model.num_image_tokens if n_image_tokens is None else n_image_tokens
    tok = model.tokenizer
    return [tok.bos_token_id] + [model.image_token_id] * n + _text_ids(tok, text)


def _pixels(model: DecoModel, n: int, seed: int = 0) -> torch.Tensor:
    size = model.vision.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))  # [n, 3, H, W]


@pytest.fixture(scope="module")
def deco_model(shapes_tokenizer) -> DecoModel:
    """The tiny DeCo model pinned to M=16 from 144 patches (whatever the default's M), random init, eval mode."""
    cfg = compose("pipeline/tiny", ["model.projector.num_tokens=16"])
    return DecoModel.from_config(cfg.model, shapes_tokenizer).eval()


@pytest.fixture()
def fresh_model(tiny_cfg, shapes_tokenizer) -> DecoModel:
    """A tiny model whose requires_grad flags a test may change freely."""
    return DecoModel.from_config(tiny_cfg.model, shapes_tokenizer)

# ------------------------------------------------------------------------------------------------ parity
def _llava_key(key: str) -> str:
    """Map one of our state-dict keys onto LlavaForConditionalGeneration's key name."""
    # fmt: off
    table = [
        ("vision.model.",    "model.vision_tower."),
        ("projector.mlp.0.", "model.multi_modal_projector.linear_1."),
        ("projector.mlp.2.", "model.multi_modal_projector.linear_2."),
        ("llm.model.",       "model.language_model."),
        ("llm.lm_head.",     "lm_head."),
    ]
    # fmt: on
    for ours, theirs in table:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise AssertionError(f"no LLaVA key for {key}")


def test_parity_with_transformers_llava(shapes_tokenizer):
    """With projector `mlp` and copied weights, our logits equal LlavaForConditionalGeneration's (atol 1e-5)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    cfg = compose("pipeline/tiny", ["model.projector=mlp"])
    ours = DecoModel.from_config(cfg.model, shapes_tokenizer).eval()
    n_patches = ours.vision.num_patches
    assert ours.num_image_tokens == n_patches == 144
    llava_cfg = LlavaConfig(
        vision_config=ours.vision.model.config.to_dict(), text_config=ours.llm.config.to_dict(),
        image_token_id=ours.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=n_patches, multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration._from_config(llava_cfg, attn_implementation="sdpa").eval()
    assert ours.vision.model.config._attn_implementation == ours.llm.config._attn_implementation == "sdpa"

    ours_sd = ours.state_dict()
    mapped = {_llava_key(k): v for k, v in ours_sd.items()}
    assert set(mapped) == set(llava.state_dict()), "key mapping must cover both models exactly"
    llava.load_state_dict(mapped, strict=True)

    row_a, row_b = _image_row(ours), _image_row(ours, text=" two large blue circles at the top left and right.")
    ids = torch.tensor([row_a, row_b[:len(row_a)]])  # [2, T]
    mask = torch.ones_like(ids)
    pixels = _pixels(ours, 2)
    with torch.no_grad():
        got = ours(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits  # [2, T, V]
        want = llava(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    assert got.shape == want.shape == (2, ids.shape[1], len(shapes_tokenizer))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------ shapes
def test_forward_shapes_and_loss(deco_model):
    """Forward with labels returns a finite scalar loss and logits [B, T, V]."""
    ids = torch.tensor([_image_row(deco_model)] * 2)
    labels = ids.clone()
    labels[ids == deco_model.image_token_id] = -100
    with torch.no_grad():
        out = deco_model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=_pixels(deco_model, 2),
                         labels=labels)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (2, ids.shape[1], deco_model.llm.config.vocab_size)


def test_deco_puts_sixteen_features_per_image(deco_model):
    """DeCo with M=16 from 144 patches writes exactly 16 projected features per image at the image positions."""
    assert deco_model.vision.num_patches == 144
    assert deco_model.num_image_tokens == 16
    ids = torch.tensor([_image_row(deco_model)] * 2)
    pixels = _pixels(deco_model, 2)
    with torch.no_grad():
        embeds = deco_model.embed(ids, pixels)  # [2, T, D]
        feats = deco_model.encode_images(pixels)  # [2, 16, D]
        text_only = deco_model.llm.get_input_embeddings()(ids)
    assert feats.shape == (2, 16, deco_model.llm.config.hidden_size)
    positions = ids == deco_model.image_token_id
    assert positions.sum(dim=1).tolist() == [16, 16]
    torch.testing.assert_close(embeds[positions].view(2, 16, -1), feats)
    torch.testing.assert_close(embeds[~positions], text_only[~positions])


# ------------------------------------------------------------------------------------- token accounting
def test_image_token_count_mismatch_names_both_counts(deco_model):
    """15 image tokens for one 16-token image raise ValueError naming 15 and 16."""
    ids = torch.tensor([_image_row(deco_model, n_image_tokens=15)])
    with pytest.raises(ValueError, match=r"15\b.*\b16\b"):
        deco_model(input_ids=ids, pixel_values=_pixels(deco_model, 1))


def test_image_without_image_tokens_raises(deco_model):
    """An image supplied for a text with no image tokens raises ValueError."""
    ids = torch.tensor([[deco_model.tokenizer.bos_token_id] + _text_ids(deco_model.tokenizer)])
    with pytest.raises(ValueError, match=r"\b0 image-token"):
        deco_model(input_ids=ids, pixel_values=_pixels(deco_model, 1))


def test_image_tokens_without_image_raise(deco_model):
    """Image tokens in the text but no pixel_values raise ValueError."""
    ids = torch.tensor([_image_row(deco_model)])
    with pytest.raises(ValueError, match=r"\b16\b"):
        deco_model(input_ids=ids, pixel_values=None)


# --------------------------------------------------------------------------------------- text-only rows
def test_image_mask_mixes_text_only_and_image_rows(deco_model):
    """image_mask selects which pixel_values are encoded; a text-only row and an image row batch together."""
    tok = deco_model.tokenizer
    image_row = _image_row(deco_model)
    text_row = [tok.bos_token_id] + _text_ids(tok, " a" * (len(image_row) - 1))
    assert len(text_row) == len(image_row)
    ids = torch.tensor([text_row, image_row])
    image_mask = torch.tensor([False, True])
    pixels = _pixels(deco_model, 2)
    with torch.no_grad():
        batch = deco_model(input_ids=ids, pixel_values=pixels, image_mask=image_mask).logits
        other_dummy = pixels.clone()
        other_dummy[0] = 1e3  # the masked-out image must not matter
        batch2 = deco_model(input_ids=ids, pixel_values=other_dummy, image_mask=image_mask).logits
        alone_img = deco_model(input_ids=ids[1:], pixel_values=pixels[1:]).logits
        alone_txt = deco_model(input_ids=ids[:1], pixel_values=None).logits
    assert torch.equal(batch, batch2)
    torch.testing.assert_close(batch[1:], alone_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batch[:1], alone_txt, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------------- non-square grid
def test_non_square_patch_grid_raises():
    """A projector given N = 12*13 patch tokens raises the documented 'grid must be square' ValueError."""
    with pytest.raises(ValueError, match="square"):
        build_projector(ProjectorConfig(name="deco", num_tokens=16), 8, 16, num_patches=12 * 13)
    projector = build_projector(ProjectorConfig(name="deco", num_tokens=16), 8, 16, num_patches=144)
    with pytest.raises(ValueError, match=r"156.*square"):
        projector(torch.randn(1, 12 * 13, 8))


# ------------------------------------------------------------------------------------------- save/load
def test_save_load_roundtrip(deco_model, tmp_path):
    """save_pretrained -> from_pretrained gives identical logits and writes config, weights, tokenizer, processor."""
    out = tmp_path / "export"
    deco_model.save_pretrained(out)
    for name in (CONFIG_FILE, WEIGHTS_FILE, "tokenizer", "image_processor"):
        assert (out / name).exists(), name
    assert (out / "tokenizer").is_dir() and (out / "image_processor").is_dir()
    loaded = DecoModel.from_pretrained(out)
    assert dataclasses.asdict(loaded.cfg) == dataclasses.asdict(deco_model.cfg)
    assert loaded.num_image_tokens == deco_model.num_image_tokens
    assert loaded.image_token_id == deco_model.image_token_id
    ids = torch.tensor([_image_row(deco_model)])
    pixels = _pixels(deco_model, 1)
    with torch.no_grad():
        before = deco_model(input_ids=ids, pixel_values=pixels).logits
        after = loaded(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(before, after)


def test_from_pretrained_without_config_names_path(tmp_path):
    """Loading a directory without deco_config.json raises FileNotFoundError naming the directory."""
    (tmp_path / WEIGHTS_FILE).write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        DecoModel.from_pretrained(tmp_path)


def test_save_load_with_tied_embeddings(fresh_model, tmp_path):
    """An LLM with tied input/output embeddings exports (safetensors forbids shared tensors) and reloads tied."""
    llm = fresh_model.llm
    llm.config.tie_word_embeddings = True
    llm.lm_head.weight = llm.model.embed_tokens.weight
    fresh_model.eval().save_pretrained(tmp_path)
    loaded = DecoModel.from_pretrained(tmp_path)
    assert loaded.llm.lm_head.weight.data_ptr() == loaded.llm.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([_image_row(fresh_model)])
    pixels = _pixels(fresh_model, 1)
    with torch.no_grad():
        assert torch.equal(fresh_model(input_ids=ids, pixel_values=pixels).logits,
                           loaded(input_ids=ids, pixel_values=pixels).logits)

# ---------------------------------------------------------------------------------------------- freeze
def _trainable_modules(model: DecoModel) -> set[str]:
    return {name.split(".", 1)[0] for name, p in model.named_parameters() if p.requires_grad}


def test_freeze_pretrain_leaves_only_projector(fresh_model):
    """Pretrain (vision and LLM off) leaves only projector parameters trainable; the summary matches."""
    summary = fresh_model.freeze_for_stage("pretrain", train_vision=False, train_projector=True, train_llm=False)
    assert _trainable_modules(fresh_model) == {"projector"}
    assert summary == fresh_model.parameter_summary()
    assert summary["vision"][0] == 0 and summary["llm"][0] == 0
    assert summary["projector"][0] == summary["projector"][1] > 0


def test_freeze_finetune_leaves_projector_and_llm(fresh_model):
    """Finetune (stage defaults) trains the projector and the LLM, not the vision tower."""
    fresh_model.freeze_for_stage("pretrain", train_vision=False, train_projector=True, train_llm=False)
    summary = fresh_model.freeze_for_stage("finetune")
    assert _trainable_modules(fresh_model) == {"projector", "llm"}
    assert summary == fresh_model.parameter_summary()
    assert summary["llm"] == (sum(p.numel() for p in fresh_model.llm.parameters()),) * 2


def test_freeze_unknown_stage_lists_valid(fresh_model):
    """An unknown stage raises KeyError listing the valid stages."""
    with pytest.raises(KeyError, match="pretrain.*finetune"):
        fresh_model.freeze_for_stage("warmup")


# -------------------------------------------------------------------------------------------- generate
def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def test_generate_shape_and_determinism(deco_model):
    """Greedy generation on left-padded prompts returns [B, <= max_new_tokens] ids, the same on every call."""
    rows = [_image_row(deco_model), _image_row(deco_model, text=" a")]
    ids, mask = _left_pad(rows, deco_model.tokenizer.pad_token_id)
    pixels = _pixels(deco_model, 2)
    first = deco_model.generate(ids, mask, pixels, max_new_tokens=5)
    second = deco_model.generate(ids, mask, pixels, max_new_tokens=5)
    assert first.shape[0] == 2 and 1 <= first.shape[1] <= 5
    assert first.dtype == torch.long
    assert torch.equal(first, second)


def test_generate_left_padding_matches_unpadded(deco_model):
    """A left-padded prompt (batch of 1) gives the same first-step scores and tokens as the unpadded prompt."""
    row = _image_row(deco_model, text=" a")
    pixels = _pixels(deco_model, 1, seed=3)
    pad = deco_model.tokenizer.pad_token_id
    padded, padded_mask = _left_pad([row, row + [pad] * 7], pad)  # row 0 gets 7 pads on the left
    assert padded_mask[0, :7].sum() == 0
    plain = torch.tensor([row])
    kwargs = {"max_new_tokens": 3, "output_scores": True, "return_dict_in_generate": True}
    out_plain = deco_model.generate(plain, torch.ones_like(plain), pixels, **kwargs)
    out_padded = deco_model.generate(padded[:1], padded_mask[:1], pixels, **kwargs)
    assert out_plain.sequences[0, 0] == out_padded.sequences[0, 0]
    torch.testing.assert_close(out_padded.scores[0], out_plain.scores[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(out_plain.sequences, out_padded.sequences)


# --------------------------------------------------------------------------------------- HF auto classes
def test_auto_model_loads_an_export_with_equal_logits(deco_model, tmp_path):
    """config.json carries model_type "deco"; AutoModelForImageTextToText.from_pretrained gives our logits."""
    import json

    from transformers import AutoConfig, AutoModelForImageTextToText

    import deco_core

    deco_core.register_auto_classes()  # idempotent: importing deco_core.model.deco already did it
    deco_model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "deco"
    assert AutoConfig.from_pretrained(tmp_path).num_image_tokens == deco_model.num_image_tokens
    auto = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert isinstance(auto, DecoModel)
    ids = torch.tensor([_image_row(deco_model)])
    pixels = _pixels(deco_model, 1)
    with torch.no_grad():
        assert torch.equal(auto(input_ids=ids, pixel_values=pixels).logits,
                           deco_model(input_ids=ids, pixel_values=pixels).logits)


def test_an_export_without_config_json_still_loads(deco_model, tmp_path):
    """Exports written before config.json existed (deco_config.json only) load with DecoModel.from_pretrained."""
    deco_model.save_pretrained(tmp_path)
    (tmp_path / "config.json").unlink()
    assert DecoModel.from_pretrained(tmp_path).num_image_tokens == deco_model.num_image_tokens
