"""The binding probe's data is what its table says: answers match membership, conjunction negatives share one
attribute with a scene object, queries are balanced; training returns a curve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.experiments import binding as b


def _parse(row: list[int], variant: str) -> tuple[list[tuple[int, int]], tuple[int, ...], int]:
    row = [t for t in row if t != b.PAD]
    assert row[0] == b.BOS
    q = row.index(b.QUERY)
    scene, ask, answer = row[1:q], tuple(row[q + 1 : -1]), row[-1]
    if variant == "single":
        return [(t - b.OBJECT0, 0) for t in scene], (ask[0] - b.OBJECT0,), answer
    if variant == "bound":
        objs = [divmod(t - b.OBJECT0, b.N_SHAPES) for t in scene]
    else:
        assert len(scene) % 3 == 0 and all(t == b.SEP for t in scene[2::3])
        objs = [(c - b.COLOUR0, s - b.SHAPE0) for c, s in zip(scene[0::3], scene[1::3], strict=True)]
    return objs, (ask[0] - b.COLOUR0, ask[1] - b.SHAPE0), answer


@pytest.mark.parametrize("variant", b.VARIANTS)
def test_answers_follow_membership_and_queries_are_balanced(variant):
    batch = b.make_batch(variant, 400, np.random.default_rng(0))
    for row, present in zip(batch.input_ids.tolist(), batch.present, strict=True):
        objs, ask, answer = _parse(row, variant)
        assert 1 <= len(objs) <= b.MAX_OBJECTS
        member = ask[0] in [o[0] for o in objs] if variant == "single" else ask in objs
        assert member == present
        assert answer == (b.YES if present else b.NO)
    assert 0.4 < batch.present.mean() < 0.6


@pytest.mark.parametrize("variant", ["bound", "text"])
def test_conjunction_negatives_share_one_attribute_with_an_object(variant):
    batch = b.make_batch(variant, 300, np.random.default_rng(1))
    for row, present in zip(batch.input_ids.tolist(), batch.present, strict=True):
        objs, (c, s), _ = _parse(row, variant)
        if not present:
            assert any(oc == c for oc, _ in objs) or any(os_ == s for _, os_ in objs)


def test_unknown_variant_is_named():
    with pytest.raises(ValueError, match="'pixels'"):
        b.make_batch("pixels", 2, np.random.default_rng(0))


def test_training_returns_a_curve_and_the_first_step_at_a_level():
    curve = b.train_variant("single", steps=4, batch_size=8, eval_every=2)
    assert [p["step"] for p in curve] == [2, 4]
    assert all(0.0 <= p["accuracy"] <= 1.0 and p["loss"] > 0 for p in curve)
    assert b.first_step_at([{"step": 2, "accuracy": 0.5}, {"step": 4, "accuracy": 0.97}], 0.95) == 4
    assert b.first_step_at(curve[:1], 1.01) is None


def test_single_attribute_queries_answer_membership_of_that_attribute():
    batch = b.make_batch("text", 300, np.random.default_rng(2), single_share=1.0)
    for row, present in zip(batch.input_ids.tolist(), batch.present, strict=True):
        row = [t for t in row if t != b.PAD]
        q = row.index(b.QUERY)
        scene, ask = row[1:q], row[q + 1 : -1]
        assert len(ask) == 1
        assert present == (ask[0] in scene)  # colour and shape tokens are disjoint ranges
        assert row[-1] == (b.YES if present else b.NO)
    assert 0.4 < batch.present.mean() < 0.8


def test_run_writes_the_json_and_an_mlflow_run(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    result = b.run(("single",), 2, tmp_path / "out", tracking_uri=uri, batch_size=4, eval_every=1)
    saved = json.loads((tmp_path / "out" / "binding.json").read_text())
    assert saved["variants"]["single"]["curve"] == result["variants"]["single"]["curve"]
    run = MlflowClient(uri).get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["single.final_accuracy"] == result["variants"]["single"]["final_accuracy"]
    assert run.data.params["variants"] == "single"
