"""Export a DecoModel with the ``mlp`` projector as a plain transformers ``LlavaForConditionalGeneration``
checkpoint, so that LLaVA-serving stacks (transformers, vLLM, TGI) load it without our code.

The LLaVA-1.5 architecture is exactly our ``mlp`` projector (two linears with GELU, all patches, CLS dropped,
penultimate layer); pooling projectors (``deco`` among them) have no LLaVA equivalent and are refused by name.
The checkpoint holds the model (config.json + safetensors), the tokenizer and a ``LlavaProcessor`` (image
processor + tokenizer + the prompt's image-token expansion).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from deco_core.data.prompts import IMAGE_TOKEN
from deco_core.model.deco import DecoModel

log = logging.getLogger(__name__)
# Our state-dict prefixes -> LlavaForConditionalGeneration's.
# fmt: off
LLAVA_KEYS = (
    ("vision.model.",    "model.vision_tower."),
    ("projector.mlp.0.", "model.multi_modal_projector.linear_1."),
    ("projector.mlp.2.", "model.multi_modal_projector.linear_2."),
    ("llm.model.",       "model.language_model."),
    ("llm.lm_head.",     "lm_head."),
)
# fmt: on


def llava_key(key: str) -> str:
    """The LLaVA state-dict key of one of ours (KeyError naming the key when it has none)."""
    for ours_prefix, theirs in LLAVA_KEYS:
        if key.startswith(ours_prefix):
            return theirs + key[len(ours_prefix):]
    raise KeyError(f"no LLaVA key for {key!r} (known prefixes: {', '.join(p for p, _ in LLAVA_KEYS)})")


def to_llava(ours: DecoModel) -> nn.Module:
    """transformers' ``LlavaForConditionalGeneration`` holding ``ours``'s weights (projector ``mlp``, depth 2)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    p = ours.cfg.projector
    if p.name != "mlp" or p.mlp_depth != 2:
        raise ValueError(f"model.projector={p.name!r} (mlp_depth {p.mlp_depth}): a LLaVA export needs the LLaVA-1.5 "
                         "projector, projector 'mlp' with mlp_depth 2; pooling and query projectors have no "
                         "LLaVA equivalent (use the native export)")
    config = LlavaConfig(
        vision_config=ours.vision.model.config.to_dict(), text_config=ours.llm.config.to_dict(),
        image_token_id=ours.image_token_id, vision_feature_layer=ours.vision.select_layer,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
        image_seq_length=ours.vision.num_patches, multimodal_projector_bias=True,
    )
    llava = LlavaForConditionalGeneration._from_config(config, attn_implementation="sdpa")
    llava.load_state_dict({llava_key(k): v for k, v in ours.state_dict().items()}, strict=True)
    return llava.eval()


def save_llava(ours: DecoModel, out_dir: str | os.PathLike) -> Path:
    """Write ``to_llava(ours)`` with its tokenizer and a ``LlavaProcessor`` under ``out_dir``; returns it."""
    from transformers import LlavaProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    to_llava(ours).save_pretrained(out)
    processor = LlavaProcessor(image_processor=ours.image_processor(), tokenizer=ours.tokenizer,
                               patch_size=ours.vision.model.config.patch_size,
                               vision_feature_select_strategy="default", image_token=IMAGE_TOKEN,
                               num_additional_image_tokens=1)  # the CLS token, dropped by the "default" strategy
    processor.save_pretrained(out)
    log.info("wrote a LlavaForConditionalGeneration checkpoint to %s", out)
    return out
