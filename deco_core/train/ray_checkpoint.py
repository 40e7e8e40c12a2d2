"""Ray Train checkpoints of a training stage: every rank's DeepSpeed shard reported through ``ray.train.report``
(with a hash manifest, ``integrity.py``), and the resume from the latest one.

Checkpoint folders are named after the stage's run (``checkpoint_<run name>_<step>``): a worker group that
serves several stages in turn (``session.py``) resumes a stage only from that stage's own checkpoint, never
from the last one an earlier stage left behind.
"""

from __future__ import annotations

import logging
import os
import tempfile

from deco_core.train.integrity import ResumeState, read_state, verify_checkpoint, write_manifest, write_state

log = logging.getLogger(__name__)
CKPT_TAG = "ckpt"


def checkpoint_dir_name(run_name: str, step: int) -> str:
    """The folder a stage's checkpoint at ``step`` is persisted under (the same on every rank)."""
    return f"checkpoint_{run_name}_{step:07d}"


def owned_by(path: str, run_name: str) -> bool:
    """Whether the checkpoint at ``path`` was written by the stage run ``run_name``."""
    name = os.path.basename(path.rstrip("/"))
    return name.startswith(f"checkpoint_{run_name}_") and name[len(f"checkpoint_{run_name}_"):].isdigit()


def maybe_resume(engine, fresh: ResumeState, run_name: str) -> ResumeState:
    """Load the latest Ray Train checkpoint of this stage: its files verified against their manifests first,
    then DeepSpeed's model, optimizer and scheduler state, and our own state (step, epoch, consumed samples)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return fresh
    if not owned_by(ckpt.path, run_name):
        log.info("latest checkpoint %s belongs to another stage; %s starts fresh", ckpt.path, run_name)
        return fresh
    with ckpt.as_directory() as path:
        verify_checkpoint(path)
        state = read_state(path)
        engine.load_checkpoint(path, tag=CKPT_TAG)
    if (state.world_size, state.shard_rows) != (fresh.world_size, fresh.shard_rows):
        log.warning("checkpoint written by %d workers with %d rows per shard, resuming on %d with %d: the sample "
                    "stream continues near, not exactly at, where it stopped", state.world_size, state.shard_rows,
                    fresh.world_size, fresh.shard_rows)
        state.world_size, state.shard_rows = fresh.world_size, fresh.shard_rows
    log.info("resumed from checkpoint at step %d (epoch %d, %d samples into it)", state.step, state.epoch,
             state.epoch_samples)
    return state


def has_own_checkpoint(run_name: str) -> bool:
    """A checkpoint of this stage exists to resume from (a fresh stage may prefetch its first batch)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    return ckpt is not None and owned_by(ckpt.path, run_name)


def save_and_report(engine, state: ResumeState, metrics: dict[str, float], rank: int, run_name: str) -> None:
    """Every rank writes its DeepSpeed shard to a temp dir (rank 0 adds our JSON state), then the manifest of
    what it wrote; Ray merges the ranks' dirs into one checkpoint named after the stage's run and step."""
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory(prefix="deco-ckpt-") as tmp:
        engine.save_checkpoint(tmp, tag=CKPT_TAG)
        if rank == 0:
            write_state(tmp, state)
        write_manifest(tmp, rank, state.world_size)
        ray.train.report({**metrics, "step": state.step, "epoch": state.epoch},
                         checkpoint=Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_dir_name(run_name, state.step))
