"""The Ray Data pipeline: batches equal conversation.py's output, and bad input is counted per reason and
fails the job beyond the configured fraction."""

from __future__ import annotations

import copy

import pytest
import ray

from deco_core.config import compose
from deco_core.data.conversation import preprocess_conversation
from deco_core.data.ray_data import DataQualityError, build_dataset, check_quality, get_quality_counter
from deco_core.data.shapes import instruct_samples
from deco_core.data.shards import read_manifest, write_shards
from deco_core.data.storage import StorageConfig
from deco_core.train.trainer import preprocess_spec

pytestmark = pytest.mark.integration


def _spec(tokenizer, template="vicuna_v1", max_length=192):
    cfg = compose("pipeline/tiny", [f"model.tokenizer.max_length={max_length}"])
    return preprocess_spec(cfg, template, tokenizer)


def _consume(ds) -> list[dict]:
    return list(ds.iter_rows())


def test_batches_equal_conversation_preprocessing(ray_local, tmp_path, shapes_tokenizer):
    """Rows coming out of Ray Data have exactly conversation.py's ids, labels and image-token count."""
    samples = list(instruct_samples(24, seed=3))
    uri = str(tmp_path / "shards")
    write_shards(samples, uri, source="shapes-instruct", split="train", samples_per_shard=10, progress=False)
    spec = _spec(shapes_tokenizer)
    ds, n = build_dataset([(uri, 1.0)], spec, StorageConfig(), None, batch_size=8, shuffle=False)
    rows = {r["key"]: r for r in _consume(ds)}
    assert n == 24 and len(rows) == 24
    for sample in samples:
        ex = preprocess_conversation(sample["json"]["conversations"], shapes_tokenizer, "vicuna_v1",
                                     spec.image_token_id, spec.num_image_tokens, spec.max_length, has_image=True)
        row = rows[sample["__key__"]]
        length = int(row["attention_mask"].sum())
        assert row["input_ids"][:length].tolist() == ex.input_ids
        assert row["labels"][:length].tolist() == ex.labels
        assert (row["input_ids"] == spec.image_token_id).sum() == spec.num_image_tokens == 36  # the tiny default M


def _corrupt(samples: list[dict]) -> dict[str, int]:
    """Damage known samples in place; returns the expected count per reason."""
    samples[0]["png"] = b"not an image at all"
    samples[1]["png"] = samples[1]["png"][: len(samples[1]["png"]) // 2]  # truncated PNG
    samples[2]["json"]["conversations"] = [{"from": "human"}]  # a turn without a value
    samples[3]["json"]["conversations"][0]["from"] = "robot"
    first = samples[4]["json"]["conversations"][0]  # 400 words before <image>: truncation would cut it
    first["value"] = " ".join(["red"] * 400) + " " + first["value"]
    samples[5].pop("png")  # text mentions <image> but there is no image
    return {"corrupt_image": 2, "missing_keys": 1, "unknown_role": 1, "too_long": 1, "image_mismatch": 1}


def test_corrupted_corpus_is_counted_and_fails_beyond_threshold(ray_local, tmp_path, shapes_tokenizer):
    """Each kind of bad sample, and a truncated shard, is skipped and counted under its reason."""
    samples = [copy.deepcopy(s) for s in instruct_samples(40, seed=5)]
    expected = _corrupt(samples)
    uri = str(tmp_path / "bad")
    write_shards(samples, uri, source="shapes-instruct", split="train", samples_per_shard=10, progress=False)
    last = read_manifest(uri).shard_urls[-1]
    with open(last, "r+b") as f:  # a shard cut short after the manifest was written
        f.truncate(3000)
    expected["truncated_shard"] = 10
    name = "bad-corpus-test"
    counter = get_quality_counter(name)
    ds, _ = build_dataset([(uri, 1.0)], _spec(shapes_tokenizer), StorageConfig(), name, batch_size=8)
    good = _consume(ds)
    counts = ray.get(counter.snapshot.remote())
    assert {k: v for k, v in counts.items() if k != "seen"} == expected
    assert counts["seen"] == 40 and len(good) == 40 - sum(expected.values())
    with pytest.raises(DataQualityError, match="truncated_shard"):
        check_quality(counts, max_bad_fraction=0.01, min_seen=10)
    metrics = check_quality(counts, max_bad_fraction=0.9, min_seen=10)
    assert metrics["data/bad_corrupt_image"] == 2 and metrics["data/bad_fraction"] == pytest.approx(16 / 40)
