"""Foundation builds on disk: the manifest (``foundation.json``) that ``pipelines.foundation`` and
``pipelines.foundation_vision`` write beside the weights, and the check that a config loading such a build asks for
the sizes it was built with (a checkpoint's own sizes win silently otherwise), and the cheap digest of what a model
folder holds that workflow fingerprints use."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

FOUNDATION_MANIFEST = "foundation.json"


def read_build(path: str | Path | None) -> dict[str, Any] | None:
    """The manifest of the foundation build at ``path``, or None for a plain checkpoint (no manifest)."""
    manifest = Path(str(path)) / FOUNDATION_MANIFEST if path else None
    if manifest is None or not manifest.is_file():
        return None
    return json.loads(manifest.read_text())


def build_digest(path: str | None) -> str | None:
    """What a model path holds, cheaply: a foundation build's manifest (it names the build: time, MLflow run,
    scores), else each file's name, size and modification time (no read of multi-GB weights); None for a path
    that is not a local folder (a hub name is already in the config)."""
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return None
    manifest = folder / FOUNDATION_MANIFEST
    if manifest.is_file():
        return hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    stats = [(str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
             for f in sorted(folder.rglob("*")) if f.is_file()]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def check_sizes(cfg: Any, section: str, keys: tuple[str, ...], built: dict[str, Any], command: str) -> None:
    """Refuse a build whose recorded ``built[section]`` sizes differ from ``cfg``'s, naming each key, both values,
    the rebuild ``command`` and how to build a random module of the config's sizes instead."""
    sizes = built.get(section, {})
    differ = [f"model.{section}.{k}={getattr(cfg, k)} (built: {sizes[k]})" for k in keys
              if k in sizes and sizes[k] != getattr(cfg, k)]
    if differ:
        raise ValueError(f"{cfg.path}: the config asks for {', '.join(differ)}; rebuild with `{command}` after "
                         f"changing conf/model, or set model.{section}.path=null for a random {section} of these sizes")
