"""The tar rules every shard reader shares (deco_core/data/tar_rules.py): unsafe, malformed and truncated content
becomes a BadSample with its reason; `verify_manifest` / `deco data inspect --verify` read every member to its end,
so a truncated shard whose manifest was rewritten to match is reported, naming the shard."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deco_core.cli import app
from deco_core.data.shards import ShardError, iter_samples, read_manifest, verify_manifest
from deco_core.data.tar_rules import BadSample, read_shard_records
from tests.fixtures.bad_shards import append_members, cut_inside_a_member, rewrite_manifest
from tests.unit.test_shards import make_samples, write


def _records(shard: Path, expected: int | None = None) -> list[dict | BadSample]:
    with open(shard, "rb") as f:
        return list(read_shard_records(f, f"shard {shard}", expected))


def test_unsafe_member_names_become_bad_samples(tmp_path: Path) -> None:
    """Members named '../escape.json' and '/abs/escape.json' are BadSamples 'unsafe_path'; the rest are records."""
    manifest = write(make_samples(10), tmp_path)
    shard = Path(manifest.shard_urls[0])
    append_members(shard, ["../escape.json", "/abs/escape.json"])
    out = _records(shard, expected=10)
    bad = [r for r in out if isinstance(r, BadSample)]
    assert [r["__key__"] for r in out if not isinstance(r, BadSample)] == [f"s{i:05d}" for i in range(10)]
    assert [(b.reason, b.key) for b in bad] == [("unsafe_path", "../escape"), ("unsafe_path", "/abs/escape")]


def test_links_and_malformed_members_are_named(tmp_path: Path) -> None:
    """A symlink member is 'unsafe_member'; a member without key.extension form is 'malformed_member'."""
    shard = tmp_path / "odd.tar"
    with tarfile.open(shard, "w") as tar:
        link = tarfile.TarInfo("a.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        tar.addfile(tarfile.TarInfo("noext"))
    assert [(r.reason, r.key) for r in _records(shard)] == [("unsafe_member", "a"), ("malformed_member", "noext")]


def test_truncated_shard_counts_the_lost_samples(tmp_path: Path) -> None:
    """A tar cut inside a member yields the samples completed before the cut, then one 'truncated_shard'
    BadSample counting the rest of the manifest's samples."""
    manifest = write(make_samples(20), tmp_path, samples_per_shard=20)
    shard = Path(manifest.shard_urls[0])
    cut_inside_a_member(shard)
    out = _records(shard, expected=20)
    good = [r for r in out if not isinstance(r, BadSample)]
    assert isinstance(out[-1], BadSample) and out[-1].reason == "truncated_shard"
    assert 0 < len(good) < 20 and out[-1].count == 20 - len(good)
    assert "unexpected end of data" in out[-1].message


def test_fewer_samples_than_the_manifest_is_a_truncated_shard(tmp_path: Path) -> None:
    """A well-formed tar holding fewer samples than its manifest row says ends in a 'truncated_shard'."""
    manifest = write(make_samples(10), tmp_path)
    out = _records(Path(manifest.shard_urls[0]), expected=12)
    assert isinstance(out[-1], BadSample) and (out[-1].reason, out[-1].count) == ("truncated_shard", 2)


def _truncated_with_rewritten_manifest(tmp_path: Path) -> str:
    manifest = write(make_samples(30), tmp_path)
    cut_inside_a_member(Path(manifest.shard_urls[1]))
    rewrite_manifest(tmp_path)
    assert read_manifest(str(tmp_path)).rows[1].bytes == Path(manifest.shard_urls[1]).stat().st_size
    return manifest.shard_urls[1]


def test_verify_reads_every_member_and_names_the_truncated_shard(tmp_path: Path) -> None:
    """verify_manifest passes size and sha256 of a rewritten manifest, then reports the truncation naming the shard."""
    shard = _truncated_with_rewritten_manifest(tmp_path)
    with pytest.raises(ShardError, match=rf"shard {shard} is unreadable \(truncated_shard\).*unexpected end of data"):
        verify_manifest(str(tmp_path))


def test_single_process_reader_raises_shard_error_on_truncation(tmp_path: Path) -> None:
    """iter_samples raises ShardError naming the shard (not tarfile.ReadError) on a truncated shard."""
    shard = _truncated_with_rewritten_manifest(tmp_path)
    with pytest.raises(ShardError, match=rf"shard {shard}: the tar stream is cut short"):
        list(iter_samples(str(tmp_path)))


def test_inspect_verify_fails_naming_the_shard(tmp_path: Path) -> None:
    """`deco data inspect --verify` exits 1 with one line naming the truncated shard; without --verify it lists."""
    shard = _truncated_with_rewritten_manifest(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["data", "inspect", str(tmp_path), "--verify"])
    assert result.exit_code == 1, result.output
    assert "verify failed" in result.output and shard in result.output and "truncated_shard" in result.output
    assert runner.invoke(app, ["data", "inspect", str(tmp_path)]).exit_code == 0
