"""The transformers side of an exported DeCo model: ``DecoConfig`` (``model_type: "deco"``) and its registration
with ``AutoConfig`` and ``AutoModelForImageTextToText``.

``DecoModel.save_pretrained`` writes a ``config.json`` with ``model_type: "deco"`` beside ``deco_config.json``;
once ``register_auto_classes()`` has run (importing ``deco_core.model.deco`` calls it, as does
``deco_core.register_auto_classes()``), ``AutoModelForImageTextToText.from_pretrained(dir)`` returns a
``DecoModel``. Registration is idempotent and costs a dictionary insert; it is kept out of ``import deco_core``
because importing transformers' auto classes takes about a second.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import AutoConfig, AutoModelForImageTextToText, PretrainedConfig

log = logging.getLogger(__name__)
MODEL_TYPE = "deco"
HF_CONFIG_FILE = "config.json"
ARCHITECTURE = "DecoModel"
_registered = False


class DecoConfig(PretrainedConfig):
    """The HF config of an exported DeCo model: the same fields as ``deco_config.json``.

    Fields: ``deco_config`` (our model section), ``vision_config`` (CLIP vision config dict),
    ``vision_select_layer``, ``llm_config`` (the causal LM's config dict) and ``num_image_tokens``.
    """

    model_type = MODEL_TYPE

    deco_config: dict | None = None
    vision_config: dict | None = None
    vision_select_layer: int = -2
    llm_config: dict | None = None
    num_image_tokens: int = 0


def hf_config(meta: dict[str, Any]) -> DecoConfig:
    """The ``DecoConfig`` for the metadata ``DecoModel.save_pretrained`` writes to ``deco_config.json``."""
    return DecoConfig(**meta, architectures=[ARCHITECTURE])


def register_auto_classes(model_cls: type) -> None:
    """Register ``DecoConfig`` with ``AutoConfig`` and ``model_cls`` (``DecoModel``, which calls this when its
    module is imported) with ``AutoModelForImageTextToText`` (idempotent)."""
    global _registered
    if _registered:
        return
    AutoConfig.register(MODEL_TYPE, DecoConfig, exist_ok=True)
    AutoModelForImageTextToText.register(DecoConfig, model_cls, exist_ok=True)
    _registered = True
    log.debug("registered model_type %r with AutoConfig and AutoModelForImageTextToText", MODEL_TYPE)


__all__ = ["DecoConfig", "HF_CONFIG_FILE", "MODEL_TYPE", "hf_config", "register_auto_classes"]
