"""DecoModel: vision tower -> projector -> LLM.

Projected image features are written into the LLM's input embeddings at the image-token positions. The number
of image-token positions must equal (#images × projector tokens) or a ValueError names both counts.
Also: the per-stage freeze step, greedy generation with KV cache, and save/load in a self-contained directory
(config JSON + safetensors + tokenizer + image processor) that needs neither Ray nor DeepSpeed. The directory
also holds an HF ``config.json`` (``model_type: "deco"``); importing this module registers it with transformers'
auto classes, so ``AutoModelForImageTextToText.from_pretrained(dir)`` returns a DecoModel (deco_core.model.hf).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig

from deco_core.config import ConfigError, ModelConfig, to_dict
from deco_core.config_schema import STAGE_TRAINABLE
from deco_core.model.hf import hf_config, register_auto_classes
from deco_core.model.llm import build_llm, llm_from_hf_config
from deco_core.model.projector_config import ProjectorConfig
from deco_core.model.projectors import build_projector
from deco_core.model.tokenizer import ensure_special_tokens, image_token_id, load_tokenizer
from deco_core.model.vision import build_vision_tower, vision_tower_from_hf_config

log = logging.getLogger(__name__)

CONFIG_FILE = "deco_config.json"
WEIGHTS_FILE = "model.safetensors"
# Which modules train in each stage: (vision, projector, llm). Overridable per stage from config.


class DecoModel(nn.Module):
    """Vision tower, projector and causal LM with LLaVA-style image-token merging."""

    def __init__(self, cfg: ModelConfig, vision: nn.Module, projector: nn.Module, llm: nn.Module,
                 tokenizer: Any) -> None:
        super().__init__()
        self.cfg = cfg
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id(tokenizer)
        self.num_image_tokens = projector.num_output_tokens(vision.num_patches)

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def from_config(cls, cfg: ModelConfig, tokenizer: Any | None = None) -> DecoModel:
        """Build every part from config (random init for tiny parts, weights for parts with a path)."""
        torch.manual_seed(cfg.seed)
        tokenizer = tokenizer or load_tokenizer(cfg.tokenizer, cfg.trust_remote_code, cfg.seed)
        vision = build_vision_tower(cfg.vision)
        llm = build_llm(cfg.llm, tokenizer, cfg.trust_remote_code)
        projector = build_projector(cfg.projector, vision.hidden_size, llm.config.hidden_size, vision.num_patches)
        return cls(cfg, vision, projector, llm, tokenizer)

    # ---------------------------------------------------------------------------------------- forward
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, H, W] -> image embeddings [B, M, D_llm]."""
        vision_trains = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and vision_trains):  # frozen tower: no graph
            feats = self.vision(pixel_values.to(self.vision.model.dtype))  # [B, N, Dv]
        return self.projector(feats.to(next(self.projector.parameters(), feats).dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings with image features scattered into the image-token positions.

        Args:
            input_ids: [B, T]; image positions hold ``image_token_id``.
            pixel_values: [B_img, 3, H, W] images, in order of appearance, or None for text only.
            image_mask: optional [B] bool; when given, only ``pixel_values[image_mask]`` are encoded.
        Returns: [B, T, D_llm]
        """
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, T, D]
        positions = input_ids == self.image_token_id  # [B, T]
        n_positions = int(positions.sum())
        if pixel_values is not None and image_mask is not None:
            pixel_values = pixel_values[image_mask]
        n_images = 0 if pixel_values is None else pixel_values.shape[0]
        expected = n_images * self.num_image_tokens
        if n_positions != expected:
            raise ValueError(
                f"image tokens and image features do not match: the text holds {n_positions} image-token "
                f"positions but {n_images} image(s) × {self.num_image_tokens} projector tokens = {expected} features"
            )
        if n_images == 0:
            return embeds
        feats = self.encode_images(pixel_values).to(embeds.dtype)  # [B_img, M, D]
        return embeds.masked_scatter(positions.unsqueeze(-1), feats.reshape(-1, feats.shape[-1]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any):
        """Causal LM forward; returns the LLM's output (``.loss`` when labels [B, T] are given)."""
        embeds = self.embed(input_ids, pixel_values, image_mask)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
                 image_mask: torch.Tensor | None = None, max_new_tokens: int = 16, **kwargs: Any) -> torch.Tensor:
        """Greedy decoding with KV cache on left-padded prompts; returns only the new tokens [B, <=max_new]."""
        embeds = self.embed(input_ids, pixel_values, image_mask)
        kwargs.setdefault("do_sample", False)
        return self.llm.generate(
            inputs_embeds=embeds, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            use_cache=True, **kwargs,
        )

    # ----------------------------------------------------------------------------------------- freeze
    def freeze_for_stage(self, stage: str, train_vision: bool | None = None, train_projector: bool | None = None,
                         train_llm: bool | None = None) -> dict[str, tuple[int, int]]:
        """Set requires_grad per module for a stage and log one line per module.

        Returns {module: (trainable, total)} parameter counts.
        """
        if stage not in STAGE_TRAINABLE:
            raise KeyError(f"unknown stage {stage!r}; valid: {', '.join(STAGE_TRAINABLE)}")
        default = STAGE_TRAINABLE[stage]
        flags = {
            "vision": default[0] if train_vision is None else train_vision,
            "projector": default[1] if train_projector is None else train_projector,
            "llm": default[2] if train_llm is None else train_llm,
        }
        summary: dict[str, tuple[int, int]] = {}
        for name, flag in flags.items():
            module: nn.Module = getattr(self, name)
            module.requires_grad_(flag)
            total = sum(p.numel() for p in module.parameters())
            summary[name] = (total if flag else 0, total)
            log.info("stage %s: %-9s %-9s %s / %s parameters", stage, name, "trainable" if flag else "frozen",
                     f"{summary[name][0]:,}", f"{total:,}")
        return summary

    def parameter_summary(self) -> dict[str, tuple[int, int]]:
        """{module: (trainable, total)} parameter counts."""
        out = {}
        for name in ("vision", "projector", "llm"):
            params = list(getattr(self, name).parameters())
            out[name] = (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))
        return out

    # ------------------------------------------------------------------------------------ persistence
    def image_processor(self) -> CLIPImageProcessorPil:
        """A CLIP image processor matching our transform (PIL backend: no torchvision needed)."""
        v = self.cfg.vision
        size = self.vision.image_size
        return CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                  image_mean=list(v.image_mean), image_std=list(v.image_std))

    def save_pretrained(self, out_dir: str | os.PathLike, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Write config, safetensors weights, tokenizer and image processor; loadable by ``from_pretrained``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        sd = state_dict if state_dict is not None else self.state_dict()
        sd = _drop_shared({k: v.detach().contiguous().cpu() for k, v in sd.items()})
        meta = {
            "deco_config": to_dict(self.cfg),
            "vision_config": self.vision.model.config.to_dict(),
            "vision_select_layer": self.vision.select_layer,
            "llm_config": self.llm.config.to_dict(),
            "num_image_tokens": self.num_image_tokens,
        }
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str))
        hf_config(meta).save_pretrained(out)  # config.json, model_type "deco": AutoModelForImageTextToText
        save_file(sd, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
        self.tokenizer.save_pretrained(out / "tokenizer")
        self.image_processor().save_pretrained(out / "image_processor")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, trust_remote_code: bool = False, **hf_kwargs: Any) -> DecoModel:
        """Load a directory written by ``save_pretrained`` (no Ray, no DeepSpeed, no network), or the MLflow pyfunc
        directory of a registered version (the export sits under its ``artifacts/export``).

        ``hf_kwargs`` are what ``AutoModelForImageTextToText.from_pretrained`` passes on (``config``, hub options);
        the directory's own files decide everything, so they are not used.
        """
        if hf_kwargs:
            log.debug("from_pretrained(%s): ignoring %s", path, sorted(hf_kwargs))
        root = _export_root(Path(path))
        if not (root / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{root}: not an exported DeCo model (missing {CONFIG_FILE})")
        meta = json.loads((root / CONFIG_FILE).read_text())
        cfg = _model_from_dict(meta["deco_config"])
        tokenizer = ensure_special_tokens(AutoTokenizer.from_pretrained(root / "tokenizer", use_fast=True))
        vision = vision_tower_from_hf_config(CLIPVisionConfig(**_strip(meta["vision_config"])),
                                             meta["vision_select_layer"])
        llm = llm_from_hf_config(_strip(meta["llm_config"]), cfg.llm.attn_implementation,
                                 trust_remote_code=bool(trust_remote_code))
        projector = build_projector(cfg.projector, vision.hidden_size, llm.config.hidden_size, vision.num_patches)
        model = cls(cfg, vision, projector, llm, tokenizer)
        missing, unexpected = model.load_state_dict(load_file(str(root / WEIGHTS_FILE)), strict=False)
        missing = [k for k in missing if k not in _shared_keys(model.state_dict())]  # tied: filled via their twin
        if missing or unexpected:
            raise ValueError(f"{root / WEIGHTS_FILE}: weights do not match the model: missing={missing[:5]} "
                             f"unexpected={unexpected[:5]}")
        return model.eval()


def _export_root(root: Path) -> Path:
    """``root`` itself, or the export inside an MLflow pyfunc model directory (see deco_core.serving)."""
    nested = root / "artifacts" / "export"
    if not (root / CONFIG_FILE).is_file() and (root / "MLmodel").is_file() and (nested / CONFIG_FILE).is_file():
        return nested
    return root


def _shared_keys(sd: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensor shares storage with an earlier key (tied weights, e.g. lm_head = embed_tokens)."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    shared = set()
    for key, tensor in sd.items():
        if tensor.numel() == 0:  # empty tensors all report data_ptr 0
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            shared.add(key)
        seen.add(ident)
    return shared


def _drop_shared(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: keep the first key of each tied group."""
    shared = _shared_keys(sd)
    if shared:
        log.info("not saving tied weights %s (restored by the model's weight tying on load)", sorted(shared))
    return {k: v for k, v in sd.items() if k not in shared}


def _strip(hf_config: dict[str, Any]) -> dict[str, Any]:
    drop = {"transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype"}
    return {k: v for k, v in hf_config.items() if k not in drop}


def _model_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Typed ModelConfig from its saved dict. Only the model section is read: loading an exported model needs no
    training settings and no conf/ files (the projector is checked against the patch grid when it is built)."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.create(data)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{CONFIG_FILE}: key 'deco_config.{getattr(exc, 'full_key', '?')}': "
                          f"{str(exc).splitlines()[0]}") from None


register_auto_classes(DecoModel)

__all__ = ["DecoModel", "ProjectorConfig", "STAGE_TRAINABLE"]
