"""Stage outputs: consolidating (ZeRO-partitioned) weights into one state dict, exporting the HF-format model
to a local path or s3:// URI, and loading a previous stage's export (downloading it first when remote)."""

from __future__ import annotations

import logging
import tempfile

import torch

from deco_core.data.storage import StorageConfig, copy_dir, is_remote, local_copy
from deco_core.model.deco import DecoModel

log = logging.getLogger(__name__)


def consolidated_state_dict(engine, model: torch.nn.Module, rank: int) -> dict[str, torch.Tensor] | None:
    """Full (unpartitioned) weights on rank 0, None elsewhere. Every rank must call it (ZeRO-3 gathers)."""
    params = dict(model.named_parameters())
    if engine.zero_optimization_stage() == 3:
        import deepspeed

        out: dict[str, torch.Tensor] = {}
        for name, value in model.state_dict(keep_vars=True).items():
            p = params.get(name)
            if p is None:  # buffers are never partitioned
                out[name] = value.detach().cpu().clone()
                continue
            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if rank == 0:
                    out[name] = p.detach().cpu().clone()
        return out if rank == 0 else None
    if rank != 0:
        return None
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def export_model(model: DecoModel, state_dict: dict[str, torch.Tensor], output_uri: str,
                 storage: StorageConfig | None = None) -> str:
    """save_pretrained to ``output_uri``; remote URIs are written locally then uploaded; returns the URI."""
    if not is_remote(output_uri):
        model.save_pretrained(output_uri, state_dict=state_dict)
        log.info("exported model to %s", output_uri)
        return output_uri
    with tempfile.TemporaryDirectory(prefix="deco-export-") as tmp:
        model.save_pretrained(tmp, state_dict=state_dict)
        copy_dir(tmp, output_uri, storage)
    log.info("exported model to %s", output_uri)
    return output_uri


def load_init_model(uri: str, storage: StorageConfig | None = None) -> DecoModel:
    """Load an exported model from a local path or a remote URI (downloaded to a temp dir, removed after)."""
    with local_copy(uri, storage, prefix="deco-init-") as path:
        return DecoModel.from_pretrained(path)
