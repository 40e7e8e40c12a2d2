"""Typed configuration: the schema, YAML group composition from conf/, dotted overrides and validation.

A run's config is composed from a top-level file (``conf/pipeline/tiny.yaml``) whose ``defaults`` table names
one YAML file per group (``model: model/tiny``), merged onto the typed schema below (so every default is filled
first), then command-line overrides (``pretrain.lr=3e-4`` or a group swap ``model.projector=qformer``), then
validation. Every error names the key's full path, the value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deco_core.config_deepspeed import fill_deepspeed_config
from deco_core.config_ranges import check_ranges
from deco_core.config_schema import (  # noqa: F401  (re-exported: the schema is part of this module's API)
    SECTION_RANGES,
    AnalysisConfig,
    Config,
    DataConfig,
    EvalConfig,
    LLMConfig,
    ModelConfig,
    PipelineConfig,
    ProjectorConfig,
    RayConfig,
    RetrainConfig,
    ShapesConfig,
    SourceConfig,
    StorageConfig,
    TokenizerConfig,
    TrackingConfig,
    TrainConfig,
    VisionConfig,
)
from deco_core.data.conversation import TEMPLATES
from deco_core.model.builds import read_build
from deco_core.secrets import redact_secrets  # noqa: F401  (re-exported: deco_core.config.redact_secrets)


def _locate_conf_dir() -> Path:
    """The built-in config groups: ``deco_core/conf`` in an installed package (shipped as package data from the
    repository's top-level ``conf/``), else ``conf/`` beside the package in a source checkout."""
    packaged = Path(str(importlib.resources.files("deco_core"))) / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


CONF_DIR = _locate_conf_dir()




class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the key path and what was expected."""


# ------------------------------------------------------------------------------------------ composition
def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(node).__name__}")
    return node


def _group_file(conf_dir: Path, ref: str) -> Path:
    """``model/tiny`` -> conf/model/tiny.yaml."""
    return conf_dir / (ref if ref.endswith(".yaml") else f"{ref}.yaml")


def _resolve_top(config: str | Path, conf_dir: Path) -> Path:
    """A config file as given (relative to the working directory), else a ref into ``conf_dir``: ``pipeline/tiny``,
    ``pipeline/tiny.yaml`` or ``conf/pipeline/tiny.yaml`` (the repository spelling, valid from any directory)."""
    path = Path(config)
    if path.is_file():
        return path
    ref = str(config)
    if ref.startswith("conf/"):
        ref = ref[len("conf/"):]
    candidate = _group_file(conf_dir, ref)
    if not path.is_absolute() and candidate.is_file():
        return candidate
    group = candidate.parent if any(candidate.parent.glob("*.yaml")) else conf_dir / "pipeline"
    valid = ", ".join(sorted(p.stem for p in group.glob("*.yaml"))) or "none"
    raise ConfigError(f"config file not found: {config}; valid there: {valid} "
                      f"(as refs {group.relative_to(conf_dir).as_posix()}/<name>)")


def _find_group(roots: list[Path], key: str, ref: str) -> Path:
    """The first ``<root>/<ref>.yaml`` that exists; the error names every place looked and the valid names."""
    candidates = list(dict.fromkeys(_group_file(root, ref) for root in roots))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    valid = ", ".join(sorted({p.stem for c in candidates for p in c.parent.glob("*.yaml")})) or "none"
    looked = " or ".join(str(c) for c in candidates)
    raise ConfigError(f"config key '{key}' = {ref!r}: no file {looked}; valid: {valid}")


def _set_dotted(node: DictConfig, key: str, value: Any) -> None:
    OmegaConf.update(node, key, value, merge=False, force_add=True)


def compose(
    config: str | Path = "pipeline/tiny",
    overrides: list[str] | None = None,
    conf_dir: Path = CONF_DIR,
) -> Config:
    """Compose, override, fill and validate a config.

    Args:
        config: a file path, or a ref relative to ``conf_dir`` such as ``pipeline/tiny``.
        overrides: ``key.path=value`` items; for a key listed in ``defaults`` the value picks another file of
            the same group (``model.projector=qformer``).
    """
    path = _resolve_top(config, conf_dir)
    roots = list(dict.fromkeys([path.resolve().parent.parent, conf_dir]))  # the file's own conf tree first
    top = _load_yaml(path)
    defaults = top.pop("defaults", None) or {}
    defaults = dict(OmegaConf.to_container(defaults)) if isinstance(defaults, DictConfig) else {}
    plain_overrides: list[tuple[str, Any]] = []
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key in defaults:
            group = str(defaults[key]).rsplit("/", 1)[0]
            defaults[key] = raw if "/" in raw else f"{group}/{raw}"
        else:
            plain_overrides.append((key, _parse_scalar(raw)))
    schema = OmegaConf.structured(Config)
    layers: list[DictConfig] = []
    for key, ref in sorted(defaults.items(), key=lambda kv: kv[0].count(".")):
        group_file = _find_group(roots, key, str(ref))
        node = OmegaConf.create({})
        _set_dotted(node, key, _load_yaml(group_file))
        layers.append(node)
    layers.append(top)
    try:
        merged = OmegaConf.merge(schema, *layers)
        for key, value in plain_overrides:
            OmegaConf.update(merged, key, value, merge=True)
        fill_deepspeed_config(merged, roots)
        resolve_model_paths(merged, [root.parent for root in roots])
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, path)) from None
    return _typed(merged, path)


def load_structured(path: str | Path, schema: type, what: str) -> Any:
    """A standalone YAML file (not a composed pipeline config) typed onto the dataclass ``schema``: a missing file,
    unknown keys and bad types raise ConfigError naming the file (``what`` names the kind of file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} config not found: {path}")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None


MODEL_PATH_KEYS = ("model.llm.path", "model.tokenizer.path", "model.vision.path")


def resolve_model_paths(merged: DictConfig, projects: list[Path]) -> None:
    """A relative model path that exists under a project root (the parent of a conf tree: the checkout, or
    ``deco_core/`` of an installed package, which ships ``artifacts/`` beside ``conf/``) becomes absolute, e.g. the
    committed ``artifacts/foundation/tiny/llm``, so Ray workers, whose working folder differs, load the same files;
    hub names and absolute or remote paths are left as given."""
    for key in MODEL_PATH_KEYS:
        value = OmegaConf.select(merged, key)
        if not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute():
            continue
        for project in projects:
            if (project / value).exists():
                OmegaConf.update(merged, key, str((project / value).resolve()), merge=False)
                break


def _typed(merged: DictConfig, path: Path) -> Config:
    """Ranges first (on the plain values, so each error names its key), then the dataclasses, then validate()."""
    try:
        problems = check_ranges(Config, OmegaConf.to_container(merged, resolve=True), SECTION_RANGES)  # type: ignore[arg-type]
        if problems:
            raise ConfigError("; ".join(problems))
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, path)) from None
    except ValueError as exc:  # a section's own checks (ShapesConfig.__post_init__)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config {path.name}: {exc}") from None
    validate(cfg)
    return cfg


def _parse_scalar(raw: str) -> Any:
    """Parse an override value as YAML (numbers, bools, null, lists) falling back to the string."""
    try:
        return OmegaConf.create(f"v: {raw}").v
    except Exception:
        return raw


def _describe(exc: OmegaConfBaseException, path: Path) -> str:
    key = getattr(exc, "full_key", None) or "?"
    msg = str(exc).split("\n")[0]
    return f"config {path.name}: key '{key}': {msg}"


# ------------------------------------------------------------------------------------------- validation
def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' = {value!r}: expected {expected}")


def validate(cfg: Config) -> None:
    """Cross-field rules that types and ranges alone cannot express (ranges: ``deco_core.config_ranges``)."""
    v = cfg.model.vision
    _require(v.image_size % v.patch_size == 0, "model.vision.image_size", v.image_size,
             f"a multiple of patch_size={v.patch_size}")
    sized = v.path is None or read_build(v.path) is not None  # a foundation build has the config's sizes
    _require(not sized or -(v.num_layers + 1) <= v.select_layer <= v.num_layers, "model.vision.select_layer",
             v.select_layer, f"a hidden_states index in [-{v.num_layers + 1}, {v.num_layers}] (num_layers={v.num_layers})")
    n_patches = (v.image_size // v.patch_size) ** 2
    from deco_core.model.projector_config import validate_projector_config

    try:
        validate_projector_config(cfg.model.projector, n_patches)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"config key 'model.projector': {exc}") from None
    llm = cfg.model.llm
    _require(llm.hidden_size % llm.num_heads == 0, "model.llm.num_heads", llm.num_heads,
             f"a divisor of hidden_size={llm.hidden_size}")
    _require(TEMPLATES.get(cfg.model.chat_template, (None, None))[1] is not None, "model.chat_template",
             cfg.model.chat_template, f"a chat template among {', '.join(k for k, v in TEMPLATES.items() if v[1] is not None)}")
    for name in ("pretrain", "finetune"):
        _validate_train(getattr(cfg, name), name)
    _validate_sources(cfg)
    unknown = set(cfg.pipeline.stages) - set(PipelineConfig().stages)
    _require(not unknown, "pipeline.stages", cfg.pipeline.stages, f"stages among {PipelineConfig().stages}")


def _validate_sources(cfg: Config) -> None:
    """Configured shard sources replace the generated ShapesWorld corpus for both training stages, so each
    training stage in ``pipeline.stages`` needs its own once either is set."""
    data = cfg.data
    if not (data.pretrain_sources or data.finetune_sources):
        return
    for stage, other in (("pretrain", "finetune"), ("finetune", "pretrain")):
        if stage in cfg.pipeline.stages and not getattr(data, f"{stage}_sources"):
            raise ConfigError(
                f"config key 'data.{stage}_sources' is empty while data.{other}_sources is set: with configured "
                f"sources no ShapesWorld corpus is generated, so the {stage} stage has no data; set "
                f"data.{stage}_sources, or leave '{stage}' out of pipeline.stages"
                + (" (finetune.init_from then names the model to start from)" if stage == "pretrain" else ""))


def _validate_train(t: TrainConfig, key: str) -> None:
    _require(t.template in TEMPLATES, f"{key}.template", t.template, f"one of {', '.join(TEMPLATES)}")
    try:
        t.grad_accum_steps()
    except ValueError as exc:
        raise ConfigError(f"config key '{key}.global_batch_size' = {t.global_batch_size}: {exc}") from None
    _require(any((t.train_vision, t.train_projector, t.train_llm)), f"{key}.train_*", False,
             "at least one of train_vision, train_projector, train_llm to be true")
    ds_file = _group_file(CONF_DIR, f"deepspeed/{t.deepspeed}")
    _require(ds_file.is_file(), f"{key}.deepspeed", t.deepspeed,
             f"a file under conf/deepspeed/ ({', '.join(sorted(p.stem for p in CONF_DIR.glob('deepspeed/*.yaml')))})")


# ---------------------------------------------------------------------------------------------- helpers
def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for YAML dumps and hashing)."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else copy.deepcopy(cfg)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(redact_secrets(to_dict(cfg))))


def from_dict(data: dict[str, Any]) -> Config:
    """Rebuild a typed Config from ``to_dict`` output (used to ship configs to Ray workers and jobs)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, Path("<dict>"))) from None
    return _typed(merged, Path("<dict>"))


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
