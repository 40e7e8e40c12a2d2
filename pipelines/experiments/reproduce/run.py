"""``make reproduce`` / ``python -m pipelines.experiments.reproduce [--smoke] [--config conf/reproduce/full.yaml]``:
the paper's projector comparison in miniature. Every (projector, M, seed) of the grid runs the workflow
(pretrain -> finetune -> evaluate -> analyze) under ``<out>/<projector>-<M>-s<seed>`` on one shared, once-prepared
corpus and one frozen eval set; every run trains on one Ray Train worker group (the grid holds one training
session open, so no run pays the worker start and imports again). The tables (mean ± 95 % interval over seeds,
and a verdict per paper claim from the DeCo-minus-compressive deltas paired by seed) and the convergence plot are
built from those measured runs only and written as ``reproduce.json`` / ``reproduce.md`` / ``convergence.png``,
and logged to MLflow (experiment ``deco-reproduce``)."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from deco_core.config import (
    CONF_DIR,
    Config,
    ConfigError,
    SourceConfig,
    TrackingConfig,
    compose,
    load_structured,
    validate,
)
from deco_core.tracking import resolve_tracking_uri

log = logging.getLogger(__name__)
_console = Console(markup=False, highlight=False)  # CLI output of `python -m ...`
EXPERIMENT = "deco-reproduce"
SESSION = "reproduce-training"  # the grid's one training session (every run trains on its worker group)
SMOKE_CONFIG = CONF_DIR / "reproduce" / "smoke.yaml"
FULL_CONFIG = CONF_DIR / "reproduce" / "full.yaml"


@dataclass
class ReproduceConfig:
    """The grid and its budget (conf/reproduce/*.yaml)."""

    base: str = "pipeline/tiny"
    projectors: list[str] = field(default_factory=lambda: ["deco", "deco_max", "qformer", "resampler", "c-abstractor"])
    tokens: list[int] = field(default_factory=lambda: [16])
    reference: str | None = "mlp"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # >= 2 for an interval, >= 3 for a useful one
    pretrain_steps: int = 60
    finetune_steps: int = 200
    pretrain_log_every: int = 2
    finetune_log_every: int = 5
    caption_samples: int = 4000
    instruct_samples: int = 8000
    format_samples: int = 4000
    eval_samples: int = 500
    analysis_samples: int = 8
    max_length: int = 336
    pretrain_loss_threshold: float | None = None
    finetune_loss_threshold: float | None = None
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunSpec:
    """One cell of the grid."""

    projector: str
    tokens: int | None  # None: the reference keeps every patch
    seed: int

    @property
    def config_name(self) -> str:
        return f"{self.projector}-{self.tokens or 'all'}"

    @property
    def name(self) -> str:
        return f"{self.config_name}-s{self.seed}"


@dataclass
class SharedData:
    """Shard folders every run reads: the training mixtures as (uri, weight) and the frozen eval set."""

    pretrain: list[tuple[str, float]]
    finetune: list[tuple[str, float]]
    eval: dict[str, str]
    samples: dict[str, int]


def load_reproduce_config(path: str | Path) -> ReproduceConfig:
    """YAML -> validated ReproduceConfig; unknown keys, bad types and unknown projectors raise ConfigError."""
    rc: ReproduceConfig = load_structured(path, ReproduceConfig, "reproduce")
    valid = sorted(p.stem for p in (CONF_DIR / "projector").glob("*.yaml"))
    for name in [*rc.projectors, *([rc.reference] if rc.reference else [])]:
        if name not in valid:
            raise ConfigError(f"{path}: projector {name!r} has no conf/projector file; valid: {', '.join(valid)}")
    if not rc.seeds or not rc.projectors or not rc.tokens:
        raise ConfigError(f"{path}: projectors, tokens and seeds must each list at least one value")
    if min(rc.pretrain_steps, rc.finetune_steps, rc.eval_samples, rc.analysis_samples) < 1:
        raise ConfigError(f"{path}: steps, eval_samples and analysis_samples must be >= 1")
    return rc


def grid(rc: ReproduceConfig) -> list[RunSpec]:
    """Compressive projectors × tokens × seeds, then the reference × seeds."""
    runs = [RunSpec(p, m, s) for m in rc.tokens for p in rc.projectors for s in rc.seeds]
    if rc.reference:
        runs += [RunSpec(rc.reference, None, s) for s in rc.seeds]
    return runs


def common_overrides(rc: ReproduceConfig, out: Path, root: Path, tracking_uri: str) -> list[str]:
    """Overrides shared by the data preparation and every run (same data config -> same corpus). Every run of
    the grid under ``out`` names one training session and one checkpoint store, so that the grid trains on one
    Ray Train worker group (``hold_sessions`` in ``run_reproduce``)."""
    return [f"pipeline.root={root}", f"tracking.experiment={EXPERIMENT}", f"tracking.tracking_uri={tracking_uri}",
            f"data.caption_samples={rc.caption_samples}", f"data.instruct_samples={rc.instruct_samples}",
            f"data.format_samples={rc.format_samples}",
            f"data.eval_samples={rc.eval_samples}", f"model.tokenizer.max_length={rc.max_length}",
            "tracking.system_metrics=false", f"pipeline.train_session={SESSION}",
            f"pipeline.train_storage={out / 'ray'}", *rc.overrides]


def prepare_shared(rc: ReproduceConfig, out: Path, tracking_uri: str) -> SharedData:
    """Run ``prepare_data`` once under ``<out>/shared`` and build the frozen eval shards beside it.

    The training mixtures are the ones the workflow would use on its own prepared shards (``train_sources``).
    """
    from deco_core.eval.eval_sets import eval_data
    from deco_core.train.sources import train_sources
    from pipelines.workflow.runner import Workflow

    cfg = compose(rc.base, [*common_overrides(rc, out, out / "shared", tracking_uri), "pipeline.name=reproduce-data",
                            "pipeline.stages=[prepare_data]"])
    outputs = Workflow(cfg).run()[0].outputs
    samples = {k: int(v) for k, v in outputs.items() if k.endswith("_samples")}
    return SharedData(train_sources(cfg, "pretrain", outputs)[0], train_sources(cfg, "finetune", outputs)[0],
                      eval_data(cfg), samples)


def run_config(rc: ReproduceConfig, spec: RunSpec, shared: SharedData, out: Path, tracking_uri: str) -> Config:
    """The full pipeline config of one grid cell: projector/M/seed and the shared data and eval set."""
    stages = ["prepare_data", "pretrain", "finetune", "evaluate", "analyze"]
    overrides = [
        *common_overrides(rc, out, out / spec.name, tracking_uri), f"model.projector={spec.projector}",
        f"pipeline.name={spec.name}", f"pipeline.stages=[{','.join(stages)}]", f"model.seed={spec.seed}",
        f"analysis.num_samples={rc.analysis_samples}",
    ]
    for stage, steps, every in (("pretrain", rc.pretrain_steps, rc.pretrain_log_every),
                                ("finetune", rc.finetune_steps, rc.finetune_log_every)):
        overrides += [f"{stage}.max_steps={steps}", f"{stage}.log_every={every}", f"{stage}.seed={spec.seed}",
                      f"{stage}.checkpoint_every={steps}"]
    if spec.tokens is not None:
        overrides.append(f"model.projector.num_tokens={spec.tokens}")
    cfg = compose(rc.base, overrides)
    cfg.data.pretrain_sources = [SourceConfig(uri, float(w)) for uri, w in shared.pretrain]
    cfg.data.finetune_sources = [SourceConfig(uri, float(w)) for uri, w in shared.finetune]
    cfg.eval.data = dict(shared.eval)
    validate(cfg)
    return cfg


def run_one(rc: ReproduceConfig, spec: RunSpec, shared: SharedData, out: Path, tracking_uri: str,
            tokenizer) -> dict[str, Any]:
    """Run (or reuse, when the fingerprints match) one grid cell's workflow and collect its measurements."""
    from pipelines.experiments.reproduce.report import collect_run
    from pipelines.workflow.runner import Workflow

    cfg = run_config(rc, spec, shared, out, tracking_uri)
    workflow = Workflow(cfg)
    log.info("reproduce: run %s under %s", spec.name, cfg.pipeline.root)
    workflow.run()
    state = workflow.load_state()["stages"]
    return collect_run(cfg, asdict(spec) | {"name": spec.name, "config": spec.config_name}, state, tracking_uri,
                       tokenizer)


def run_reproduce(config: str | Path, out: Path) -> dict[str, Any]:
    """Run the grid, then write reproduce.json / reproduce.md / convergence.png and log them to MLflow."""
    import ray

    from deco_core.model.tokenizer import load_tokenizer
    from deco_core.train.data_cache import hold_preprocessed
    from deco_core.train.session import hold_sessions
    from pipelines.experiments.reproduce.report import summarise, write_outputs
    from pipelines.ops.runtime import ensure_ray

    rc = load_reproduce_config(config)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(TrackingConfig(), out)
    own_ray = not ray.is_initialized()
    started = time.time()
    runs, failed = [], []
    try:
        shared = prepare_shared(rc, out, tracking_uri)
        base = compose(rc.base, common_overrides(rc, out, out, tracking_uri))
        ensure_ray(base)  # before the grid, so that no run's wall time pays for starting Ray
        tokenizer = load_tokenizer(base.model.tokenizer, base.model.trust_remote_code, base.model.seed)
        cells = grid(rc)
        grid_started = time.time()
        # every run trains on the worker group the first one starts, and the runs at one M share their
        # preprocessed pretrain / finetune rows (same shards, tokenizer, image tokens and max length)
        with hold_sessions(), hold_preprocessed():
            for i, spec in enumerate(cells, 1):
                try:
                    runs.append(run_one(rc, spec, shared, out, tracking_uri, tokenizer))
                except Exception as exc:  # one failing projector must not hide the others' measurements
                    log.exception("reproduce: run %s failed", spec.name)
                    failed.append({"name": spec.name, "error": f"{type(exc).__name__}: {exc}"[:500]})
                elapsed = time.time() - grid_started
                log.info("reproduce: %d/%d runs done (%d failed), %.1f min elapsed, about %.1f min left", i,
                         len(cells), len(failed), elapsed / 60, elapsed / i * (len(cells) - i) / 60)
    finally:
        if own_ray and ray.is_initialized():
            ray.shutdown()
    if not runs:
        raise RuntimeError(f"reproduce: every run failed: {failed}")
    default = compose(rc.base)
    summary = summarise(rc, runs, failed, {**asdict(shared), "default_steps": {
        "pretrain": default.pretrain.max_steps, "finetune": default.finetune.max_steps}}, time.time() - started)
    write_outputs(summary, out, tracking_uri, EXPERIMENT)
    if failed:
        raise RuntimeError(f"reproduce: {len(failed)} run(s) failed (tables cover the rest): {failed}")
    return summary


def main(argv: list[str] | None = None) -> None:
    from deco_core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments.reproduce", description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=FULL_CONFIG, help="grid file (conf/reproduce/*.yaml)")
    parser.add_argument("--smoke", action="store_true", help=f"the CI grid ({SMOKE_CONFIG.name}): 2 projectors, 1 seed")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/reproduce, runs/reproduce/smoke with --smoke)")
    args = parser.parse_args(argv)
    setup_logging()
    config = SMOKE_CONFIG if args.smoke else args.config
    out = args.out or Path("runs/reproduce/smoke" if args.smoke else "runs/reproduce")
    summary = run_reproduce(config, out)
    _console.print((out / "reproduce.md").read_text())
    _console.print(f"grid of {len(summary['runs'])} runs in {summary['wall_s']:.0f}s; outputs in {out}")


if __name__ == "__main__":
    main()
