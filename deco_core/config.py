"""Typed configuration: the schema, YAML group composition from conf/, dotted overrides and validation.

A run's config is composed from a top-level file (``conf/pipeline/tiny.yaml``) whose ``defaults`` table names
one YAML file per group (``model: model/tiny``), merged onto the typed schema below (so every default is filled
first), then command-line overrides (``pretrain.lr=3e-4`` or a group swap ``model.projector=qformer``), then
validation. Every error names the key's full path, the value and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from deco_core.data.shapes import ShapesConfig
from deco_core.data.storage import StorageConfig
from deco_core.model.projectors import ProjectorConfig

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Substrings of a secret key or env-var name; "token" must be a whole word (num_tokens, TOKENIZERS_* are not).
SECRET_MARKERS = ("secret", "password", "access_key", "credential")
SECRET_WORDS = ("token",)


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the key path and what was expected."""


# ----------------------------------------------------------------------------------------------- schema
@dataclass
class VisionConfig:
    """CLIP-style vision tower: built from these fields, or loaded from ``path`` (CLIP ViT-L/14-336 layout)."""

    path: str | None = None
    image_size: int = 96
    patch_size: int = 8
    hidden_size: int = 64
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int = 256
    select_layer: int = -2  # hidden_states index; -2 = penultimate block output
    image_mean: list[float] = field(default_factory=lambda: [0.48145466, 0.4578275, 0.40821073])
    image_std: list[float] = field(default_factory=lambda: [0.26862954, 0.26130258, 0.27577711])
    pad_to_square: bool = True


@dataclass
class LLMConfig:
    """Causal LM: a tiny Llama built from these fields, or any AutoModelForCausalLM checkpoint at ``path``."""

    path: str | None = None
    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    num_kv_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    attn_implementation: str = "sdpa"


@dataclass
class TokenizerConfig:
    """Tokenizer: built offline from the ShapesWorld vocabulary when ``path`` is None."""

    path: str | None = None
    max_length: int = 192


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    trust_remote_code: bool = False
    seed: int = 0


@dataclass
class SourceConfig:
    """One shard source in a training mixture."""

    uri: str = ""
    weight: float = 1.0


@dataclass
class DataConfig:
    """Corpus generation and the Ray Data streaming pipeline."""

    root: str = "runs/tiny/data"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    caption_samples: int = 4000
    instruct_samples: int = 6000
    format_samples: int = 4000  # benchmark-format training samples mixed into finetuning (ShapesWorld)
    eval_samples: int = 500
    samples_per_shard: int = 500
    pretrain_sources: list[SourceConfig] = field(default_factory=list)
    finetune_sources: list[SourceConfig] = field(default_factory=list)
    shuffle_buffer: int = 256
    preprocess_batch_size: int = 64
    preprocess_cpus: float = 0.25
    max_bad_fraction: float = 0.01
    storage: StorageConfig = field(default_factory=StorageConfig)


@dataclass
class TrainConfig:
    """One training stage (pretrain or finetune) on Ray Train + DeepSpeed."""

    stage: str = "pretrain"
    template: str = "plain"
    train_vision: bool = False
    train_projector: bool = True
    train_llm: bool = False
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    micro_batch_size: int = 16
    global_batch_size: int = 32
    grad_clip: float = 1.0
    gradient_checkpointing: bool = False
    epochs: int = 1
    max_steps: int | None = None
    samples_per_epoch: int | None = None
    num_workers: int = 2
    cpus_per_worker: float = 0.5
    use_gpu: bool = False
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    deepspeed: str = "zero2"  # file name under conf/deepspeed/
    checkpoint_every: int = 50
    num_to_keep: int = 2
    max_failures: int = 0
    seed: int = 0
    log_every: int = 5
    fail_at_step: int | None = None  # fault injection for tests: rank 1 dies once at this step
    init_from: str | None = None  # URI of an exported model to start from
    output_uri: str | None = None  # where the exported model goes (default: <run root>/<stage>/model)

    def grad_accum_steps(self) -> int:
        """Micro-batches accumulated per optimizer step so that global = micro × accum × workers."""
        return self.global_batch_size // (self.micro_batch_size * self.num_workers)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["shapes-vqa", "shapes-pope", "shapes-mc", "shapes-rec"])
    max_new_tokens: int = 16
    batch_size: int = 32
    num_actors: int = 1
    cpus_per_actor: float = 1.0
    limit: int | None = None
    worst_cases: int = 8
    data: dict[str, str] = field(default_factory=dict)  # task -> shard URI (public benchmarks converted to shards)
    seed: int = 1234  # ShapesWorld eval set seed (a frozen eval set: same seed -> same questions)


@dataclass
class AnalysisConfig:
    num_samples: int = 16
    enabled: bool = True


@dataclass
class TrackingConfig:
    tracking_uri: str | None = None  # default: sqlite:///<root>/mlruns.db
    experiment: str = "deco"
    registered_model: str = "deco-tiny"
    system_metrics: bool = True


@dataclass
class RayConfig:
    address: str | None = None  # None = in-process local Ray
    num_cpus: int | None = 4  # logical CPUs for a local Ray (see README: 2-core plan)
    object_store_memory_mb: int = 512
    runtime_env: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineConfig:
    name: str = "tiny"
    root: str = "runs/tiny"
    stages: list[str] = field(
        default_factory=lambda: ["prepare_data", "pretrain", "finetune", "evaluate", "analyze", "register"]
    )


@dataclass
class RetrainConfig:
    """Scheduled retraining (pipelines/retrain.py): how a fresh challenger is trained and judged.

    ``metric`` is any flat eval metric key; the challenger is promoted iff it beats the champion by at least
    ``margin`` in the direction of ``higher_is_better``. ``init``: ``champion`` finetunes from the current
    champion's export, ``scratch`` runs pretrain + finetune from scratch. Fresh data per round:
    ``data.shapes.seed + data_seed_offset × round`` (round = 1 + versions already registered; 0 = same data).
    """

    metric: str = "eval/group/localization"
    margin: float = 0.01
    init: str = "champion"  # champion | scratch
    data_seed_offset: int = 1
    higher_is_better: bool = True


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(stage="finetune", template="vicuna_v1", train_llm=True, lr=2e-5)
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)


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
    path = Path(config)
    if not path.is_file():
        path = _group_file(conf_dir, str(config))
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
        group_file = _group_file(conf_dir, str(ref))
        if not group_file.is_file():
            valid = ", ".join(sorted(p.stem for p in group_file.parent.glob("*.yaml"))) or "none"
            raise ConfigError(f"config key '{key}' = {str(ref)!r}: no file {group_file}; valid: {valid}")
        node = OmegaConf.create({})
        _set_dotted(node, key, _load_yaml(group_file))
        layers.append(node)
    layers.append(top)
    try:
        merged = OmegaConf.merge(schema, *layers)
        for key, value in plain_overrides:
            OmegaConf.update(merged, key, value, merge=True)
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, path)) from None
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
    """Cross-field rules that types alone cannot express."""
    v = cfg.model.vision
    _require(v.image_size % v.patch_size == 0, "model.vision.image_size", v.image_size,
             f"a multiple of patch_size={v.patch_size}")
    n_patches = (v.image_size // v.patch_size) ** 2
    from deco_core.model.projectors import validate_projector_config

    try:
        validate_projector_config(cfg.model.projector, n_patches)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"config key 'model.projector': {exc}") from None
    llm = cfg.model.llm
    _require(llm.hidden_size % llm.num_heads == 0, "model.llm.num_heads", llm.num_heads,
             f"a divisor of hidden_size={llm.hidden_size}")
    for name in ("pretrain", "finetune"):
        _validate_train(getattr(cfg, name), name)
    _require(0.0 <= cfg.data.max_bad_fraction < 1.0, "data.max_bad_fraction", cfg.data.max_bad_fraction,
             "a fraction in [0, 1)")
    for i, src in enumerate(cfg.data.pretrain_sources + cfg.data.finetune_sources):
        _require(src.weight > 0, f"data.*_sources[{i}].weight", src.weight, "> 0")
    unknown = set(cfg.pipeline.stages) - set(PipelineConfig().stages)
    _require(not unknown, "pipeline.stages", cfg.pipeline.stages, f"stages among {PipelineConfig().stages}")


def _validate_train(t: TrainConfig, key: str) -> None:
    _require(t.stage in ("pretrain", "finetune"), f"{key}.stage", t.stage, "'pretrain' or 'finetune'")
    _require(t.template in ("plain", "vicuna_v1"), f"{key}.template", t.template, "'plain' or 'vicuna_v1'")
    _require(t.schedule in ("cosine", "linear", "constant"), f"{key}.schedule", t.schedule,
             "one of cosine, linear, constant")
    _require(t.precision in ("auto", "fp32", "bf16", "fp16"), f"{key}.precision", t.precision,
             "one of auto, fp32, bf16, fp16")
    _require(t.lr > 0, f"{key}.lr", t.lr, "> 0")
    _require(0.0 <= t.warmup_ratio < 1.0, f"{key}.warmup_ratio", t.warmup_ratio, "a fraction in [0, 1)")
    _require(t.num_workers >= 1, f"{key}.num_workers", t.num_workers, ">= 1")
    _require(t.micro_batch_size >= 1, f"{key}.micro_batch_size", t.micro_batch_size, ">= 1")
    per_step = t.micro_batch_size * t.num_workers
    _require(t.global_batch_size % per_step == 0 and t.global_batch_size >= per_step,
             f"{key}.global_batch_size", t.global_batch_size,
             f"a positive multiple of micro_batch_size × num_workers = {t.micro_batch_size} × {t.num_workers}"
             f" = {per_step} (global = micro × accumulation × workers)")
    _require(t.max_steps is None or t.max_steps > 0, f"{key}.max_steps", t.max_steps, "null or > 0")
    _require(t.checkpoint_every > 0, f"{key}.checkpoint_every", t.checkpoint_every, "> 0")
    _require(any((t.train_vision, t.train_projector, t.train_llm)), f"{key}.train_*", False,
             "at least one of train_vision, train_projector, train_llm to be true")
    ds_file = _group_file(CONF_DIR, f"deepspeed/{t.deepspeed}")
    _require(ds_file.is_file(), f"{key}.deepspeed", t.deepspeed,
             f"a file under conf/deepspeed/ ({', '.join(sorted(p.stem for p in CONF_DIR.glob('deepspeed/*.yaml')))})")
    _require(math.isfinite(t.lr), f"{key}.lr", t.lr, "a finite number")


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
        cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, Path("<dict>"))) from None
    validate(cfg)
    return cfg


def redact_secrets(data: Any, _key: str = "") -> Any:
    """Replace values of secret-looking keys and environment secret values with '***'."""
    if isinstance(data, dict):
        return {k: redact_secrets(v, str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v, _key) for v in data]
    if _is_secret_name(_key) and data not in (None, "", False):
        return "***"
    if isinstance(data, str):
        for name, value in os.environ.items():
            if value and len(value) >= 6 and _is_secret_name(name) and value in data:
                data = data.replace(value, "***")
    return data


def _is_secret_name(name: str) -> bool:
    """True when ``name`` contains a SECRET_MARKERS substring or a SECRET_WORDS word (split on non-alphanumerics)."""
    low = name.lower()
    return any(m in low for m in SECRET_MARKERS) or any(w in SECRET_WORDS for w in re.split(r"[^a-z0-9]+", low))


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
