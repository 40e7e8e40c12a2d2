"""``make bench`` / ``python -m pipelines.experiments.bench [--quick] [--out runs/bench]``: the pipeline's
performance numbers,
each beside a baseline measured in the same run — (a) DecoModel vs transformers' LLaVA, (b) DeCo-M16 vs the
144-token MLP (time vs FLOPs), (c) Ray Data vs the single-process floor, (d) trainer data wait, (e) MFU against a
matmul peak, (f) cold start, (g) peak memory. Writes ``bench.json`` + ``bench.md`` and logs both to MLflow
(experiment ``deco-bench``, sqlite store under the output folder unless MLFLOW_TRACKING_URI is set)."""

from __future__ import annotations

import argparse
import logging
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from deco_core.config import compose
from deco_core.data.corpus import build_shapes_corpus
from deco_core.model.tokenizer import load_tokenizer
from deco_core.tracking import get_or_create_run, resolve_tracking_uri
from deco_core.train.trainer import preprocess_spec
from pipelines.experiments.bench.data import available_cores, bench_data_pipeline
from pipelines.experiments.bench.model import bench_compression, bench_hf_parity, load_batch, matmul_peak
from pipelines.experiments.bench.report import check_complete, flatten_numbers, log_summary_run, write_json
from pipelines.experiments.bench.tables import bench_markdown

log = logging.getLogger(__name__)
_console = Console(markup=False, highlight=False)  # CLI output of `python -m ...`
EXPERIMENT = "deco-bench"
# Room for 144 patch tokens + the longest ShapesWorld instruction, so both projectors see the same samples
# (longer samples would be dropped, not truncated). The tiny default (192) fits 16-36 visual tokens only.
MAX_LENGTH = 336


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of one bench run."""

    caption_samples: int
    instruct_samples: int
    batch_size: int  # model benchmarks (a), (b)
    repeats: int  # timed repeats per model benchmark
    train_steps: int  # optimizer steps of the trainer run (d, f, g)
    floor_steps: int = 12  # plain-process steps per floor measurement (two measurements, before and after Ray)
    warmup: int = 2  # untimed calls before the timed repeats
    deco_tokens: int = 16


# fmt: off
SETTINGS = {
    "full":  BenchSettings(caption_samples=1024, instruct_samples=2048, batch_size=8, repeats=6, train_steps=40),
    "quick": BenchSettings(caption_samples=64,  instruct_samples=256,  batch_size=4, repeats=2, train_steps=5,
                           floor_steps=3, warmup=1),
}
# fmt: on


def _configs(out_dir: Path, s: BenchSettings, config: str, overrides: list[str]):
    base = [f"pipeline.root={out_dir}", f"tracking.experiment={EXPERIMENT}", f"data.root={out_dir / 'data'}",
            f"data.caption_samples={s.caption_samples}", f"data.instruct_samples={s.instruct_samples}",
            "data.samples_per_shard=128", "data.format_samples=32", f"model.tokenizer.max_length={MAX_LENGTH}",
            f"finetune.max_steps={s.train_steps}", "finetune.log_every=1",
            f"finetune.checkpoint_every={s.train_steps}", "finetune.init_from=null",
            f"pretrain.max_steps={s.train_steps}", "pretrain.log_every=1", f"pretrain.checkpoint_every={s.train_steps}",
            *overrides]
    main = compose(config, base)
    main.tracking.tracking_uri = resolve_tracking_uri(main.tracking, out_dir)
    deco = compose(config, [*base, "model.projector=deco", f"model.projector.num_tokens={s.deco_tokens}"])
    mlp = compose(config, [*base, "model.projector=mlp"])
    return main, deco, mlp


def _mfu(compression: dict[str, Any], peak: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"peak": peak}
    for key, value in compression.items():
        if isinstance(value, dict) and "achieved_flops_per_s" in value:
            out[key] = {"achieved_flops_per_s": value["achieved_flops_per_s"],
                        "mfu": value["achieved_flops_per_s"] / peak["peak_flops_per_s"]}
    return out


def _single_process(results: dict[str, Any], s: BenchSettings, cfg_deco, cfg_mlp, tokenizer, corpus,
                    threads: int) -> None:
    """(a), (b), (e) and the driver's peak RSS, in this process with ``threads`` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        caption_batch = load_batch(cfg_mlp, "plain", tokenizer, corpus.pretrain, s.batch_size)
        results["hf_parity"] = bench_hf_parity(cfg_mlp, tokenizer, caption_batch, s.repeats, s.warmup)
        results["compression"] = bench_compression({f"deco_m{s.deco_tokens}": cfg_deco, "mlp_n144": cfg_mlp},
                                                   tokenizer, corpus.finetune, s.batch_size, s.repeats, s.warmup)
        results["mfu"] = _mfu(results["compression"], matmul_peak(threads))
    finally:
        torch.set_num_threads(previous)
    results["memory"] = {"driver_single_process_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _floor(cfg, stage: str, tokenizer, batch, steps: int, threads: int) -> list[float]:
    from pipelines.experiments.bench.train import plain_step_times

    return plain_step_times(cfg, stage, tokenizer, batch, steps, threads)


def _on_ray(results: dict[str, Any], cfg, tokenizer, corpus, out_dir: Path, parent: str, s: BenchSettings) -> None:
    """(c), (d), (f), (h), (i) and the workers' peak RSS, on a local Ray (started here unless one is running).

    (h) the trainer floor: the tiny default's finetune step on Ray Train + DeepSpeed against the same step in this
    process (same model, freeze policy, global batch and total torch threads), the plain runs interleaved before
    and after the Ray runs; the 2-worker ZeRO-2 layout is measured beside it. (i) the per-stage fixed cost and its
    phases, for a pretrain and a finetune stage run as the workflow runs them (one training session), beside a
    finetune stage on a worker group of its own.
    """
    import ray

    from deco_core.train.session import close_sessions
    from pipelines.experiments.bench.train import bench_stage
    from pipelines.ops.runtime import ensure_ray

    own_ray = not ray.is_initialized()
    t0 = time.perf_counter()
    ensure_ray(cfg)
    ray_start = time.perf_counter() - t0 if own_ray else None
    t = cfg.finetune
    total_threads = t.num_workers * (t.torch_threads or max(1, available_cores() // t.num_workers))
    batch = load_batch(cfg, t.template, tokenizer, corpus.finetune, t.global_batch_size)
    try:
        spec = preprocess_spec(cfg, t.template, tokenizer)
        results["data_pipeline"] = bench_data_pipeline(corpus.finetune, spec, cfg, cfg.data.preprocess_batch_size)
        plain = _floor(cfg, "finetune", tokenizer, batch, s.floor_steps, total_threads)
        try:  # the workflow's way: both training stages on one worker group
            pretrain = bench_stage(cfg, "pretrain", corpus.pretrain, out_dir, parent, session="bench")
            finetune = bench_stage(cfg, "finetune", corpus.finetune, out_dir, parent, session="bench")
        finally:
            close_sessions()
        plain += _floor(cfg, "finetune", tokenizer, batch, s.floor_steps, total_threads)
        own_fit = bench_stage(cfg, "finetune", corpus.finetune, out_dir, parent, label="finetune-own-fit")
        other = bench_stage(_other_layout_config(cfg), "finetune", corpus.finetune, out_dir, parent,
                            label="finetune-other-layout")
    finally:
        if own_ray:
            ray.shutdown()
    floor = statistics.median(plain)
    results["trainer_floor"] = {
        "ray_step_s": finetune["throughput"]["steady_step_s"], "single_process_step_s": floor,
        "ratio": finetune["throughput"]["steady_step_s"] / floor, "global_batch": t.global_batch_size,
        "threads": total_threads, "layout": finetune["layout"], "single_process_repeats": len(plain),
        # the layout the tiny default did not choose, measured beside it: the choice stays checkable
        "other_layout": {"ray_step_s": other["throughput"]["steady_step_s"],
                         "ratio": other["throughput"]["steady_step_s"] / floor, "layout": other["layout"]},
    }
    stages = {"pretrain": pretrain, "finetune": finetune}
    phase_names = sorted(set(pretrain["phases"]) & set(finetune["phases"]))
    results["stage_overhead"] = {
        "fixed_s": statistics.median([pretrain["fixed_s"], finetune["fixed_s"]]),
        "phases": {k: statistics.median([pretrain["phases"][k], finetune["phases"][k]]) for k in phase_names},
        "stages": {k: {"wall_s": v["wall_s"], "steps": v["steps"], "fixed_s": v["fixed_s"],
                       "steady_step_s": v["throughput"]["steady_step_s"], "phases": v["phases"]}
                   for k, v in stages.items()},
        # the baseline: the finetune stage on a worker group of its own (pipeline.reuse_train_workers=false)
        "own_fit": {"fixed_s": own_fit["fixed_s"], "phases": own_fit["phases"]},
        **({"ray_start_s": ray_start} if ray_start is not None else {}),  # paid once per workflow, not per stage
    }
    pretrain.pop("memory"), other.pop("memory"), own_fit.pop("memory")
    results["memory"]["workers"] = finetune.pop("memory")
    results["cold_start"] = finetune.pop("cold_start")
    results["trainer"] = finetune


def _other_layout_config(cfg):
    """The finetune stage on the worker layout the config did not choose, at the same global batch and cores:
    2 Ray Train workers × the remaining threads (ZeRO-2 on gloo) when it runs one worker, else one worker."""
    from dataclasses import replace

    t = cfg.finetune
    workers = 2 if t.num_workers == 1 else 1
    micro = max(1, t.global_batch_size // workers)
    return replace(cfg, finetune=replace(t, num_workers=workers, micro_batch_size=micro,
                                         cpus_per_worker=1.0 / workers, torch_threads=0, deepspeed="zero2"))


def run_bench(out_dir: Path, quick: bool = False, config: str = "pipeline/tiny",
              overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every benchmark and write ``bench.json`` / ``bench.md`` under ``out_dir``; returns the results."""
    from mlflow import MlflowClient

    s = SETTINGS["quick" if quick else "full"]
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, cfg_deco, cfg_mlp = _configs(out_dir, s, config, list(overrides or []))
    # what each Ray Train worker of the tiny default runs with: (a), (b), (e) match it
    threads = cfg.finetune.torch_threads or max(1, available_cores() // cfg.finetune.num_workers)
    started = time.time()
    parent = get_or_create_run(cfg.tracking.tracking_uri, EXPERIMENT, f"bench-{time.strftime('%Y%m%d-%H%M%S')}",
                               out_dir, tags={"deco.kind": "bench", "deco.quick": str(quick)})
    results: dict[str, Any] = {"meta": {"quick": quick, "settings": asdict(s), "torch_threads": threads,
                                        "cores": available_cores(), "torch": torch.__version__,
                                        "mlflow_run_id": parent, "tracking_uri": cfg.tracking.tracking_uri,
                                        "measured_at": time.strftime("%Y-%m-%d %H:%M")}}
    try:
        corpus = build_shapes_corpus(cfg.data, root=str(out_dir / "data"), progress=False)
        tokenizer = load_tokenizer(cfg.model.tokenizer, cfg.model.trust_remote_code, cfg.model.seed)
        _single_process(results, s, cfg_deco, cfg_mlp, tokenizer, corpus, threads)
        _on_ray(results, cfg, tokenizer, corpus, out_dir, parent, s)
        results["meta"]["total_s"] = time.time() - started
        check_complete(results)
    except BaseException:
        MlflowClient(cfg.tracking.tracking_uri).set_terminated(parent, "FAILED")
        raise
    json_path = write_json(out_dir / "bench.json", results)
    md_path = out_dir / "bench.md"
    md_path.write_text(bench_markdown(results))
    log_summary_run(cfg.tracking.tracking_uri, EXPERIMENT, out_dir, "bench", {"quick": quick, **asdict(s)},
                    flatten_numbers({k: v for k, v in results.items() if k != "meta"}), [json_path, md_path],
                    run_id=parent)
    log.info("bench done in %.0fs: %s, %s", results["meta"]["total_s"], json_path, md_path)
    return results


def main(argv: list[str] | None = None) -> None:
    from deco_core.logs import setup_logging

    parser = argparse.ArgumentParser(prog="python -m pipelines.experiments.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="output folder (JSON, markdown, MLflow)")
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (about a minute of compute)")
    parser.add_argument("--config", default="pipeline/tiny", help="base pipeline config")
    parser.add_argument("overrides", nargs="*", help="config overrides key.path=value")
    args = parser.parse_args(argv)
    setup_logging()
    results = run_bench(args.out, args.quick, args.config, args.overrides)
    _console.print((args.out / "bench.md").read_text())
    _console.print(f"total {results['meta']['total_s']:.0f}s; JSON: {args.out / 'bench.json'}")


if __name__ == "__main__":
    main()
