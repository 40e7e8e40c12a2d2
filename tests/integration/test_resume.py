"""Faults on real Ray Train + DeepSpeed: a SIGKILLed worker resumes the exact sample stream and logs each step
once; a modified checkpoint is refused; an error a retry cannot fix is not retried."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from deco_core.config import compose
from deco_core.data.ray_data import DataQualityError
from deco_core.data.shapes import instruct_samples
from deco_core.data.shards import write_shards
from deco_core.tracking import resolve_tracking_uri
from deco_core.train.faults import FAIL_AT_STEP_ENV
from deco_core.train.integrity import CheckpointIntegrityError, verify_checkpoint
from deco_core.train.session import close_sessions
from deco_core.train.stream import read_ledger
from deco_core.train.trainer import run_stage

pytestmark = pytest.mark.integration

# 2 workers × micro 8 × accumulation 2 = 32 per step; 96 samples per epoch = 48 per shard = 3 steps per epoch,
# so 8 steps cross two epoch boundaries and the step-4 checkpoint lies inside epoch 1.
REPLAY = ["pretrain.num_workers=2", "pretrain.cpus_per_worker=0.5", "pretrain.micro_batch_size=8",
          "pretrain.global_batch_size=32", "pretrain.samples_per_epoch=96", "pretrain.max_steps=8",
          "pretrain.checkpoint_every=4", "pretrain.log_every=1", "pretrain.max_failures=1"]


def _history(cfg, run_id: str, key: str = "train/loss") -> list[tuple[int, float]]:
    client = MlflowClient(resolve_tracking_uri(cfg.tracking, cfg.pipeline.root))
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _run(cfg, tiny_corpus, tmp_path, name: str):
    return run_stage(cfg, "pretrain", sources=[(tiny_corpus.pretrain, 1.0)], output_uri=str(tmp_path / name),
                     run_name=name, storage_path=str(tmp_path / "ray"), sample_log=str(tmp_path / "keys" / name))


def test_sigkilled_worker_resumes_the_exact_sample_stream(ray_local, tiny_corpus, tmp_path):
    """Killed (SIGKILL) after the step-4 checkpoint and resumed: the same loss at every step and the same
    samples in every micro-batch as an uninterrupted run; MLflow holds each step once; then a modified file of
    the checkpoint is refused by name."""
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}", *REPLAY])
    clean = _run(cfg, tiny_corpus, tmp_path, "replay-clean")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAIL_AT_STEP_ENV, "6")  # test-only hook (deco_core.train.faults)
        killed = _run(cfg, tiny_corpus, tmp_path, "replay-killed")
    assert (tmp_path / "ray" / "replay-killed" / ".fault_injected").exists()
    assert clean.steps == killed.steps == 8

    a, b = _history(cfg, clean.run_id), _history(cfg, killed.run_id)
    assert [s for s, _ in b] == list(range(1, 9)), "each step is logged exactly once"
    assert [s for s, _ in a] == list(range(1, 9))
    for (step, va), (_, vb) in zip(a, b, strict=True):
        assert vb == pytest.approx(va, abs=1e-5), f"loss at step {step}"

    seen_clean = read_ledger(str(tmp_path / "keys" / "replay-clean"), 2)
    seen_killed = read_ledger(str(tmp_path / "keys" / "replay-killed"), 2)
    lines = sum(1 for r in (0, 1) for _ in open(tmp_path / "keys" / f"replay-killed.rank{r}.jsonl"))
    assert lines > len(seen_killed), "the killed run replayed the micro-batches after its checkpoint"
    assert seen_killed == seen_clean
    assert Counter(k for v in seen_killed.values() for k in v) == Counter(k for v in seen_clean.values() for k in v)
    assert len(seen_clean) == 8 * 2 * 2  # steps × accumulation × ranks

    ckpt = killed.checkpoint
    verify_checkpoint(ckpt)  # the merged Ray + DeepSpeed checkpoint is fully covered by its manifests
    optim = sorted(Path(ckpt).rglob("*optim_states.pt"))[-1]
    optim.write_bytes(optim.read_bytes()[:-8] + b"tampered")
    with pytest.raises(CheckpointIntegrityError, match=re.escape(optim.name)):
        _run(cfg, tiny_corpus, tmp_path, "replay-killed")  # the same run name resumes its checkpoint


def _bad_corpus(path, n: int = 200, every: int = 10) -> str:
    samples = [copy.deepcopy(s) for s in instruct_samples(n, seed=11)]
    for s in samples[::every]:
        s["png"] = b"not an image"
    uri = str(path)
    write_shards(samples, uri, source="shapes-instruct", split="train", samples_per_shard=50, progress=False)
    return uri


@pytest.mark.parametrize("ahead,session", [(False, None), (True, None), (True, "bad-session")],
                         ids=["streaming", "preprocess-ahead", "training-session"])
def test_data_quality_error_ends_the_stage_once(ray_local, tmp_path, ahead, session):
    """10 % bad samples over a 1 % limit with two retries allowed: the stage fails with DataQualityError and
    its own message, counted in a single pass over the 200 samples; no retried attempt trains (a retry would
    re-read and re-count them, and replay step 1 in the sample ledger)."""
    uri = _bad_corpus(tmp_path / "bad")
    cfg = compose("pipeline/tiny", [f"pipeline.root={tmp_path}", f"data.preprocess_ahead={str(ahead).lower()}",
                                    "finetune.num_workers=1", "finetune.micro_batch_size=16",
                                    "finetune.global_batch_size=16", "finetune.max_steps=12",
                                    "finetune.log_every=1", "finetune.max_failures=2"])
    with pytest.raises(DataQualityError) as err:
        try:
            run_stage(cfg, "finetune", sources=[(uri, 1.0)], output_uri=str(tmp_path / "m"), run_name=f"bad-{ahead}-{session}",
                      storage_path=str(tmp_path / "ray"), sample_log=str(tmp_path / "keys"), session=session)
        finally:
            close_sessions()
    assert type(err.value) is DataQualityError
    bad, seen = map(int, re.fullmatch(r"(\d+) of (\d+) samples were bad .*", str(err.value)).groups())
    assert seen <= 200 and bad <= 20 and bad / seen > 0.01
    ledger = tmp_path / "keys.rank0.jsonl"
    steps = [json.loads(line)["step"] for line in ledger.read_text().splitlines()] if ledger.exists() else []
    assert len(steps) == len(set(steps)), "a retried attempt trained again"
