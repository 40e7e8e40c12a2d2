"""Checkpoint manifests: a checkpoint whose files changed, went missing or were added is refused, naming the
file; our resume state is JSON."""

from __future__ import annotations

import json

import pytest

from deco_core.train.integrity import (
    CheckpointIntegrityError,
    ResumeState,
    read_state,
    verify_checkpoint,
    write_manifest,
    write_state,
)
from deco_core.train.stream import derived_seed


def _checkpoint(tmp_path):
    """Two ranks' dirs merged into one, the way Ray merges reported checkpoints."""
    root = tmp_path / "ckpt-root"
    for rank in (0, 1):
        part = tmp_path / f"rank{rank}"
        (part / "ckpt").mkdir(parents=True)
        (part / "ckpt" / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(bytes([rank]) * 64)
        if rank == 0:
            (part / "ckpt" / "mp_rank_00_model_states.pt").write_bytes(b"model" * 10)
            (part / "latest").write_text("ckpt")
            write_state(part, ResumeState(step=4, epoch=1, epoch_samples=32, consumed_samples=128, world_size=2))
        write_manifest(part, rank, 2)
        for f in part.rglob("*"):
            if f.is_file():
                dest = root / f.relative_to(part)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(f.read_bytes())
    return root


def test_intact_checkpoint_verifies_and_state_is_json(tmp_path):
    root = _checkpoint(tmp_path)
    listed = verify_checkpoint(root)
    assert "ckpt/mp_rank_00_model_states.pt" in listed and "deco-state.json" in listed
    assert json.loads((root / "deco-state.json").read_text())["consumed_samples"] == 128
    assert read_state(root) == ResumeState(step=4, epoch=1, epoch_samples=32, consumed_samples=128, world_size=2)


def test_modified_file_is_refused_naming_it(tmp_path):
    root = _checkpoint(tmp_path)
    target = root / "ckpt" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    target.write_bytes(b"\x80\x04 a different pickle")
    with pytest.raises(CheckpointIntegrityError, match="zero_pp_rank_1_mp_rank_00_optim_states.pt has sha256"):
        verify_checkpoint(root)


def test_missing_extra_and_unmanifested_checkpoints_are_refused(tmp_path):
    root = _checkpoint(tmp_path)
    (root / "ckpt" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").write_bytes(b"dropped in")
    with pytest.raises(CheckpointIntegrityError, match="zero_pp_rank_2_mp_rank_00_optim_states.pt is not listed"):
        verify_checkpoint(root)
    (root / "ckpt" / "zero_pp_rank_2_mp_rank_00_optim_states.pt").unlink()
    (root / "ckpt" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(CheckpointIntegrityError, match="mp_rank_00_model_states.pt is missing"):
        verify_checkpoint(root)
    (root / "deco-manifest.rank1.json").unlink()
    with pytest.raises(CheckpointIntegrityError, match=r"no manifest from rank\(s\) \[1\]"):
        verify_checkpoint(root)
    for m in root.glob("deco-manifest.rank*.json"):
        m.unlink()
    with pytest.raises(CheckpointIntegrityError, match="has no deco-manifest"):
        verify_checkpoint(root)


def test_derived_seeds_are_stable_and_distinct():
    assert derived_seed(0, 1, 2) == 1855805557  # a fixed value: the same in every process and release
    assert len({derived_seed(0, e, r) for e in range(10) for r in range(4)}) == 40
