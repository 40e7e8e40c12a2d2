"""Single-process model benchmarks for ``bench.run``: DecoModel(mlp) vs transformers' LLaVA on the same
weights, DeCo-M vs the all-patch MLP (measured step time beside the analytic FLOP ratio), a dense-matmul peak,
and the FLOP model behind MFU. Every pair is timed interleaved in one process (median of the repeats).

FLOP model (per optimizer step, batch B × padded length T, ``n_img`` images, N patches, M visual tokens):
  LLM (trained):     6·P_llm·B·T + 12·L·B·T²·d      (P_llm = Linear weights incl. lm_head; attention QKᵀ and AV,
                                                    full T² as the CPU SDPA kernel computes it, ×3 for backward)
  projector MLP:     6·P_proj·n_img·M              (pooling happens before the MLP, so it sees M tokens; for the
                                                    all-patch MLP M = N; the pool itself, N·d_v adds, is ignored)
  vision (frozen):   2·P_vis·n_img·(N+1) + 4·L_v·n_img·(N+1)²·d_v   (forward only: identical for both projectors)
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch
from torch import nn

from deco_core.config import Config
from deco_core.data.ray_data import collate, preprocess_rows, stack_rows
from deco_core.data.shards import iter_samples
from deco_core.model.deco import DecoModel
from deco_core.train.trainer import preprocess_spec

log = logging.getLogger(__name__)
FLOP_PROJECTORS = ("deco", "mlp", "linear")  # projectors whose trainable matmuls all act on the M output tokens


# ------------------------------------------------------------------------------------------------ helpers
def load_batch(cfg: Config, template: str, tokenizer, uri: str, batch_size: int) -> dict[str, torch.Tensor]:
    """The first ``batch_size`` samples of a shard folder, preprocessed for ``cfg``'s projector and collated."""
    records = list(islice(iter_samples(uri, cfg.data.storage), batch_size))
    spec = preprocess_spec(cfg, template, tokenizer)
    rows, counts = preprocess_rows(records, spec)
    if len(rows) < batch_size:
        raise ValueError(f"{uri}: only {len(rows)} usable samples for a batch of {batch_size} ({dict(counts)})")
    return collate(stack_rows(rows), spec.transform)


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so that load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def linear_weights(module: nn.Module) -> int:
    """Multiply-accumulate weights per token: every nn.Linear weight (conv patch embeddings counted apart)."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def training_flops(model: DecoModel, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Analytic FLOPs of one forward+backward on ``batch`` (formula in the module docstring)."""
    name = model.cfg.projector.name
    if name not in FLOP_PROJECTORS:
        raise ValueError(f"training_flops: no FLOP model for projector {name!r}; valid: {', '.join(FLOP_PROJECTORS)}")
    b, t = batch["input_ids"].shape
    n_img = int(batch["image_mask"].sum())
    llm_cfg = model.llm.config
    llm = 6 * linear_weights(model.llm) * b * t + 12 * llm_cfg.num_hidden_layers * b * t * t * llm_cfg.hidden_size
    projector = 6 * linear_weights(model.projector) * n_img * model.num_image_tokens
    vcfg = model.vision.model.config
    nv = model.vision.num_patches + 1  # + CLS
    patch_conv = 3 * vcfg.patch_size**2 * vcfg.hidden_size * model.vision.num_patches
    vision = n_img * (2 * linear_weights(model.vision) * nv + 2 * patch_conv
                      + 4 * vcfg.num_hidden_layers * nv * nv * vcfg.hidden_size)
    return {"llm": float(llm), "projector": float(projector), "vision": float(vision),
            "total": float(llm + projector + vision), "batch": float(b), "seq_len": float(t)}


def _fwd_bwd(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], float]:
    def step() -> float:
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return float(loss.detach())

    return step


def _train_step(model: nn.Module, inputs: dict[str, torch.Tensor]) -> Callable[[], float]:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


# ------------------------------------------------------------------------------------------ (a) HF parity
def build_llava_twin(ours: DecoModel) -> nn.Module:
    """transformers' LlavaForConditionalGeneration with our (mlp projector) weights copied in."""
    from deco_core.model.export_llava import to_llava

    return to_llava(ours)


def bench_hf_parity(cfg_mlp: Config, tokenizer, batch: dict[str, torch.Tensor], repeats: int,
                    warmup: int = 2) -> dict[str, Any]:
    """(a) forward+backward of DecoModel(mlp) vs LLaVA on the same weights and batch (vision frozen in both)."""
    if not bool(batch["image_mask"].all()):
        raise ValueError("bench_hf_parity: every sample of the batch needs an image (LLaVA takes no image mask)")
    ours = DecoModel.from_config(cfg_mlp.model, tokenizer).train()
    ours.freeze_for_stage("finetune")
    llava = build_llava_twin(ours).train()
    llava.model.vision_tower.requires_grad_(False)
    llava_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    fns = {"deco": _fwd_bwd(ours, batch), "llava": _fwd_bwd(llava, llava_inputs)}
    loss_gap = abs(fns["deco"]() - fns["llava"]())
    med = time_interleaved(fns, repeats, warmup)
    log.info("(a) fwd+bwd: DecoModel %.4fs, LLaVA %.4fs (loss gap %.2e)", med["deco"], med["llava"], loss_gap)
    return {"deco_fwd_bwd_s": med["deco"], "llava_fwd_bwd_s": med["llava"], "ratio_deco_over_llava":
            med["deco"] / med["llava"], "loss_abs_diff": loss_gap, "batch": int(batch["input_ids"].shape[0]),
            "seq_len": int(batch["input_ids"].shape[1]), "repeats": repeats}


# ------------------------------------------------------------------------------------ (b) DeCo-M vs MLP
def bench_compression(cfgs: dict[str, Config], tokenizer, uri: str, batch_size: int, repeats: int,
                      warmup: int = 2) -> dict[str, Any]:
    """(b) AdamW training step (finetune freeze) of each config on the same samples; FLOPs beside time."""
    out: dict[str, Any] = {}
    fns = {}
    for key, cfg in cfgs.items():
        model = DecoModel.from_config(cfg.model, tokenizer).train()
        model.freeze_for_stage("finetune")
        batch = load_batch(cfg, "vicuna_v1", tokenizer, uri, batch_size)
        fns[key] = _train_step(model, batch)
        out[key] = {"visual_tokens": model.num_image_tokens, "flops": training_flops(model, batch),
                    "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    med = time_interleaved(fns, repeats, warmup)
    for key in cfgs:
        out[key]["step_s"] = med[key]
        out[key]["achieved_flops_per_s"] = out[key]["flops"]["total"] / med[key]
    deco, mlp = list(cfgs)
    out["time_ratio_mlp_over_deco"] = med[mlp] / med[deco]
    out["flop_ratio_mlp_over_deco"] = out[mlp]["flops"]["total"] / out[deco]["flops"]["total"]
    out["repeats"] = repeats
    log.info("(b) step: %s %.4fs, %s %.4fs -> time ratio %.2f vs FLOP ratio %.2f", deco, med[deco], mlp, med[mlp],
             out["time_ratio_mlp_over_deco"], out["flop_ratio_mlp_over_deco"])
    return out


# ------------------------------------------------------------------------------------------ (e) peak
def matmul_peak(threads: int, size: int = 1024, repeats: int = 5, per_repeat: int = 8) -> dict[str, float]:
    """Dense fp32 matmul throughput with ``threads`` torch threads: the best of ``repeats`` timed bursts."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(per_repeat):
                torch.mm(a, b)
            best = min(best, (time.perf_counter() - start) / per_repeat)
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * size**3
    log.info("(e) matmul %d² fp32 on %d threads: %.2f GFLOP/s", size, threads, flops / best / 1e9)
    return {"size": size, "threads": threads, "seconds_per_matmul": best, "peak_flops_per_s": flops / best}
