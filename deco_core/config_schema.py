"""The typed configuration schema: one dataclass per section, with every default (attribute comments say what
each field means). Composition, overrides and validation live in ``deco_core.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deco_core.data.shapes import ShapesConfig
from deco_core.data.storage import StorageConfig
from deco_core.model.projectors import ProjectorConfig


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
    chat_template: str = "vicuna_v1"  # how generation prompts are written; the finetune stage sets its template


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
    format_mix: dict[str, float] = field(default_factory=lambda: {"vqa": 1.0, "pope": 1.0, "mc": 1.0, "rec": 1.0})
    eval_samples: int = 500
    samples_per_shard: int = 500
    pretrain_sources: list[SourceConfig] = field(default_factory=list)
    finetune_sources: list[SourceConfig] = field(default_factory=list)
    shuffle_buffer: int = 256
    # Preprocess every training sample once, before the first step, and keep the result in Ray's object store
    # for all epochs (steps then never share the CPU with preprocessing); false streams shards through the
    # preprocessing actors while training runs (for corpora larger than the object store).
    preprocess_ahead: bool = True
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
    torch_threads: int = 0  # intra-op threads per worker; 0 = the node's cores split among its workers
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
    blind_baseline: bool = True  # also answer every question shown a blank image (doubles generation)


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
    # Console level of Ray Train's and (local Ray) Ray Data's own log lines: their INFO lines (worker group
    # start-up, dataset execution plans) repeat for every stage; WARNING keeps the console to what matters.
    log_level: str = "WARNING"


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
