"""The Ray Data read of WebDataset shards: a file datasource whose read tasks apply ``deco_core.data.tar_rules``
(the rules of the single-process reader) and count what they drop in the run's stage monitor.

Rows are what ``ray.data.read_webdataset(decoder=None)`` gives (``__key__``, ``__url__`` and one bytes column per
member extension), so preprocessing and evaluation read them unchanged. Unlike that reader, a member with an
absolute or '..' path, a link, a malformed sample or a truncated tar never reaches a batch or crashes the read:
it is logged and counted under its reason (``seen`` too), and the read goes on with the next shard.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pandas as pd
from ray.data.datasource import FileBasedDatasource

from deco_core.data.tar_rules import BadSample, read_shard_records

log = logging.getLogger(__name__)

READ_CHUNK_ROWS = 512  # rows per emitted block (Ray's WebDataset reader uses the same)


class ShardDatasource(FileBasedDatasource):
    """Tar shards -> raw sample rows; ``expected`` maps each shard's manifest URL (relative to its dataset
    folder) to the manifest's sample count, so a shard that holds fewer samples is counted as truncated."""

    _FILE_EXTENSIONS = ["tar"]

    def __init__(self, paths: list[str], *, expected: dict[str, int], counter_name: str | None,
                 **kwargs: Any) -> None:
        super().__init__(paths, **kwargs)
        self.expected = expected
        self.counter_name = counter_name

    def _expected_for(self, path: str) -> int | None:
        """The manifest count of ``path`` (the longest manifest URL it ends with), None when it is not listed."""
        matches = [rel for rel in self.expected if path == rel or path.endswith("/" + rel)]
        return self.expected[max(matches, key=len)] if matches else None

    def _report(self, counts: Counter) -> None:
        if not counts or not self.counter_name:
            return
        import ray

        from deco_core.monitor import get_monitor

        # waited for: the counts land before this read task ends, so a reader of the monitor after the dataset is
        # consumed sees them (bad content is rare, so this costs one round trip per damaged shard)
        ray.get(get_monitor(self.counter_name).add.remote(dict(counts)))

    def _read_stream(self, f: Any, path: str) -> Iterator[pd.DataFrame]:
        counts: Counter = Counter()
        rows: list[dict[str, Any]] = []
        try:
            for record in read_shard_records(f, f"shard {path}", self._expected_for(path)):
                if isinstance(record, BadSample):
                    counts["seen"] += record.count
                    counts[record.reason] += record.count
                    log.warning("skipping %d sample(s) (%s): %s", record.count, record.reason, record.message)
                    continue
                record["__url__"] = path
                rows.append(record)
                if len(rows) >= READ_CHUNK_ROWS:
                    yield pd.DataFrame.from_records(rows)
                    rows = []
            if rows:
                yield pd.DataFrame.from_records(rows)
        finally:
            self._report(counts)
