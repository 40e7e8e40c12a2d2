"""Language model: any transformers AutoModelForCausalLM, a tiny Llama built from config by default or a real
checkpoint (e.g. Vicuna-7B layout) loaded from a local path."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel

from deco_core.model.builds import check_sizes, read_build

if TYPE_CHECKING:
    from deco_core.config import LLMConfig


log = logging.getLogger(__name__)


def tiny_llama_config(cfg: LLMConfig, vocab_size: int, pad_token_id: int, bos_token_id: int,
                      eos_token_id: int) -> LlamaConfig:
    """A LlamaConfig from our fields (random init; no download)."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )


def build_llm(cfg: LLMConfig, tokenizer, trust_remote_code: bool = False) -> PreTrainedModel:
    """Load ``cfg.path`` with AutoModelForCausalLM or build a tiny Llama sized to the tokenizer."""
    if cfg.path:
        check_foundation(cfg, tokenizer)
        log.info("loading LLM from %s (trust_remote_code=%s)", cfg.path, trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            cfg.path, trust_remote_code=trust_remote_code, attn_implementation=cfg.attn_implementation
        )
    else:
        config = tiny_llama_config(cfg, len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id,
                                   tokenizer.eos_token_id)
        config._attn_implementation = cfg.attn_implementation
        model = AutoModelForCausalLM.from_config(config, attn_implementation=cfg.attn_implementation)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        log.info("resizing LLM embeddings %d -> %d for added tokens",
                 model.get_input_embeddings().num_embeddings, len(tokenizer))
        model.resize_token_embeddings(len(tokenizer))
    return model


SIZE_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
             "max_position_embeddings")


def check_foundation(cfg: LLMConfig, tokenizer) -> None:
    """A foundation build (``foundation.json`` beside the weights at ``cfg.path``) was trained with one vocabulary
    and one set of sizes: refuse it, naming what differs and the command that rebuilds it, when the tokenizer in
    use has another vocabulary or the config asks for other sizes (they would be silently ignored)."""
    from deco_core.model.tokenizer import vocab_digest

    built = read_build(cfg.path)
    if built is None:
        return
    current = vocab_digest(tokenizer)
    if built.get("vocab_digest") != current:
        raise ValueError(f"{cfg.path}: this LLM was built with vocabulary {built.get('vocab_digest')}, the tokenizer "
                         f"in use has {current} (the ShapesWorld vocabulary changed); rebuild it with `make foundation`")
    check_sizes(cfg, "llm", SIZE_KEYS, built, "make foundation")


def llm_from_hf_config(config: PretrainedConfig | dict, attn_implementation: str = "sdpa",
                       trust_remote_code: bool = False) -> PreTrainedModel:
    """Rebuild an (uninitialised) LLM from a saved HF config; weights are loaded by the caller."""
    if isinstance(config, dict):
        config = dict(config)
        model_type = config.pop("model_type")
        config = AutoConfig.for_model(model_type, **config)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                            trust_remote_code=trust_remote_code)
