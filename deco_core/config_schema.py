"""The typed configuration schema: one dataclass per section, with every default (attribute comments say what
each field means) and, for every numeric field, its allowed range (``ranged`` in the field, or ``SECTION_RANGES``
below for sections defined beside their code; see ``deco_core.config_ranges``). Composition, overrides and
validation live in ``deco_core.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deco_core.config_ranges import Range, chosen, ranged
from deco_core.data.shapes_config import ShapesConfig
from deco_core.data.storage import StorageConfig
from deco_core.model.projector_config import ProjectorConfig


@dataclass
class VisionConfig:
    """CLIP-style vision tower: built from these fields, or loaded from ``path`` (CLIP ViT-L/14-336 layout)."""

    path: str | None = None
    image_size: int = ranged(96, ge=1)
    patch_size: int = ranged(8, ge=1)
    hidden_size: int = ranged(64, ge=1)
    num_layers: int = ranged(3, ge=1)
    num_heads: int = ranged(4, ge=1)
    intermediate_size: int = ranged(256, ge=1)
    # hidden_states index; -2 = penultimate block output (checked against num_layers by validate())
    select_layer: int = ranged(-2, note="a hidden_states index, negative counts from the end")
    image_mean: list[float] = ranged(factory=lambda: [0.48145466, 0.4578275, 0.40821073], ge=0, le=1)
    image_std: list[float] = ranged(factory=lambda: [0.26862954, 0.26130258, 0.27577711], gt=0)
    pad_to_square: bool = True


@dataclass
class LLMConfig:
    """Causal LM: a tiny Llama built from these fields, or any AutoModelForCausalLM checkpoint at ``path``."""

    path: str | None = None
    hidden_size: int = ranged(128, ge=1)
    num_layers: int = ranged(3, ge=1)
    num_heads: int = ranged(4, ge=1)
    num_kv_heads: int = ranged(4, ge=1)
    intermediate_size: int = ranged(512, ge=1)
    max_position_embeddings: int = ranged(512, ge=1)
    attn_implementation: str = "sdpa"


@dataclass
class TokenizerConfig:
    """Tokenizer: built offline from the ShapesWorld vocabulary when ``path`` is None."""

    path: str | None = None
    max_length: int = ranged(192, ge=1)


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    trust_remote_code: bool = False
    seed: int = ranged(0, ge=0)
    chat_template: str = "vicuna_v1"  # how generation prompts are written; the finetune stage sets its template


@dataclass
class SourceConfig:
    """One shard source in a training mixture."""

    uri: str = ""
    weight: float = ranged(1.0, gt=0)


@dataclass
class DataConfig:
    """Corpus generation and the Ray Data streaming pipeline."""

    root: str = "runs/tiny/data"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    caption_samples: int = ranged(4000, ge=1)
    instruct_samples: int = ranged(6000, ge=1)
    format_samples: int = ranged(4000, ge=1)  # benchmark-format training samples mixed into finetuning (ShapesWorld)
    format_mix: dict[str, float] = ranged(factory=lambda: {"vqa": 1.0, "pope": 1.0, "mc": 1.0, "rec": 1.0}, ge=0)
    eval_samples: int = ranged(500, ge=1)
    samples_per_shard: int = ranged(500, ge=1)
    pretrain_sources: list[SourceConfig] = field(default_factory=list)
    finetune_sources: list[SourceConfig] = field(default_factory=list)
    shuffle_buffer: int = ranged(256, ge=0, note="0 = no local shuffle")
    # Preprocess every training sample once, before the first step, and keep the result in Ray's object store
    # for all epochs (steps then never share the CPU with preprocessing); false streams shards through the
    # preprocessing actors while training runs (for corpora larger than the object store).
    preprocess_ahead: bool = True
    preprocess_batch_size: int = ranged(64, ge=1)
    preprocess_cpus: float = ranged(0.25, gt=0)
    max_bad_fraction: float = ranged(0.01, ge=0, lt=1)
    storage: StorageConfig = field(default_factory=StorageConfig)


#: What each stage trains by default (a stage's ``train_*`` fields start from its row): the one table.
STAGE_TRAINABLE: dict[str, tuple[bool, bool, bool]] = {
    # stage       vision  projector  llm
    "pretrain": (False, True, False),
    "finetune": (False, True, True),
}


@dataclass
class TrainConfig:
    """One training stage (pretrain or finetune) on Ray Train + DeepSpeed."""

    stage: str = chosen("pretrain", ("pretrain", "finetune"))
    template: str = "plain"
    train_vision: bool = STAGE_TRAINABLE["pretrain"][0]
    train_projector: bool = STAGE_TRAINABLE["pretrain"][1]
    train_llm: bool = STAGE_TRAINABLE["pretrain"][2]
    lr: float = ranged(1e-3, gt=0)
    projector_lr: float | None = ranged(None, gt=0, note="the projector's own lr (LLaVA's mm_projector_lr); null = lr")
    weight_decay: float = ranged(0.0, ge=0)
    warmup_ratio: float = ranged(0.03, ge=0, lt=1)
    schedule: str = chosen("cosine", ("cosine", "linear", "constant"))
    min_lr_ratio: float = ranged(0.0, ge=0, le=1)
    betas: list[float] = ranged(factory=lambda: [0.9, 0.999], ge=0, lt=1)
    micro_batch_size: int = ranged(16, ge=1)
    global_batch_size: int = ranged(32, ge=1)
    grad_clip: float = ranged(1.0, ge=0, note="0 = no clipping")
    gradient_checkpointing: bool = False
    epochs: int = ranged(1, ge=1)
    max_steps: int | None = ranged(None, ge=1)
    samples_per_epoch: int | None = ranged(None, ge=1)
    # 0 = off; K > 0: samples are sorted by length within windows of K micro-batches and each window's micro-batches
    # are trained in a seeded random order (LLaVA's group_by_length): less padding per step
    group_by_length: int = ranged(0, ge=0)
    num_workers: int = ranged(2, ge=1)
    cpus_per_worker: float = ranged(0.5, gt=0)
    torch_threads: int = ranged(0, ge=0)  # intra-op threads per worker; 0 = the node's cores split among its workers
    use_gpu: bool = False
    precision: str = chosen("auto", ("auto", "fp32", "bf16", "fp16"))  # auto = bf16 on GPU, fp32 on CPU
    deepspeed: str = "zero2"  # file name under conf/deepspeed/ (its contents become deepspeed_config)
    # The ZeRO settings, filled at compose time from conf/deepspeed/<deepspeed>.yaml (entries set here are merged
    # on top); batch sizes, precision and clipping are added from this section (deco_core.config_deepspeed)
    deepspeed_config: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = ranged(50, ge=1)
    num_to_keep: int = ranged(2, ge=1)
    max_failures: int = ranged(0, ge=-1, note="-1 = retry without limit")
    seed: int = ranged(0, ge=0)
    log_every: int = ranged(5, ge=1)
    init_from: str | None = None  # URI of an exported model to start from
    output_uri: str | None = None  # where the exported model goes (default: <run root>/<stage>/model)

    def grad_accum_steps(self, world_size: int | None = None) -> int:
        """Micro-batches accumulated per optimizer step (see `grad_accum_steps`); ``world_size`` defaults to
        ``num_workers``."""
        return grad_accum_steps(self.global_batch_size, self.micro_batch_size, world_size or self.num_workers)


def grad_accum_steps(global_batch: int, micro_batch: int, world_size: int) -> int:
    """The global-batch rule, global = micro × accumulation × workers (the data-parallel world size): the
    accumulation steps, or ValueError naming the numbers when ``global_batch`` is not a positive multiple of
    micro × workers."""
    per_step = micro_batch * world_size
    if per_step <= 0 or global_batch < per_step or global_batch % per_step:
        raise ValueError(f"global_batch_size={global_batch} is not a positive multiple of micro_batch_size × "
                         f"workers = {micro_batch} × {world_size} = {per_step} (global = micro × accumulation × "
                         "workers)")
    return global_batch // per_step


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["shapes-vqa", "shapes-pope", "shapes-mc", "shapes-rec"])
    max_new_tokens: int = ranged(16, ge=1)
    batch_size: int = ranged(32, ge=1)
    num_actors: int = ranged(1, ge=1)
    cpus_per_actor: float = ranged(1.0, gt=0)
    limit: int | None = ranged(None, ge=1)
    worst_cases: int = ranged(8, ge=0)
    data: dict[str, str] = field(default_factory=dict)  # task -> shard URI (public benchmarks converted to shards)
    seed: int = ranged(1234, ge=0)  # ShapesWorld eval set seed (a frozen eval set: same seed -> same questions)
    blind_baseline: bool = True  # also answer every question shown a blank image (doubles generation)


@dataclass
class AnalysisConfig:
    num_samples: int = ranged(16, ge=1)
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
    num_cpus: int | None = ranged(4, ge=1)  # logical CPUs for a local Ray (see README: 2-core plan)
    object_store_memory_mb: int = ranged(512, ge=0, note="0 = Ray's default size")
    runtime_env: dict[str, Any] = field(default_factory=dict)
    # Console level of Ray Train's and (local Ray) Ray Data's own log lines: their INFO lines (worker group
    # start-up, dataset execution plans) repeat for every stage; WARNING keeps the console to what matters.
    log_level: str = chosen("WARNING", ("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass
class PipelineConfig:
    name: str = "tiny"
    root: str = "runs/tiny"
    stages: list[str] = field(
        default_factory=lambda: ["prepare_data", "pretrain", "finetune", "evaluate", "analyze", "register"]
    )
    # Consecutive training stages (pretrain, then finetune) run on one Ray Train worker group, one fit(), when
    # their worker layouts match (deco_core/train/session.py): the controller start, worker spawn and imports are
    # paid once per workflow, not per stage. false: one fit() per stage. Needs data.preprocess_ahead.
    reuse_train_workers: bool = True
    # The training session's name; null: "<name>-training". Workflows run one after another in one process that
    # name the same session and the same train_storage share its worker group while a caller holds it open
    # (deco_core.train.session.hold_sessions; `make reproduce` does, for every cell of its grid).
    train_session: str | None = None
    # Where Ray Train persists the training stages' checkpoints (a path or s3://...); null: <root>/ray.
    train_storage: str | None = None


@dataclass
class RetrainConfig:
    """Scheduled retraining (pipelines/ops/retrain.py): how a fresh challenger is trained and judged.

    ``metric`` is any flat eval metric key; the challenger is promoted iff it beats the champion by at least
    ``margin`` in the direction of ``higher_is_better``. ``init``: ``champion`` finetunes from the current
    champion's export, ``scratch`` runs pretrain + finetune from scratch. Fresh data per round:
    ``data.shapes.seed + data_seed_offset × round`` (round = 1 + versions already registered; 0 = same data).
    """

    metric: str = "eval/group/localization"
    margin: float = ranged(0.01, ge=0)
    init: str = chosen("champion", ("champion", "scratch"))
    data_seed_offset: int = ranged(1, ge=0)
    higher_is_better: bool = True


@dataclass
class Config:
    """The whole resolved configuration of a run."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(stage="finetune", template="vicuna_v1", lr=2e-5, **dict(zip(
            ("train_vision", "train_projector", "train_llm"), STAGE_TRAINABLE["finetune"], strict=True)))
    )
    eval: EvalConfig = field(default_factory=EvalConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)


# Ranges of the sections whose dataclasses live beside their code (fields in declaration order).
# fmt: off
SECTION_RANGES: dict[type, dict[str, Range]] = {
    ProjectorConfig: {
        "num_tokens":      Range(ge=1),
        "mlp_depth":       Range(ge=1),
        "qformer_depth":   Range(ge=1),
        "qformer_width":   Range(ge=1),
        "qformer_heads":   Range(ge=1),
        "resampler_width": Range(ge=1),
        "resampler_heads": Range(ge=1),
        "cabs_depth":      Range(ge=0),
        "dropout":         Range(ge=0, lt=1),
    },
    ShapesConfig: {
        "image_size":               Range(ge=24),
        "min_objects":              Range(ge=1, le=9, note="one object per cell of a 3×3 grid"),
        "max_objects":              Range(ge=1, le=9, note="one object per cell of a 3×3 grid"),
        "seed":                     Range(ge=0),
        "small_frac":               Range(gt=0, lt=1),
        "large_frac":               Range(gt=0, lt=1),
        "colour_jitter":            Range(ge=0),
        "background_grey":          Range(ge=0, le=255),
        "background_tint":          Range(ge=0),
        "popularity_skew":          Range(ge=0),
        "coord_step":               Range(gt=0, le=1),
        "spatial_prob":             Range(ge=0, le=1),
        "short_answer_suffix_prob": Range(ge=0, le=1),
        "min_turns":                Range(ge=1),
        "max_turns":                Range(ge=1),
    },
    StorageConfig: {
        "retries":           Range(ge=0),
        "backoff_s":         Range(ge=0),
        "connect_timeout_s": Range(gt=0),
        "read_timeout_s":    Range(gt=0),
    },
}
# fmt: on
