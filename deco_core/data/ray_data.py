"""Ray Data streaming for training and evaluation: read WebDataset shards (local or S3), preprocess on CPU actors
(decode, CLIP transform, template, tokenise, mask, image-token expansion, pad) and hand batches to Ray Train.

Bad samples are dropped and counted per reason in one named counter actor per run (the stage monitor): unsafe,
malformed and truncated tar content by the read tasks (``deco_core.data.ray_shards``), undecodable or untrainable
samples by the preprocessing actors;
the training loop checks the bad fraction against ``data.max_bad_fraction`` and fails with the counts.

Resource plan (2 cores): Ray is started with logical CPUs (4 by default), train workers take 0.5 each, reads and
preprocessing actors take ``data.preprocess_cpus`` each, so data work always has CPU to run on.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from deco_core.data.conversation import IGNORE_INDEX, SampleError, preprocess_conversation
from deco_core.data.preprocess import decode_record
from deco_core.data.shards import read_manifest
from deco_core.data.storage import StorageConfig, get_filesystem, pyarrow_filesystem
from deco_core.data.transforms import ImageTransform

log = logging.getLogger(__name__)


class DataQualityError(RuntimeError):
    """Too many bad samples: the message carries the per-reason counts."""


@dataclass
class PreprocessSpec:
    """Everything a preprocessing actor needs (picklable)."""

    tokenizer: Any
    template: str
    num_image_tokens: int
    max_length: int
    transform: ImageTransform
    image_token_id: int


def preprocess_record(record: dict[str, Any], spec: PreprocessSpec) -> dict[str, np.ndarray]:
    """One raw shard record -> fixed-size arrays (input_ids/labels/attention_mask padded to max_length).

    Raises SampleError (with a counter reason) for anything that cannot become a training example.
    """
    key, meta, image = decode_record(record)
    pixels = spec.transform.to_uint8(image) if image is not None else np.zeros(
        (3, spec.transform.size, spec.transform.size), np.uint8)  # normalised per batch by `collate`
    ex = preprocess_conversation(meta.get("conversations"), spec.tokenizer, spec.template, spec.image_token_id,
                                 spec.num_image_tokens, spec.max_length, has_image=image is not None)
    n = len(ex.input_ids)
    ids = np.full(spec.max_length, spec.tokenizer.pad_token_id, np.int64)
    labels = np.full(spec.max_length, IGNORE_INDEX, np.int64)
    mask = np.zeros(spec.max_length, np.int64)
    ids[:n], labels[:n], mask[:n] = ex.input_ids, ex.labels, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "pixel_values": pixels,
            "has_image": np.bool_(image is not None), "key": key}


def preprocess_rows(rows: list[dict[str, Any]], spec: PreprocessSpec) -> tuple[list[dict[str, Any]], Counter]:
    """Preprocess many records; bad ones are dropped and counted (``Counter`` of reasons, plus 'seen')."""
    out, counts = [], Counter()
    for rec in rows:
        counts["seen"] += 1
        try:
            out.append(preprocess_record(rec, spec))
        except SampleError as exc:
            counts[exc.reason] += 1
            log.warning("skipping sample %s: %s", rec.get("__key__", "?"), exc)
    return out, counts


def stack_rows(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    if not rows:
        return {}
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def collate(batch: dict[str, np.ndarray], transform: ImageTransform) -> dict[str, Any]:
    """Ray batch (numpy) -> torch tensors: padding columns beyond the longest sequence trimmed, uint8 pixels
    normalised with ``transform`` (the preprocessing spec's)."""
    import torch

    length = max(int(batch["attention_mask"].sum(axis=1).max()), 1)
    out = {k: torch.as_tensor(np.ascontiguousarray(batch[k][:, :length]))
           for k in ("input_ids", "labels", "attention_mask")}
    pixels = batch["pixel_values"]
    out["pixel_values"] = torch.as_tensor(transform.normalize(pixels) if pixels.dtype == np.uint8 else pixels)
    out["image_mask"] = torch.as_tensor(batch["has_image"].astype(bool))
    return out


# -------------------------------------------------------------------------------------------- counting
def get_quality_counter(name: str):
    """The run's bad-sample counter: the stage monitor actor (``deco_core.monitor``), created on first use."""
    from deco_core.monitor import get_monitor

    return get_monitor(name)


def check_quality(counts: dict[str, int], max_bad_fraction: float, min_seen: int = 50) -> dict[str, float]:
    """Bad-sample metrics; raises DataQualityError when the bad fraction exceeds the limit."""
    seen = counts.get("seen", 0)
    bad = {k: v for k, v in counts.items() if k != "seen"}
    n_bad = sum(bad.values())
    frac = n_bad / seen if seen else 0.0
    if seen >= min_seen and frac > max_bad_fraction:
        raise DataQualityError(
            f"{n_bad} of {seen} samples were bad ({frac:.1%} > data.max_bad_fraction={max_bad_fraction:.1%}); "
            f"reasons: {dict(sorted(bad.items()))}")
    metrics = {"data/seen": float(seen), "data/bad_fraction": frac}
    metrics.update({f"data/bad_{k}": float(v) for k, v in bad.items()})
    return metrics


class Preprocessor:
    """Ray Data callable class: raw WebDataset rows -> training arrays; bad rows dropped and counted."""

    def __init__(self, spec: PreprocessSpec, counter_name: str | None = None) -> None:
        self.spec = spec
        self.counter = get_quality_counter(counter_name) if counter_name else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        good, counts = preprocess_rows(rows, self.spec)
        if self.counter is not None:
            self.counter.add.remote(dict(counts))
        if not good:
            return _empty_batch(self.spec)
        return stack_rows(good)


def preprocess_batch(batch: dict[str, np.ndarray], spec: PreprocessSpec, counter_name: str | None) -> dict:
    """The ``Preprocessor`` step as a plain function, for Ray Data tasks (see ``build_dataset``)."""
    return Preprocessor(spec, counter_name)(batch)


def _warm_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import deco_core.data.ray_shards  # noqa: F401 - what a read-and-preprocess task imports first
    import deco_core.data.tar_rules  # noqa: F401

    return batch


def warm_up(workers: int) -> None:
    """Start Ray Data's own helper actors and ``workers`` task processes of 1 CPU (the preprocessing tasks' shape,
    with their imports done), once per Ray instance: a stage's first preprocessing pass then starts on warm
    processes instead of paying these starts itself (~10 s on 2 cores, against ~1 s warm)."""
    import ray

    ray.data.range(workers, override_num_blocks=workers).map_batches(_warm_batch, num_cpus=1.0).materialize()


def _empty_batch(spec: PreprocessSpec) -> dict[str, np.ndarray]:
    s, L = spec.transform.size, spec.max_length
    return {"input_ids": np.zeros((0, L), np.int64), "labels": np.zeros((0, L), np.int64),
            "attention_mask": np.zeros((0, L), np.int64), "pixel_values": np.zeros((0, 3, s, s), np.uint8),
            "has_image": np.zeros((0,), bool), "key": np.zeros((0,), object)}


# --------------------------------------------------------------------------------------------- reading
def _readable_shards(uri: str, storage: StorageConfig, counts: Counter) -> tuple[list[str], dict[str, int], int]:
    """Shard URLs from the manifest whose size matches it, their manifest sample counts (by manifest URL) and the
    total; truncated/missing ones are skipped and counted."""
    manifest = read_manifest(uri, storage)
    fs, _ = get_filesystem(uri, storage)
    urls, expected, total = [], {}, 0
    for row, url in zip(manifest.rows, manifest.shard_urls, strict=True):
        path = get_filesystem(url, storage)[1]
        size = fs.size(path) if fs.exists(path) else -1
        if size != row.bytes:
            counts["seen"] += row.samples
            counts["truncated_shard"] += row.samples
            log.warning("skipping shard %s: %s bytes on storage, manifest says %d", url,
                        "missing" if size < 0 else size, row.bytes)
            continue
        urls.append(url)
        expected[row.url] = row.samples
        total += row.samples
    return urls, expected, total


def read_source(uri: str, storage: StorageConfig, counts: Counter, num_cpus: float = 0.25, shuffle: bool = True,
                counter_name: str | None = None):
    """One shard folder -> a Ray Dataset of raw records (bytes per member) and its sample count.

    The read tasks apply the tar rules of the single-process reader (``deco_core.data.tar_rules``): unsafe,
    malformed and truncated content is dropped and counted in the stage monitor ``counter_name``.
    """
    import ray

    from deco_core.data.ray_shards import ShardDatasource

    urls, expected, total = _readable_shards(uri, storage, counts)
    if not urls:
        raise FileNotFoundError(f"no readable shards under {uri} (see the warnings above)")
    source = ShardDatasource(urls, expected=expected, counter_name=counter_name,
                             filesystem=pyarrow_filesystem(uri, storage), shuffle="files" if shuffle else None)
    return ray.data.read_datasource(source, num_cpus=num_cpus), total


def mix_sources(sources: list[tuple[str, float]], storage: StorageConfig, counts: Counter,
                num_cpus: float = 0.25, samples: int | None = None, shuffle: bool = True,
                counter_name: str | None = None):
    """Weighted mixture: source i contributes round(samples × w_i / Σw) rows (repeated if it has fewer)."""
    parts = [(read_source(uri, storage, counts, num_cpus, shuffle, counter_name), w) for uri, w in sources]
    total_w = sum(w for _, w in parts)
    target_total = samples or sum(n for (_, n), _ in parts)
    mixed = None
    for (ds, n), w in parts:
        want = max(1, round(target_total * w / total_w))
        repeats = -(-want // n)
        part = ds if repeats == 1 else ds.union(*([ds] * (repeats - 1)))
        part = part.limit(want) if want < n * repeats else part
        mixed = part if mixed is None else mixed.union(part)
    if len(parts) > 1 and shuffle:
        mixed = mixed.randomize_block_order()
    return mixed, target_total


def build_dataset(sources: list[tuple[str, float]], spec: PreprocessSpec, storage: StorageConfig,
                  counter_name: str | None, batch_size: int = 64, num_cpus: float = 0.25,
                  samples: int | None = None, shuffle: bool = True, concurrency: tuple[int, int] = (1, 2),
                  tasks: bool = False):
    """Sources -> preprocessed Ray Dataset ready for ``iter_torch_batches(collate_fn=collate)``.

    Streaming beside training uses a small pool of ``Preprocessor`` actors (``concurrency``). ``tasks=True`` runs
    the same step as Ray tasks instead — for a one-off pass with nothing else running (preprocessing ahead of the
    steps): tasks start on Ray's already-running idle worker processes, where a new actor pool would first have
    to start processes of its own.
    """
    counts: Counter = Counter()
    # as Ray tasks, the reads take the preprocessing's CPU too, so each read fuses with its preprocessing into one
    # task on one worker process (0.25-CPU reads would start up to 4 processes per logical CPU)
    read_cpus = max(num_cpus, 1.0) if tasks else num_cpus
    raw, total = mix_sources(sources, storage, counts, read_cpus, samples, shuffle, counter_name)
    if counter_name and counts:
        get_quality_counter(counter_name).add.remote(dict(counts))
    if tasks:
        # a whole CPU per task: as many tasks as (logical) CPUs, not the dozen process starts of 0.25-CPU tasks
        ds = raw.map_batches(preprocess_batch, fn_kwargs={"spec": spec, "counter_name": counter_name},
                             batch_size=batch_size, num_cpus=max(num_cpus, 1.0))
        return ds, total
    from ray.data import ActorPoolStrategy

    ds = raw.map_batches(Preprocessor, fn_constructor_kwargs={"spec": spec, "counter_name": counter_name},
                         batch_size=batch_size, num_cpus=num_cpus,
                         compute=ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1]))
    return ds, total
