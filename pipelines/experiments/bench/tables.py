"""Markdown for ``bench.run``: one section per benchmark, each figure beside the baseline measured in the
same run, plus the method notes (FLOP formula, what is timed, how memory is sampled)."""

from __future__ import annotations

from typing import Any

from pipelines.workflow.summary import fmt, markdown_table

FLOP_NOTE = (
    "FLOPs per optimizer step (batch B × padded length T, n_img images, N=144 patches, M visual tokens): "
    "LLM (trained) 6·P_llm·B·T + 12·L·B·T²·d (P_llm = Linear weights incl. lm_head, attention QKᵀ and AV over "
    "the full T², ×3 for backward); projector MLP 6·P_proj·n_img·M (pooling precedes the MLP, N·d_v adds ignored); "
    "vision tower frozen, forward only: 2·P_vis·n_img·(N+1) + 4·L_v·n_img·(N+1)²·d_v (identical for both)."
)


def _g(flops: float) -> float:
    return flops / 1e9


def _section_a(a: dict[str, Any]) -> list[str]:
    return [
        "## (a) DecoModel vs transformers' LlavaForConditionalGeneration",
        f"Projector `mlp` (all 144 patches), identical weights, one batch of {a['batch']} captions × {a['seq_len']} "
        f"tokens, vision tower frozen in both; forward + backward, median of {a['repeats']} interleaved repeats.",
        "",
        markdown_table(["figure", "DecoModel", "LLaVA (baseline)", "DecoModel / LLaVA"],
                       [["forward+backward (s)", a["deco_fwd_bwd_s"], a["llava_fwd_bwd_s"],
                         a["ratio_deco_over_llava"]]]),
        "", f"Loss difference on the same batch: {fmt(a['loss_abs_diff'], 2)} (parity check).", "",
    ]


def _section_b(b: dict[str, Any]) -> list[str]:
    deco_key, mlp_key = [k for k, v in b.items() if isinstance(v, dict)]
    d, m = b[deco_key], b[mlp_key]

    def row(label: str, dv: float, mv: float) -> list[Any]:
        return [label, dv, mv, mv / dv]

    rows = [
        row("visual tokens", d["visual_tokens"], m["visual_tokens"]),
        row("padded sequence length T", d["flops"]["seq_len"], m["flops"]["seq_len"]),
        row("trainable parameters", d["trainable_params"], m["trainable_params"]),
        row("**training step time (s)**", d["step_s"], m["step_s"]),
        row("**analytic FLOPs (GFLOP)**", _g(d["flops"]["total"]), _g(m["flops"]["total"])),
        row("  of which LLM (GFLOP)", _g(d["flops"]["llm"]), _g(m["flops"]["llm"])),
        row("  of which projector (GFLOP)", _g(d["flops"]["projector"]), _g(m["flops"]["projector"])),
        row("  of which vision (GFLOP)", _g(d["flops"]["vision"]), _g(m["flops"]["vision"])),
    ]
    return [
        f"## (b) DeCo ({deco_key}) vs MLP with all patches ({mlp_key}): step time next to FLOPs",
        f"One AdamW step (finetune freeze: projector + LLM train), same instruction samples, median of "
        f"{b['repeats']} interleaved repeats. Time ratio **{fmt(b['time_ratio_mlp_over_deco'])}** vs FLOP ratio "
        f"**{fmt(b['flop_ratio_mlp_over_deco'])}**.",
        "", markdown_table(["figure", "DeCo", "MLP (baseline)", "MLP / DeCo"], rows), "", FLOP_NOTE, "",
    ]


def _section_c(c: dict[str, Any]) -> list[str]:
    r, s, cores = c["ray_data"], c["single_process"], c["cores"]
    rows = [
        ["samples/s, overall (incl. actor start)", r["samples_per_s"], s["samples_per_s"], c["speedup"]],
        ["samples/s, steady (after first batch)", r["steady_samples_per_s"], s["samples_per_s"], c["steady_speedup"]],
        [f"samples/s per core ({cores} cores)", r["samples_per_s"] / cores, s["samples_per_s"],
         c["per_core_efficiency"]],
        ["seconds for all samples", r["seconds"], s["seconds"], s["seconds"] / r["seconds"]],
    ]
    paths = {"tasks": "Ray tasks of 1 CPU (the preprocess-ahead path)",
             "actor_pool": f"a streaming pool of actors of {c['preprocess_cpus_per_actor']} CPU"}
    other = c.get("ray_data_actor_pool") or c.get("ray_data_tasks")
    other_line = ([f"The other path, {paths[other['path']]}: first batch after {fmt(other['first_batch_s'], 2)} s, "
                   f"{fmt(other['samples_per_s'], 1)} samples/s overall, {fmt(other['steady_samples_per_s'], 1)} "
                   "after the first batch.", ""] if other else [])
    return [
        "## (c) Ray Data preprocessing vs the single-process floor",
        f"{s['samples']} instruction samples (read, decode, transform, template, tokenise, pad). Ray: local, "
        f"{fmt(c['ray_logical_cpus'], 0)} logical CPUs on {cores} cores, "
        f"{paths[r.get('path', 'actor_pool')]}; first batch after {fmt(r['first_batch_s'], 2)} s. "
        "Single process: `iter_samples` + `preprocess_rows`.",
        "", markdown_table(["figure", "Ray Data", "single process (baseline)", "ratio"], rows), "",
        *other_line,
    ]


def _section_d_e(t: dict[str, Any], mfu: dict[str, Any]) -> list[str]:
    w, peak = t["data_wait"], mfu["peak"]
    mfu_rows = [[k, _g(v["achieved_flops_per_s"]), _g(peak["peak_flops_per_s"]), v["mfu"]]
                for k, v in mfu.items() if k != "peak"]
    return [
        "## (d) Trainer data wait",
        f"A {t['steps']}-step finetune-policy stage on Ray Train + DeepSpeed "
        f"({t.get('layout', {}).get('workers', 2)} worker(s), logging every step), read "
        f"back from MLflow (`train/data_wait_frac`).",
        "",
        markdown_table(["figure", "value"], [
            ["data-wait fraction, mean over steps", w["mean_frac"]],
            ["data-wait fraction, steady (steps ≥ 2)", w["steady_frac"]],
            ["data-wait fraction, first step", w["first_step_frac"]],
            ["trainer samples/s, steady", t["throughput"]["steady_samples_per_s"]],
            ["trainer step time (s), steady", t["throughput"]["steady_step_s"]],
        ]),
        "",
        "## (e) Model FLOP utilisation",
        f"Achieved = analytic FLOPs of (b) / measured step time; peak = best of {peak['size']}² fp32 matmuls on "
        f"{peak['threads']} torch threads (the threads of (b)), measured in this run.",
        "", markdown_table(["model", "achieved GFLOP/s", "matmul peak GFLOP/s (baseline)", "MFU"], mfu_rows), "",
    ]


def _section_f_g(cold: dict[str, Any], mem: dict[str, Any]) -> list[str]:
    rows = [["driver, single-process parts (a, b, e)", 1, mem["driver_single_process_maxrss_mb"], "ru_maxrss"]]
    for kind, v in mem["workers"].items():
        rows.append([kind.replace("_", " ") + "s", int(v["processes"]), v["peak_rss_mb_max"],
                     f"mean {fmt(v['peak_rss_mb_mean'], 1)} MiB"])
    return [
        "## (f) Cold start to the first training step",
        "From the `run_stage` call to the MLflow timestamp of step 1's metrics (so it includes step 1); train "
        "workers are 'up' when their process first appears.",
        "",
        markdown_table(["phase", "seconds"], [
            ["stage call → train worker processes up", cold["to_train_workers_s"]],
            ["workers up → step 1 logged", cold["workers_to_first_step_s"]],
            ["**stage call → step 1 logged**", cold["to_first_step_s"]],
            ["step 1 itself (`train/step_time_s`)", cold["first_step_s"]],
        ]),
        "",
        "## (g) Peak memory per process",
        "Driver: `resource.getrusage(RUSAGE_SELF).ru_maxrss`. Workers: peak RSS of each Ray worker process "
        "descended from the driver, sampled with psutil every 0.2 s during (d) (short spikes can be missed); "
        "count = worker processes seen, restarted ones included.",
        "", markdown_table(["process", "count", "peak RSS (MiB)", "note"], rows), "",
    ]


def _section_h_i(floor: dict[str, Any], over: dict[str, Any]) -> list[str]:
    lay, other = floor["layout"], floor["other_layout"]
    rows = [
        [f"Ray Train + DeepSpeed {lay['zero']}, {lay['workers']} worker(s) × {lay['threads_per_worker']} thread(s) "
         "(the tiny default)", floor["ray_step_s"], floor["single_process_step_s"], floor["ratio"]],
        [f"Ray Train + DeepSpeed {other['layout']['zero']}, {other['layout']['workers']} worker(s) × "
         f"{other['layout']['threads_per_worker']} thread(s)", other["ray_step_s"], floor["single_process_step_s"],
         other["ratio"]],
    ]
    stages = over["stages"]
    own = over.get("own_fit", {"phases": {}, "fixed_s": float("nan")})
    phase_rows = [[name, *(stages[k]["phases"].get(name, float("nan")) for k in ("pretrain", "finetune")),
                   over["phases"][name], own["phases"].get(name, float("nan"))] for name in over["phases"]]
    phase_rows.append(["**fixed cost** (wall − steps × steady step)", stages["pretrain"]["fixed_s"],
                       stages["finetune"]["fixed_s"], over["fixed_s"], own["fixed_s"]])
    ray_line = (f" Starting Ray itself took {fmt(over['ray_start_s'], 1)} s, paid once per workflow (before the "
                "first stage), not per stage." if "ray_start_s" in over else "")
    return [
        "## (h) Trainer step vs the plain-process floor",
        f"Steady finetune step (median of `train/step_time_s` after 2 steps, global batch {floor['global_batch']}) "
        f"against the same model, freeze policy, AdamW + clipping and batch in one plain process with "
        f"{floor['threads']} torch threads (median of {floor['single_process_repeats']} steps, measured before and "
        "after the Ray runs).",
        "", markdown_table(["trainer", "step (s)", "plain process (s, baseline)", "ratio"], rows), "",
        "## (i) Fixed cost per training stage",
        "Where a stage's time goes apart from its steps (driver and worker wall-clock marks, `deco_core/train/"
        "trainer.py` PHASES). Pretrain then finetune run as the workflow runs them, on one Ray Train worker group "
        "(a training session, `deco_core/train/session.py`): the second stage pays no controller start, process "
        "spawn or imports. Baseline: a finetune stage on a worker group of its own (one `fit()` per stage, "
        f"`pipeline.reuse_train_workers=false`).{ray_line}",
        "", markdown_table(["phase", "pretrain (s)", "finetune (s)", "median (s)", "own fit() (s, baseline)"],
                           phase_rows), "",
    ]


def bench_markdown(res: dict[str, Any]) -> str:
    """The whole ``bench.md``."""
    meta = res["meta"]
    head = [
        "# DeCo pipeline benchmark (tiny scale)", "",
        f"Measured {meta['measured_at']} on {meta['cores']} CPU cores (torch {meta['torch']}, "
        f"{meta['torch_threads']} torch thread(s) for the single-process parts, as each Ray Train worker runs)"
        f"{', --quick sizes' if meta['quick'] else ''}; total {fmt(meta['total_s'], 0)} s. "
        f"Every figure sits beside its baseline, measured in the same run. MLflow run `{meta['mlflow_run_id']}`.", "",
    ]
    body = (_section_a(res["hf_parity"]) + _section_b(res["compression"]) + _section_c(res["data_pipeline"])
            + _section_d_e(res["trainer"], res["mfu"]) + _section_f_g(res["cold_start"], res["memory"])
            + (_section_h_i(res["trainer_floor"], res["stage_overhead"]) if "trainer_floor" in res else []))
    return "\n".join(head + body) + "\n"
