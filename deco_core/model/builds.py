"""Foundation builds on disk: the manifest (``foundation.json``) that ``pipelines.foundation`` and
``pipelines.foundation_vision`` write beside the weights, and the check that a config loading such a build asks for
the sizes it was built with (a checkpoint's own sizes win silently otherwise)."""

from __future__ import annotations

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


def check_sizes(cfg: Any, section: str, keys: tuple[str, ...], built: dict[str, Any], command: str) -> None:
    """Refuse a build whose recorded ``built[section]`` sizes differ from ``cfg``'s, naming each key, both values,
    the rebuild ``command`` and how to build a random module of the config's sizes instead."""
    sizes = built.get(section, {})
    differ = [f"model.{section}.{k}={getattr(cfg, k)} (built: {sizes[k]})" for k in keys
              if k in sizes and sizes[k] != getattr(cfg, k)]
    if differ:
        raise ValueError(f"{cfg.path}: the config asks for {', '.join(differ)}; rebuild with `{command}` after "
                         f"changing conf/model, or set model.{section}.path=null for a random {section} of these sizes")
