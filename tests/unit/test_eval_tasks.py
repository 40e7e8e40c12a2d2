"""Unit tests for the eval task registry, prompt building, scoring, batched generation and the report."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from deco_core.data.prompts import MC_SUFFIX as MC_ANSWER
from deco_core.data.prompts import SHORT_ANSWER_SUFFIX as SHORT_ANSWER
from deco_core.data.prompts import rec_prompt
from deco_core.eval.tasks import TASKS, get_task, group_scores


def _image_png(colour: tuple[int, int, int] = (200, 40, 40), size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return buf.getvalue()


def _turns(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def _shapes_samples(task: str, n: int = 12) -> list[dict]:
    from deco_core.data.shapes import SHAPES_GENERATORS

    return [s["json"] for s in SHAPES_GENERATORS[get_task(task).shapes_stream][0](n, seed=3)]


def _public_samples(task: str) -> list[dict]:
    """Hand-made samples in the converted public formats (eval fields of the sample schema)."""
    q = "<image>\nWhat is it?"
    if task in ("vqav2", "textvqa"):
        return [{"id": f"v{i}", "conversations": _turns(q, a), "answers": [a] * 9 + ["other"]}
                for i, a in enumerate(["dog", "2", "red car"])]
    if task == "gqa":
        return [{"id": f"g{i}", "conversations": _turns(q, a), "answers": [a]} for i, a in enumerate(["left", "no"])]
    if task == "pope":
        return [{"id": f"p{i}", "conversations": _turns("<image>\nIs there a cat in the image?", lab),
                 "label": lab, "answers": [lab], "meta": {"pope_split": split}}
                for i, (lab, split) in enumerate([("yes", "random"), ("no", "random"), ("yes", "popular"),
                                                  ("no", "popular"), ("yes", "adversarial"), ("no", "adversarial")])]
    if task == "mme":
        return [{"id": f"m{i}", "conversations": _turns(f"<image>\nIs it {i}? Please answer yes or no.", a),
                 "answers": [a], "meta": {"subtask": "existence", "image": f"img{i // 2}"}}
                for i, a in enumerate(["Yes", "No", "Yes", "No"])]
    if task == "mmbench":
        rotations = [(1, "A"), (1_000_001, "B"), (2, "C"), (1_000_002, "D")]
        return [{"id": f"b{idx}", "conversations": _turns("<image>\nWhich?\nA. a\nB. b\nC. c\nD. d", letter),
                 "answers": [letter], "choices": {"A": "a", "B": "b", "C": "c", "D": "d"},
                 "meta": {"index": idx, "category": "x"}} for idx, letter in rotations]
    if task == "refcoco":
        return [{"id": f"r{i}", "answers": [], "bbox": box, "meta": {"expression": expr}}
                for i, (box, expr) in enumerate([([0.1, 0.1, 0.4, 0.5], "left dog"), ([0.5, 0.2, 0.9, 0.8], "man")])]
    raise AssertionError(task)


def _samples(task: str) -> list[dict]:
    return _shapes_samples(task) if get_task(task).shapes_stream else _public_samples(task)


def _perfect(task: str, sample: dict) -> str:
    if get_task(task).metric == "rec":
        return "[" + ", ".join(f"{v:.2f}" for v in sample["bbox"]) + "]"
    return str(sample["answers"][0] if sample.get("answers") else sample["label"])


def _wrong(task: str, sample: dict) -> str:
    metric = get_task(task).metric
    if metric == "pope":
        return "no" if sample["label"] == "yes" else "yes"
    if metric == "mme":
        return "No" if sample["answers"][0] == "Yes" else "Yes"
    if metric == "multiple_choice":
        return next(k for k in sample["choices"] if k != sample["answers"][0])
    return "zzz"


def _rows(task: str, samples: list[dict], predict) -> list[dict]:
    t = get_task(task)
    return [{"prediction": predict(task, s), "references": json.dumps(t.references(s))} for s in samples]


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_builds_a_prompt_with_one_image_and_its_suffix(name: str) -> None:
    """Every registered task's prompt holds exactly one <image> and its answer suffix exactly once."""
    task = get_task(name)
    for sample in _samples(name):
        prompt = task.build_prompt(sample)
        assert prompt.count("<image>") == 1
        if task.suffix:
            assert prompt.count(task.suffix) == 1
        assert "Please answer yes or no." not in prompt


@pytest.mark.parametrize("name", list(TASKS))
def test_perfect_predictions_score_top_and_wrong_ones_zero(name: str) -> None:
    """Reference answers give primary 1.0 (CIDEr: above the wrong ones); wrong answers give primary 0."""
    task = get_task(name)
    samples = _samples(name)
    good = task.score(_rows(name, samples, _perfect))[task.primary]
    bad = task.score(_rows(name, samples, _wrong))[task.primary]
    assert bad == 0.0
    if task.metric == "cider":
        assert good > 1.0
    else:
        assert good == pytest.approx(1.0)
    for s in samples:
        assert task.score_one(_perfect(name, s), task.references(s)) == pytest.approx(1.0)
        assert task.score_one(_wrong(name, s), task.references(s)) == 0.0


def test_prompt_suffixes_and_templates() -> None:
    """Short-answer and MC suffixes are appended once, MME's yes/no line is swapped, REC uses its template."""
    assert get_task("vqav2").build_prompt({"question": "What?"}) == f"<image>\nWhat?\n{SHORT_ANSWER}"
    mc = get_task("mmbench").build_prompt({"conversations": _turns(f"<image>\nQ?\nA. x\n{MC_ANSWER}", "A")})
    assert mc.count(MC_ANSWER) == 1
    mme = get_task("mme").build_prompt({"conversations": _turns("<image>\nIs it? Please answer yes or no.", "Yes")})
    assert mme == f"<image>\nIs it?\n{SHORT_ANSWER}"
    rec = get_task("refcoco").build_prompt({"meta": {"expression": "the left dog"}})
    assert rec == f"<image>\n{rec_prompt('the left dog')}"  # the same REC prompt training and converters use


def test_mmbench_uses_circular_eval_when_rotations_are_present() -> None:
    """A question counts only if all its rotated copies are right (half the rows right -> circular 0.5)."""
    task = get_task("mmbench")
    samples = _public_samples("mmbench")
    preds = {1: "A", 1_000_001: "B", 2: "C", 1_000_002: "A"}  # group 2's rotation is wrong
    rows = [{"prediction": preds[s["meta"]["index"]], "references": task.references(s)} for s in samples]
    scores = task.score(rows)
    assert scores["accuracy"] == 0.5
    assert scores["accuracy_plain"] == 0.75


def test_pope_reports_mean_f1_over_splits() -> None:
    """POPE f1 is the mean of the per-split F1 scores, and each split is reported."""
    task = get_task("pope")
    samples = _public_samples("pope")
    preds = ["yes", "no", "yes", "yes", "yes", "yes"]  # random perfect; popular/adversarial say yes to all
    rows = [{"prediction": p, "references": task.references(s)} for p, s in zip(preds, samples, strict=True)]
    scores = task.score(rows)
    assert scores["f1_random"] == 1.0
    assert scores["f1_popular"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)


def test_get_task_unknown_name_lists_valid_ones() -> None:
    """An unknown task name raises KeyError naming the valid tasks."""
    with pytest.raises(KeyError, match="valid: .*shapes-vqa.*refcoco"):
        get_task("shapes-vqa2")


def test_group_scores_average_primary_metrics() -> None:
    """Group scores are the mean of each member task's primary metric."""
    groups = group_scores({"shapes-vqa": {"accuracy": 0.5}, "vqav2": {"accuracy": 1.0},
                           "shapes-rec": {"acc_at_0.5": 0.25, "mean_iou": 0.9}})
    assert groups == {"open-ended VQA": 0.75, "localization": 0.25}


@pytest.fixture(scope="module")
def tiny_model(shapes_tokenizer, tiny_cfg):
    """An untrained tiny DecoModel (random weights)."""
    from deco_core.model.deco import DecoModel

    return DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).eval()


def test_left_padded_batches_match_one_by_one_generation(tiny_model) -> None:
    """Batched generation with left padding gives the same predictions as generating each prompt alone."""
    from deco_core.data.shapes import eval_mc_samples, eval_rec_samples, eval_vqa_samples
    from deco_core.eval.generate import encode_prompts, generate_local

    records = list(eval_mc_samples(2, seed=1)) + list(eval_vqa_samples(2, seed=1)) + list(eval_rec_samples(2, seed=1))
    ids, mask = encode_prompts(tiny_model, [get_task("shapes-vqa").build_prompt(r["json"]) for r in records])
    assert mask[:, 0].tolist().count(0) > 0 and mask[:, -1].all()  # pads on the left, real tokens end every row
    batched = generate_local(tiny_model, records, "shapes-vqa", batch_size=len(records), max_new_tokens=6)
    single = generate_local(tiny_model, records, "shapes-vqa", batch_size=1, max_new_tokens=6)
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert all(r["prediction"] for r in batched)


def test_blind_images_depend_on_the_question_alone_not_on_its_batch(tiny_model, monkeypatch) -> None:
    """The blind baseline shows each question the same image whatever batch it is in (and never its own), so
    blind scores do not move with eval batch size, actor count or block order."""
    import numpy as np

    from deco_core.data.shapes import eval_pope_samples
    from deco_core.data.transforms import ImageTransform
    from deco_core.eval import generate

    shown: list[tuple[str, bytes]] = []

    def fake_generate(model, prompts, pixels, max_new_tokens):  # records what each prompt was shown
        shown.extend((p, np.asarray(x).tobytes()) for p, x in zip(prompts, pixels, strict=True))
        return ["no"] * len(prompts)

    monkeypatch.setattr(generate, "generate_answers", fake_generate)
    task = get_task("shapes-pope")
    transform = ImageTransform.from_vision_config(tiny_model.cfg.vision)
    questions = [generate.decode_question(r, task, transform) for r in eval_pope_samples(12, seed=3)]
    generate.answer_questions(tiny_model, task, questions, 3, blind=True)
    whole = shown[len(questions):]  # the blind half of the calls
    shown.clear()
    generate.answer_questions(tiny_model, task, questions[:5], 3, blind=True)
    first = shown[5:]
    shown.clear()
    generate.answer_questions(tiny_model, task, questions[5:], 3, blind=True)
    assert whole == first + shown[7:]
    own = {q.prompt: q.pixels.tobytes() for q in questions}
    assert all(image != own[prompt] for prompt, image in whole)


def test_undecodable_record_becomes_a_counted_zero_row(tiny_model) -> None:
    """A record with a corrupt image yields a row with an error reason and score 0, not a crash or a drop."""
    from deco_core.data.shapes import eval_vqa_samples
    from deco_core.eval.generate import generate_local

    good = next(iter(eval_vqa_samples(1, seed=0)))
    bad = {**good, "__key__": "broken", "png": b"not a png"}
    rows = generate_local(tiny_model, [good, bad], "shapes-vqa", batch_size=2, max_new_tokens=3)
    assert [r["error"] for r in rows] == ["", "corrupt_image"]
    assert rows[1]["score"] == 0.0 and rows[1]["prediction"] == ""


def test_report_writes_tables_chart_and_worst_case_images(tmp_path) -> None:
    """The report folder holds markdown, HTML (escaped), the bar chart and one PNG per worst case."""
    from deco_core.eval.report import WorstCase, write_report

    case = WorstCase("shapes-vqa", "q1", "<image>\nWhat colour?", "<b>blue</b>", {"answers": ["red"]}, 0.0,
                     _image_png())
    paths = write_report(tmp_path, {"shapes-vqa": {"accuracy": 0.5, "n": 2.0}}, {"open-ended VQA": 0.5},
                         {"shapes-vqa": "open-ended VQA"}, {"shapes-vqa": "accuracy"}, {"shapes-vqa": [case]})
    assert paths["chart"].read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / case.image_file).is_file()
    page = paths["html"].read_text()
    assert "&lt;b&gt;blue&lt;/b&gt;" in page and "<b>blue</b>" not in page
    assert "| shapes-vqa | open-ended VQA | accuracy | 0.5000 |" in paths["markdown"].read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "shapes-vqa2"], "valid: shapes-vqa"),
    (["--tasks", "vqav2"], "no --data TASK=URI for ['vqav2']"),
    (["--tasks", "shapes-vqa", "--data", "shapes-vqa"], "expected TASK=URI"),
])
def test_deco_eval_rejects_bad_arguments_before_any_work(args: list[str], message: str, tmp_path) -> None:
    """`deco eval` exits non-zero naming the problem for unknown tasks, missing public data or a bad --data."""
    from typer.testing import CliRunner

    from deco_core.cli import app

    result = CliRunner().invoke(app, ["eval", "--model", str(tmp_path), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_eval_set_fingerprint_follows_everything_that_shapes_the_set() -> None:
    """The cached eval set is keyed by size, seed and the generator config: any change gives a new key."""
    from deco_core.data.shapes import ShapesConfig
    from deco_core.eval.runner import eval_set_fingerprint

    base = eval_set_fingerprint(500, 0, ShapesConfig())
    assert base == eval_set_fingerprint(500, 0, ShapesConfig())
    changed = [eval_set_fingerprint(400, 0, ShapesConfig()), eval_set_fingerprint(500, 1, ShapesConfig()),
               eval_set_fingerprint(500, 0, ShapesConfig(image_size=64)),
               eval_set_fingerprint(500, 0, ShapesConfig(coord_step=0.05)),
               eval_set_fingerprint(500, 0, ShapesConfig(max_objects=3))]
    assert base not in changed and len(set(changed)) == len(changed)


def test_rec_reports_attribute_and_position_only_expressions_apart() -> None:
    """shapes-rec splits Acc@0.5 by expression kind; data without the tag (RefCOCO) gets the overall score only."""
    box = [0.1, 0.1, 0.3, 0.3]
    rows = [{"prediction": "[0.10,0.10,0.30,0.30]", "references": {"bbox": box, "question_type": "ground"}},
            {"prediction": "[0.60,0.60,0.90,0.90]", "references": {"bbox": box, "question_type": "ground"}},
            {"prediction": "[0.10,0.10,0.30,0.30]", "references": {"bbox": box, "question_type": "spatial_ground"}}]
    scores = get_task("shapes-rec").score(rows)
    assert scores["acc_at_0.5"] == pytest.approx(2 / 3)
    assert scores["acc_at_0.5_attribute"] == 0.5 and scores["n_attribute"] == 2
    assert scores["acc_at_0.5_position"] == 1.0 and scores["n_position"] == 1
    plain = get_task("refcoco").score([{"prediction": r["prediction"], "references": {"bbox": box}} for r in rows])
    assert "acc_at_0.5_attribute" not in plain


def test_shapes_vqa_and_mc_report_each_question_kind_apart() -> None:
    """A model that answers one shape to every shape question scores that kind at its share, visible beside the
    overall accuracy; public benchmarks with question types of their own (VQAv2) get no per-kind split."""
    def row(pred: str, answer: str, kind: str) -> dict:
        return {"prediction": pred, "references": {"answers": [answer] * 10, "question_type": kind}}

    rows = [row("circle", "circle", "shape"), row("circle", "square", "shape"), row("circle", "triangle", "shape"),
            row("red", "red", "colour"), row("blue", "blue", "colour")]
    scores = get_task("shapes-vqa").score(rows)
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["accuracy_shape"] == pytest.approx(1 / 3) and scores["n_shape"] == 3
    assert scores["accuracy_colour"] == 1.0 and scores["n_colour"] == 2
    mc = get_task("shapes-mc").score([{"prediction": "A", "references": {"answers": ["B"], "question_type": "which",
                                                                        "choices": {"A": "red", "B": "blue"}}}])
    assert mc["accuracy_which"] == 0.0 and mc["n_which"] == 1
    public = get_task("vqav2").score([row("circle", "circle", "what shape")])
    assert not any(k.startswith("accuracy_") for k in public)
