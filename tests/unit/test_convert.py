"""Converters from public dataset formats: committed text fixtures + images written at test time."""

from __future__ import annotations

import io
import logging
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from deco_core.data.convert import CONVERTERS, ConversionStats, SkipRecord, get_converter
from deco_core.data.convert.gqa import convert_gqa
from deco_core.data.convert.llava_instruct import convert_llava_instruct
from deco_core.data.convert.llava_pretrain import convert_llava_pretrain
from deco_core.data.convert.mmbench import convert_mmbench
from deco_core.data.convert.mme import convert_mme
from deco_core.data.convert.pope import convert_pope
from deco_core.data.convert.refcoco import convert_refcoco
from deco_core.data.convert.vqav2 import convert_vqav2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "public_formats"
SUFFIX = "Answer the question using a single word or phrase."
MC_SUFFIX = "Answer with the option's letter from the given choices directly."


def _fixture(tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _image(
    path: Path, size: tuple[int, int] = (16, 12), colour: tuple[int, int, int] = (10, 120, 200)
) -> bytes:
    """Write a solid image whose format follows the suffix; returns the file bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.read_bytes()


def _pixels(data: bytes) -> list[Any]:
    return list(Image.open(io.BytesIO(data)).convert("RGB").getdata())


def _turns(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": answer}]


def _accounted(stats: ConversionStats, records: int) -> None:
    assert stats.records_ok + stats.total_skipped == records, stats.summary()


def test_registry_lists_every_format_and_rejects_unknown_names() -> None:
    """The registry maps each public format to a callable and a description; unknown names list valid ones."""
    assert set(CONVERTERS) == {
        "llava_pretrain",
        "llava_instruct",
        "refcoco",
        "vqav2",
        "gqa",
        "pope",
        "mme",
        "mmbench",
    }
    for name, (function, description) in CONVERTERS.items():
        assert callable(function) and function.__name__ == f"convert_{name}" and description
    with pytest.raises(KeyError, match="llava_pretrain"):
        get_converter("llava")


def test_llava_pretrain_converts_field_by_field(tmp_path: Path) -> None:
    """LLaVA-558K records become plain-layout caption samples; JPEG bytes pass through, PNG is re-encoded."""
    root = _fixture(tmp_path, "llava_pretrain")
    jpg = _image(root / "00453" / "004539375.jpg")
    png = _image(root / "00223" / "002239345.png", colour=(1, 2, 3))
    (root / "00000").mkdir()
    (root / "00000" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    stats = ConversionStats("llava_pretrain")
    samples = list(convert_llava_pretrain(root / "blip_laion_cc_sbu_558k.json", root, stats=stats))
    assert [s["__key__"] for s in samples] == ["llava_pretrain_000000000", "llava_pretrain_000000001"]
    assert samples[0]["jpg"] == jpg and "png" not in samples[0]
    assert samples[0]["json"] == {
        "id": "004539375", "task": "caption",
        "conversations": [{"from": "human", "value": "<image>"},
                          {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}],
        "meta": {"source": "llava_pretrain", "image": "00453/004539375.jpg",
                 "prompt": "Render a clear and concise summary of the photo."},
    }  # fmt: skip
    assert "jpg" not in samples[1] and _pixels(samples[1]["png"]) == _pixels(png)
    assert samples[1]["json"]["conversations"][1]["value"] == "a grey watch with an army style strap"
    assert stats.skipped == Counter(
        missing_image=1, unknown_role=1, bad_record=2, bad_image=1, bad_conversation=1
    )
    _accounted(stats, 8)


def test_llava_instruct_searches_roots_and_keeps_text_only_records(tmp_path: Path) -> None:
    """Images resolve under any root, '<image>' moves to the front, text-only records carry no image key."""
    root = _fixture(tmp_path, "llava_instruct")
    coco = _image(root / "a" / "coco" / "train2017" / "000000033471.jpg")
    gqa = _image(root / "b" / "gqa" / "images" / "2354786.jpg", colour=(50, 50, 50))
    gif = root / "b" / "ocr_vqa" / "images" / "689852649.gif"
    _image(gif, colour=(255, 0, 0))
    stats = ConversionStats("llava_instruct")
    samples = list(
        convert_llava_instruct(root / "llava_v1_5_mix665k.json", [root / "a", root / "b"], stats=stats)
    )
    assert [s["json"]["id"] for s in samples] == ["000000033471", "2354786", "i6IyJda_0", "689852649"]
    assert samples[0]["jpg"] == coco and samples[1]["jpg"] == gqa
    assert samples[0]["json"] == {
        "id": "000000033471", "task": "instruct",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus in the image?"},
            {"from": "gpt", "value": "The bus in the image is white and red."},
            {"from": "human", "value": "What feature can be seen on the back of the bus?"},
            {"from": "gpt", "value": "The back of the bus features an advertisement."}],
        "meta": {"source": "llava_instruct", "image": "coco/train2017/000000033471.jpg"},
    }  # fmt: skip
    assert samples[1]["json"]["conversations"][0]["value"] == "<image>\nIs the sky dark?\n" + SUFFIX
    assert set(samples[2]) == {"__key__", "json"} and samples[2]["json"]["meta"]["image"] is None
    assert samples[2]["json"]["conversations"][0] == {
        "from": "human",
        "value": "How to tell if a customer segment is well segmented?",
    }
    assert "png" in samples[3] and _pixels(samples[3]["png"])[0] == (255, 0, 0)
    assert stats.skipped == Counter(bad_conversation=3, missing_image=1, unknown_role=1, bad_record=1)
    _accounted(stats, 10)


def test_refcoco_normalises_boxes_per_sentence(tmp_path: Path) -> None:
    """Each sentence becomes a REC sample with a normalised xyxy box and the LLaVA-1.5 box text."""
    root = _fixture(tmp_path, "refcoco")
    jpg = _image(root / "images" / "COCO_train2014_000000581857.jpg", size=(100, 50))
    _image(root / "images" / "COCO_train2014_000000000002.jpg", size=(64, 48))
    stats = ConversionStats("refcoco")
    samples = list(convert_refcoco(root / "refcoco_val.json", root / "images", split="testA", stats=stats))
    prompt = "Please provide the bounding box coordinate of the region this sentence describes: {}."
    assert [s["__key__"] for s in samples] == ["refcoco_00000000_00", "refcoco_00000000_01"]
    assert samples[0]["jpg"] == jpg
    assert samples[1]["json"] == {
        "id": "7_1", "task": "rec", "conversations": _turns(prompt.format("left lady"), "[0.10, 0.10, 0.40, 0.50]"),
        "meta": {"source": "refcoco", "image": "COCO_train2014_000000581857.jpg", "expression": "left lady"},
        "answers": ["[0.10, 0.10, 0.40, 0.50]"], "bbox": [0.1, 0.1, 0.4, 0.5], "split": "testA",
        "question_id": "7_1",
    }  # fmt: skip
    assert samples[0]["json"]["conversations"][0]["value"].endswith("describes: woman in red.")
    assert stats.skipped == Counter(bad_bbox=2, size_mismatch=1, bad_record=1)
    assert stats.converted == 2
    _accounted(stats, 5)


def test_vqav2_joins_questions_and_annotations(tmp_path: Path) -> None:
    """Questions join annotations by question_id: 10 answers, MC answer as the gpt turn, suffix appended."""
    root = _fixture(tmp_path, "vqav2")
    jpg = _image(root / "val2014" / "COCO_val2014_000000000042.jpg")
    stats = ConversionStats("vqav2")
    samples = list(
        convert_vqav2(
            root / "v2_OpenEnded_mscoco_val2014_questions.json",
            root / "v2_mscoco_val2014_annotations.json",
            root / "val2014",
            stats=stats,
        )
    )
    assert [s["json"]["question_id"] for s in samples] == ["42000", "42001"]
    assert samples[0]["jpg"] == jpg and samples[1]["jpg"] == jpg
    assert samples[1]["json"] == {
        "id": "42001", "task": "vqa", "conversations": _turns("How many cats are there?\n" + SUFFIX, "2"),
        "meta": {"source": "vqav2", "image_id": 42, "answer_type": "number", "question_type": "how many"},
        "answers": ["2"] * 9 + ["two"], "split": "val", "question_id": "42001",
    }  # fmt: skip
    assert samples[0]["json"]["answers"] == ["black"] * 8 + ["dark", "black and white"]
    assert stats.skipped == Counter(missing_image=1, missing_annotation=1, bad_record=1)
    _accounted(stats, 5)


def test_gqa_keeps_balanced_questions_and_counts_the_rest(tmp_path: Path) -> None:
    """Balanced GQA questions convert; unbalanced, unanswered, broken and image-less ones are counted."""
    root = _fixture(tmp_path, "gqa")
    jpg = _image(root / "images" / "n288870.jpg")
    stats = ConversionStats("gqa")
    samples = list(convert_gqa(root / "testdev_balanced_questions.json", root / "images", stats=stats))
    assert len(samples) == 1 and samples[0]["jpg"] == jpg
    assert samples[0]["__key__"] == "gqa_000000000"
    assert samples[0]["json"] == {
        "id": "20968379", "task": "gqa", "conversations": _turns("Do the shorts have dark color?\n" + SUFFIX, "yes"),
        "meta": {"source": "gqa", "image_id": "n288870"}, "answers": ["yes"], "split": "testdev",
        "question_id": "20968379",
    }  # fmt: skip
    assert stats.skipped == Counter(not_balanced=1, missing_image=1, missing_answer=1, bad_record=1)
    _accounted(stats, 5)


def test_pope_reads_split_from_file_name_and_validates_labels(tmp_path: Path) -> None:
    """POPE jsonl lines become yes/no samples tagged with the split named in the file; bad lines are counted."""
    root = _fixture(tmp_path, "pope")
    jpg = _image(root / "val2014" / "COCO_val2014_000000310196.jpg")
    stats = ConversionStats("pope")
    samples = list(convert_pope(root / "coco_pope_adversarial.json", root / "val2014", stats=stats))
    assert [s["json"]["label"] for s in samples] == ["yes", "no"]
    assert samples[1]["jpg"] == jpg and samples[1]["__key__"] == "pope_adversarial_0000001"
    assert samples[1]["json"] == {
        "id": "2", "task": "pope", "conversations": _turns("Is there a dining table in the image?\n" + SUFFIX, "no"),
        "meta": {"source": "pope", "image": "COCO_val2014_000000310196.jpg", "pope_split": "adversarial"},
        "answers": ["no"], "label": "no", "split": "test", "question_id": "2",
    }  # fmt: skip
    assert stats.skipped == Counter(bad_record=1, bad_label=1, missing_image=1)
    _accounted(stats, 5)
    renamed = shutil.copy(root / "coco_pope_adversarial.json", root / "pope.jsonl")
    with pytest.raises(ValueError, match="pope_split"):
        next(convert_pope(renamed, root / "val2014"))
    assert len(list(convert_pope(renamed, root / "val2014", pope_split="random"))) == 2


def test_mme_reads_subtask_folders(tmp_path: Path) -> None:
    """MME lines become yes/no samples per subtask with the LLaVA prompt; images may sit in images/."""
    root = _fixture(tmp_path, "mme")
    jpg = _image(root / "existence" / "000000006040.jpg")
    _image(root / "count" / "000000450303.jpg")
    art = _image(root / "artwork" / "images" / "10002.jpg", colour=(9, 9, 9))
    stats = ConversionStats("mme")
    samples = list(convert_mme(root, stats=stats))
    assert [s["json"]["meta"]["subtask"] for s in samples] == ["artwork", "count", "existence", "existence"]
    assert samples[0]["jpg"] == art and samples[3]["jpg"] == jpg
    question = "Is there a bed in this image? Please answer yes or no."
    assert samples[3]["__key__"] == "mme_existence_00002"
    assert samples[3]["json"] == {
        "id": "existence/000000006040.jpg/2", "task": "mme",
        "conversations": _turns("Is there a bed in this image?\n" + SUFFIX, "No"),
        "meta": {"source": "mme", "subtask": "existence", "category": "perception", "image": "000000006040.jpg",
                 "original_question": question},
        "answers": ["No"], "label": "no", "split": "test", "question_id": "existence/000000006040.jpg/2",
    }  # fmt: skip
    assert stats.skipped == Counter(missing_image=1, bad_record=1, bad_label=1)
    _accounted(stats, 7)
    assert len(list(convert_mme(root, subtasks=["existence"]))) == 2
    with pytest.raises(ValueError, match="existence"):
        list(convert_mme(root, subtasks=["celebrity"]))


def test_mmbench_builds_llava_prompts_and_resolves_image_references(tmp_path: Path) -> None:
    """MMBench rows become A-D choice samples: options stop at the first empty cell, hints lead the prompt."""
    root = _fixture(tmp_path, "mmbench")
    stats = ConversionStats("mmbench")
    samples = list(convert_mmbench(root / "mmbench_dev_en.tsv", stats=stats))
    assert [s["json"]["question_id"] for s in samples] == ["0", "1", "1000000"]
    assert samples[0]["jpg"] == samples[2]["jpg"] and _pixels(samples[0]["jpg"])[0][0] > 150
    assert samples[1]["json"] == {
        "id": "1", "task": "mc",
        "conversations": _turns(f"Think about temperature.\nWhich one is warm?\nA. ice\nB. fire\nC. snow\n{MC_SUFFIX}",
                                "B"),
        "meta": {"source": "mmbench", "index": 1, "circular_group": 1, "category": "physical_property_reasoning",
                 "l2-category": "attribute_reasoning"},
        "answers": ["B"], "choices": {"A": "ice", "B": "fire", "C": "snow"}, "split": "dev", "question_id": "1",
    }  # fmt: skip
    assert samples[0]["json"]["conversations"][0]["value"].startswith(
        "<image>\nWhat colour is the square?\nA. red"
    )
    assert samples[2]["json"]["meta"]["circular_group"] == 0 and samples[2]["json"]["answers"] == ["D"]
    assert stats.skipped == Counter(bad_answer=1, bad_image=1, bad_record=1, missing_answer=1)
    _accounted(stats, 7)


def test_stats_log_first_skip_per_reason_and_reject_unknown_reasons(caplog: pytest.LogCaptureFixture) -> None:
    """Skips are counted per reason, the first of each logged as a warning; unknown reasons are an error."""
    stats = ConversionStats("demo")
    with caplog.at_level(logging.DEBUG, logger="deco_core.data.convert.common"):
        for rid in ("a", "b"):
            stats.skip("missing_image", rid, "gone")
        stats.skip("bad_label", "c")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "record a" in warnings[0].getMessage()
    assert (
        stats.summary()
        == "demo: converted 0 samples from 0 records, skipped 3 records (bad_label=1, missing_image=2)"
    )
    assert stats.as_dict() == {
        "converted": 0,
        "records_ok": 0,
        "skipped": 3,
        "skipped/bad_label": 1,
        "skipped/missing_image": 2,
    }
    with pytest.raises(ValueError, match="missing_image"):
        stats.skip("oops", "d")
    with pytest.raises(ValueError, match="bad_record"):
        SkipRecord("oops")


def test_limit_and_whole_file_errors(tmp_path: Path) -> None:
    """`limit` caps converted samples; a missing or mis-shaped annotation file raises naming the file."""
    root = _fixture(tmp_path, "llava_instruct")
    _image(root / "coco" / "train2017" / "000000033471.jpg")
    assert len(list(convert_llava_instruct(root / "llava_v1_5_mix665k.json", root, limit=1))) == 1
    with pytest.raises(FileNotFoundError, match="nope.json"):
        list(convert_llava_pretrain(root / "nope.json", root))
    (root / "dict.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="dict.json"):
        list(convert_llava_pretrain(root / "dict.json", root))
