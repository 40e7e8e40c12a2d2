"""Preprocessing ahead of the steps while the workers start: what the driver posts is what a worker collects,
a failed pass reaches the worker as a non-retryable error and the driver as the original one, and reading an
epoch whose first batch was fetched ahead (``SampleStream.prime``) yields exactly the batches of a plain read."""

from __future__ import annotations

import numpy as np
import pytest

from deco_core.monitor import get_monitor
from deco_core.train.ahead import DataAhead, TrainingData, wait_training_data
from deco_core.train.fatal import is_non_retryable
from deco_core.train.stream import SampleStream


def test_a_worker_collects_the_shards_and_step_count_the_driver_posted(ray_local):
    board = get_monitor("ahead-ok")
    shards = [ray_local.data.range(8).materialize(), ray_local.data.range(4).materialize()]
    ahead = DataAhead(board, lambda: TrainingData(shards, rows=12, total_steps=7))
    got, total = wait_training_data(board, timeout_s=60)
    assert total == 7 and [s.count() for s in got] == [8, 4]
    assert ahead.result().total_steps == 7


def test_a_failed_pass_stops_the_worker_for_good_and_the_driver_sees_the_original_error(ray_local):
    class BadData(RuntimeError):
        pass

    def prepare() -> TrainingData:
        raise BadData("12 of 100 samples were bad")

    board = get_monitor("ahead-bad")
    ahead = DataAhead(board, prepare)
    with pytest.raises(ValueError, match="BadData: 12 of 100 samples were bad") as err:
        wait_training_data(board, timeout_s=60)
    assert is_non_retryable(err.value)  # a retried attempt would meet the same data
    with pytest.raises(BadData):
        ahead.result()


def test_a_worker_without_the_stage_monitor_says_so():
    with pytest.raises(RuntimeError, match="stage monitor is gone"):
        wait_training_data(None)


def _read(stream: SampleStream, prime: bool) -> list[list[int]]:
    if prime:
        stream.prime(epoch=0)
    return [batch["id"].tolist() for batch in stream.epoch(0)]


def test_a_primed_epoch_yields_the_same_batches_as_a_plain_read(ray_local):
    ds = ray_local.data.range(64, override_num_blocks=4)
    ds.context.execution_options.preserve_order = True  # as the trainer materializes: a fixed block order
    shard = ds.materialize()

    def make() -> SampleStream:
        return SampleStream(shard, exact=True, seed=3, rank=0, micro_batch=8, shuffle_buffer=16,
                            collate_fn=lambda b: {"id": np.asarray(b["id"])})

    plain, primed = _read(make(), prime=False), _read(make(), prime=True)
    assert plain == primed and len(plain) == 8
    assert sorted(i for b in primed for i in b) == list(range(64))
