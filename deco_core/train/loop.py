"""``train_stage``: one training stage inside a Ray Train worker (``train_loop_per_worker`` for a worker group
of its own, ``session.py`` for one that serves several stages in turn).

build model -> explicit freeze -> DeepSpeed engine -> resume from the stage's latest verified Ray checkpoint
(``ray_checkpoint.py``) -> epochs
over the worker's sample stream (``stream.py``: a fixed, seeded order that a resume continues exactly) with
micro-batches, accumulation, clipping inside DeepSpeed -> periodic checkpoints from every rank through
``ray.train.report`` -> validation loss -> HF-format export (rank 0).
Step metrics reach tracking once a checkpoint covers them (``steplog.py``), so replayed steps are logged once.
Workers agree on batch availability every micro-step, so uneven shards can never hang a collective.
The driver hands each worker a ``LoopConfig``; the worker's running state is a ``WorkerContext``
(``loop_state.py``). The only test hook is ``faults.py`` (``DECO_TEST_FAIL_AT_STEP``, never in the schema).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch
import torch.distributed as dist

from deco_core.config import Config, TrainConfig, from_dict
from deco_core.data.ray_data import check_quality
from deco_core.data.transforms import ImageTransform
from deco_core.logs import setup_logging
from deco_core.model.deco import DecoModel
from deco_core.tracking import make_tracker
from deco_core.train.ahead import wait_training_data
from deco_core.train.checkpoint import consolidated_state_dict, export_model, load_init_model
from deco_core.train.deepspeed import build_engine
from deco_core.train.evaluation import mean_token_loss
from deco_core.train.fatal import is_non_retryable, read_fatal, record_fatal
from deco_core.train.faults import maybe_inject_fault
from deco_core.train.integrity import ResumeState
from deco_core.train.loop_state import LoopConfig, WorkerContext
from deco_core.train.progress import PhaseClock, find_board, process_started_at
from deco_core.train.ray_checkpoint import has_own_checkpoint, maybe_resume, save_and_report
from deco_core.train.steplog import CommittedMetrics, logged_through
from deco_core.train.stream import SampleLedger, SampleStream, collate_fn, derived_seed

log = logging.getLogger(__name__)


def build_stage_model(cfg: Config, stage: str, tokenizer: Any) -> DecoModel:
    """Fresh model (pretrain) or the previous stage's export (``init_from``), then the logged freeze step."""
    t: TrainConfig = getattr(cfg, stage)
    model = load_init_model(t.init_from) if t.init_from else DecoModel.from_config(cfg.model, tokenizer)
    model.freeze_for_stage(stage, t.train_vision, t.train_projector, t.train_llm)
    if t.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _all_have_batch(has: bool, device: torch.device) -> bool:
    flag = torch.tensor([1 if has else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _mean_across_ranks(value: float, device: torch.device) -> float:
    x = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(x)
    return float(x.item()) / dist.get_world_size()


def run_epoch(engine, t: TrainConfig, state: ResumeState, total_steps: int, stream: SampleStream,
              tracker: CommittedMetrics, ctx: WorkerContext) -> bool:
    """The rest of the epoch ``state.epoch`` (after the samples a checkpoint says were consumed); returns False
    when the epoch had no batch at all."""
    device = engine.device
    per_batch = t.micro_batch_size * ctx.world
    skipped = state.epoch_samples // per_batch
    batches = stream.epoch(state.epoch, skipped)
    stats = ctx.stats
    got_any = skipped > 0
    while state.step < total_steps:
        maybe_inject_fault(ctx.fault, state.step, ctx.rank, ctx.world)
        tw = time.perf_counter()
        batch = next(batches, None)
        stats.data_wait += time.perf_counter() - tw
        if "first_batch" not in ctx.clock.marks:
            ctx.clock.mark("first_batch")
        if not _all_have_batch(batch is not None, device):
            break
        got_any = True
        micro = state.epoch_samples // per_batch
        ctx.ledger.record(state.step + 1, state.epoch, micro, batch.pop("keys", None))
        torch.manual_seed(derived_seed(state.seed, state.epoch, micro, ctx.rank))  # same RNG when replayed
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = engine(**batch).loss
        engine.backward(loss)
        boundary = engine.is_gradient_accumulation_boundary()
        engine.step()
        state.epoch_samples += per_batch
        state.consumed_samples += per_batch
        stats.micro += 1
        stats.loss_sum += float(loss.detach())
        stats.samples += int(batch["input_ids"].shape[0])
        stats.tokens += int(batch["attention_mask"].sum())
        if not boundary:
            continue
        state.step += 1
        post_progress(ctx, state.step, total_steps, float(loss.detach()), t.global_batch_size)
        if state.step % t.log_every == 0 or state.step == total_steps:
            log_step(engine, t, state, total_steps, tracker, ctx)
        if state.step % t.checkpoint_every == 0 and state.step < total_steps:
            save_and_report(engine, state, {"loss": ctx.last_loss}, ctx.rank, ctx.run_name)
            tracker.commit()  # the steps up to here are covered by a checkpoint
    return got_any


def log_step(engine, t: TrainConfig, state: ResumeState, total_steps: int, tracker: CommittedMetrics,
             ctx: WorkerContext) -> None:
    """All ranks average the loss (a collective); rank 0 logs and holds the metrics until the next commit."""
    stats = ctx.stats
    device = engine.device
    loss = _mean_across_ranks(stats.loss_sum / max(1, stats.micro), device)
    elapsed = max(time.perf_counter() - stats.t0, 1e-9)
    steps = max(1, stats.micro // engine.gradient_accumulation_steps())
    grad_norm = engine.get_global_grad_norm()
    metrics = {
        "train/loss": loss,
        "train/lr": engine.get_lr()[0],
        "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "train/samples_per_s": stats.samples * ctx.world / elapsed,
        "train/tokens_per_s": stats.tokens * ctx.world / elapsed,
        "train/data_wait_frac": stats.data_wait / elapsed,
        "train/step_time_s": elapsed / steps,
        "train/epoch": float(state.epoch),
    }
    if ctx.rank == 0 and ctx.counter is not None:
        import ray

        metrics.update(check_quality(ray.get(ctx.counter.snapshot.remote()), ctx.max_bad_fraction))
    ctx.last_loss = loss
    ctx.history.append((state.step, loss))
    eta = (total_steps - state.step) * metrics["train/step_time_s"]
    # With a progress board the driver shows live progress; the per-step lines stay in the worker log (DEBUG).
    log.log(logging.DEBUG if ctx.board is not None else logging.INFO,
            "step %d/%d  loss %.4f  lr %.2e  %.1f samples/s  data-wait %.0f%%  eta %ds", state.step, total_steps,
            loss, metrics["train/lr"], metrics["train/samples_per_s"], 100 * metrics["train/data_wait_frac"], int(eta))
    tracker.add({k: v for k, v in metrics.items() if not math.isnan(v)}, step=state.step)
    stats.reset()


def post_progress(ctx: WorkerContext, step: int, total: int, loss: float, global_batch: int,
                  every_s: float = 0.5) -> None:
    """Rank 0 posts the live state to the driver's progress board at most every ``every_s`` seconds."""
    now = time.perf_counter()
    if ctx.board is None or (now - ctx.posted_at < every_s and step != total):
        return
    last_step, last_t = ctx.posted or (0, ctx.steps_t0)
    sps = (step - last_step) * global_batch / max(now - last_t, 1e-9)
    eta = (total - step) * (now - ctx.steps_t0) / max(step - ctx.start_step, 1)
    ctx.board.post.remote({"step": step, "total": total, "loss": loss, "samples_per_s": sps, "eta_s": eta})
    ctx.posted_at, ctx.posted = now, (step, now)


def torch_threads(t: TrainConfig, local_world_size: int) -> int:
    """Intra-op threads per worker: ``t.torch_threads``, else this node's cores split among its workers."""
    return t.torch_threads or max(1, (os.cpu_count() or 1) // max(1, local_world_size))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Entry point given to TorchTrainer; ``config`` is ``LoopConfig.to_dict()``, built by ``deco_core.train.trainer``."""
    import ray.train

    setup_logging(ray.train.get_context().get_world_rank())
    train_stage(LoopConfig.from_dict(config))


def train_stage(lc: LoopConfig, picked_at: float | None = None) -> dict[str, Any] | None:
    """Train one stage in this worker; returns the metrics of its final report (step, losses, phase marks), or
    None when an earlier attempt recorded an error a retry cannot fix (this attempt then does not train again,
    ``deco_core.train.fatal``). ``picked_at``: when a worker that
    already served a stage (``session.py``) took this one up; None in a fresh worker process."""
    import ray.train

    tctx = ray.train.get_context()
    rank = tctx.get_world_rank()
    if lc.fatal_uri and read_fatal(lc.fatal_uri, lc.storage) is not None:
        log.error("rank %d: an earlier attempt failed with an error a retry cannot fix; not training again", rank)
        return None
    try:
        return _train(lc, tctx, picked_at)
    except Exception as exc:
        if lc.fatal_uri and is_non_retryable(exc):
            record_fatal(lc.fatal_uri, exc, rank, lc.storage)
        raise


def _train(lc: LoopConfig, tctx, picked_at: float | None) -> dict[str, Any]:
    clock = PhaseClock()
    clock.marks["worker_process"] = process_started_at() if picked_at is None else picked_at
    clock.mark("worker_start")
    rank, world = tctx.get_world_rank(), tctx.get_world_size()
    cfg = from_dict(lc.cfg)
    t: TrainConfig = getattr(cfg, lc.stage)
    torch.set_num_threads(torch_threads(t, tctx.get_local_world_size()))
    model = build_stage_model(cfg, lc.stage, lc.tokenizer)
    clock.mark("model_built")
    transform = ImageTransform.from_vision_config(cfg.model.vision)
    stream, total = _stream(lc, t, rank, world, cfg.data.shuffle_buffer, transform)
    clock.mark("data_ready")
    if not has_own_checkpoint(lc.run_name):
        stream.prime(epoch=0)  # a fresh stage starts at epoch 0: its first batch loads while DeepSpeed starts
    engine = build_engine(model, t, world, t.use_gpu, total)
    state = maybe_resume(engine, ResumeState(seed=t.seed, world_size=world, shard_rows=stream.rows()), lc.run_name)
    clock.mark("engine_ready")
    tracker = make_tracker(rank, lc.tracking_uri, lc.run_id, lc.system_metrics)
    if state.step == 0:
        tracker.log_params(lc.cfg)
    committed = CommittedMetrics(tracker, logged_through(tracker) if state.step else 0)
    counter = find_board(lc.counter_name) if lc.counter_name else None
    if lc.counter_name and counter is None:
        log.warning("stage monitor %s not found; bad-sample metrics disabled", lc.counter_name)
    ctx = WorkerContext(rank=rank, world=world, clock=clock, transform=transform,
                        ledger=SampleLedger(lc.sample_log, rank), counter=counter,
                        board=find_board(lc.run_name) if rank == 0 else None,
                        max_bad_fraction=cfg.data.max_bad_fraction, fault=lc.fault, start_step=state.step,
                        run_name=lc.run_name)
    ctx.stats.reset()
    max_epochs = None if t.max_steps else t.epochs
    engine.train()
    while state.step < total and (max_epochs is None or state.epoch < max_epochs):
        if not run_epoch(engine, t, state, total, stream, committed, ctx):
            raise RuntimeError(f"stage {lc.stage}: the training data yielded no batch of {t.micro_batch_size}")
        if state.step < total:
            state.epoch, state.epoch_samples = state.epoch + 1, 0
    clock.mark("steps_done")
    return finish_stage(engine, model, state, committed, lc, ctx)


def _stream(lc: LoopConfig, t: TrainConfig, rank: int, world: int, shuffle_buffer: int,
            transform: ImageTransform) -> tuple[SampleStream, int]:
    """This rank's sample stream and the stage's step count: the fixed shard the driver posted after
    preprocessing ahead (exact replay; waits for the driver when it is not done yet), or the Ray Train split of
    the streamed dataset."""
    import ray.train

    if lc.data_ahead:
        shards, total = wait_training_data(find_board(lc.run_name))
        if len(shards) != world:
            raise ValueError(f"the driver split the training data into {len(shards)} shards for {world} workers")
        shard = shards[rank]
    else:
        shard, total = ray.train.get_dataset_shard("train"), lc.total_steps
    stream = SampleStream(shard, exact=lc.data_ahead, seed=t.seed, rank=rank, micro_batch=t.micro_batch_size,
                          shuffle_buffer=shuffle_buffer, length_groups=t.group_by_length,
                          collate_fn=collate_fn(transform, keep_keys=bool(lc.sample_log)))
    return stream, total


def finish_stage(engine, model: DecoModel, state: ResumeState, tracker: CommittedMetrics, lc: LoopConfig,
                 ctx: WorkerContext) -> dict[str, Any]:
    """Validation loss, consolidated export (rank 0), final checkpoint + report from every rank; returns the
    reported metrics."""
    import ray.train

    metrics: dict[str, float] = {"loss": ctx.last_loss}
    val = lc.val_data if lc.val_data is not None else ray.train.get_dataset_shard("val") if lc.has_val else None
    if val is not None:
        engine.eval()
        batches = (
            {k: v.to(engine.device) for k, v in b.items()}
            for b in val.iter_torch_batches(batch_size=lc.val_batch_size, collate_fn=collate_fn(ctx.transform))
        )
        metrics["val_loss"] = mean_token_loss(engine, batches)
        log.info("validation loss %.4f", metrics["val_loss"])
        tracker.add({"val/loss": metrics["val_loss"]}, step=state.step)
    ctx.clock.mark("val_done")
    state_dict = consolidated_state_dict(engine, model, ctx.rank)
    if lc.stage_template != "plain":
        model.cfg.chat_template = lc.stage_template  # the export is prompted the way it was tuned
    if ctx.rank == 0:
        export_model(model, state_dict, lc.output_uri, lc.storage)
        tracker.tracker.set_tags({"deco.output_uri": lc.output_uri})
        tracker.add({"train/final_loss": metrics["loss"]}, step=state.step)
    ctx.clock.mark("export_done")
    final = {**metrics, **ctx.clock.as_metrics(), "worker_pid": os.getpid()}
    save_and_report(engine, state, final, ctx.rank, lc.run_name)
    tracker.commit()
    tracker.tracker.finish(status=None)
    return {**final, "step": state.step, "epoch": state.epoch}
