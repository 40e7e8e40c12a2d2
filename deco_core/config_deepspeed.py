"""DeepSpeed settings composed into the config: ``conf/deepspeed/<name>.yaml`` read once, at compose time.

``TrainConfig.deepspeed`` names the file (``pretrain.deepspeed=zero3`` picks another); ``compose`` then fills
``TrainConfig.deepspeed_config`` with the file's contents, with any ``deepspeed_config`` entries given in YAML or
as overrides (``pretrain.deepspeed_config.zero_optimization.overlap_comm=true``) merged on top. The settings so
travel inside the resolved config: workers receive them (they never read conf/), and they are logged and
fingerprinted with the rest. Batch sizes, precision and clipping are added from the train config by
``deco_core.train.deepspeed.build_ds_config``. Torch-free.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

TRAIN_SECTIONS = ("pretrain", "finetune")
"""Config sections of type TrainConfig, each with its own DeepSpeed settings."""
ZERO_STAGES = (0, 1, 2, 3)
"""DeepSpeed ZeRO stages (zero_optimization.stage)."""


def deepspeed_choices(conf_dir: Path) -> list[str]:
    """The names under ``conf/deepspeed/`` (``zero2``, ``zero3``, ...)."""
    return sorted(p.stem for p in (conf_dir / "deepspeed").glob("*.yaml"))


def deepspeed_file(conf_dir: Path, name: str) -> Path:
    """The YAML file a ``deepspeed`` name refers to (it may not exist)."""
    return conf_dir / "deepspeed" / f"{name}.yaml"


def fill_deepspeed_config(merged: DictConfig, conf_dirs: list[Path]) -> None:
    """Set each train section's ``deepspeed_config`` to its named file merged with the entries already there.

    The file is looked up in ``conf_dirs`` in order (the composed file's own conf tree first, like the other
    groups). A name without a file is left for validation, which reports the key, the value and the choices.
    """
    for section in TRAIN_SECTIONS:
        node = merged.get(section)
        if node is None:
            continue
        found = [p for d in conf_dirs if (p := deepspeed_file(d, str(node.deepspeed))).is_file()]
        if not found:
            continue
        path = found[0]
        from_file = OmegaConf.load(path)
        if not isinstance(from_file, DictConfig):
            raise ValueError(f"{path}: expected a mapping of DeepSpeed settings")
        node.deepspeed_config = OmegaConf.merge(from_file, node.deepspeed_config)
        stage = OmegaConf.select(node.deepspeed_config, "zero_optimization.stage", default=0)
        if stage not in ZERO_STAGES:
            raise ValueError(f"config key '{section}.deepspeed_config.zero_optimization.stage' = {stage!r} "
                             f"(from {path.name}): expected one of {', '.join(map(str, ZERO_STAGES))}")
        log.debug("%s.deepspeed_config composed from %s", section, path)


__all__ = ["TRAIN_SECTIONS", "ZERO_STAGES", "deepspeed_choices", "deepspeed_file", "fill_deepspeed_config"]
