"""Stage fingerprints: each hashes the config sections its stage reads, its upstream stages' fingerprints and the
code version (a hash of every ``*.py`` under deco_core/ and pipelines/). Settings read from conf/ files are part
of the composed config (the DeepSpeed settings are ``pretrain|finetune.deepspeed_config``), so a changed YAML
changes the fingerprint of the stages that read it. Stages that read ``model`` also hash what its local paths hold
(``build_digest``): a rebuilt foundation LLM or tower at the same path invalidates them too."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from deco_core.config import Config, to_dict
from deco_core.model.builds import build_digest
from pipelines.workflow.context import StageSpec

PACKAGE_DIRS = ("deco_core", "pipelines")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of our source files: a code change invalidates cached stage outputs."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[2]
    for pkg in PACKAGE_DIRS:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _select(cfg_dict: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg_dict
    for part in dotted.split("."):
        node = node[part]
    return node


def fingerprints(cfg: Config, stages: dict[str, StageSpec]) -> dict[str, str]:
    """Stage -> sha256 of (its config sections, upstream fingerprints, code version)."""
    data = to_dict(cfg)
    builds = {part: build_digest(getattr(cfg.model, part).path) for part in ("vision", "llm", "tokenizer")}
    out: dict[str, str] = {}
    for name, spec in stages.items():  # table order is topological
        payload = {"stage": name, "config": {k: _select(data, k) for k in spec.config_keys},
                   "deps": {d: out[d] for d in spec.deps if d in out}, "code": code_version()}
        if any(k == "model" or k.startswith("model.") for k in spec.config_keys):
            payload["builds"] = builds
        out[name] = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
    return out
