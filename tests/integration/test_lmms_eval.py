"""Integration test: lmms-eval runs a local task through the ``deco`` entry-point plugin on a tiny exported model.

Skipped unless lmms-eval is installed (``pip install -e ".[lmms]"``, see the README). Nothing is downloaded: the
model is an untrained tiny DecoModel saved here, and the task is a local YAML file over a parquet file of
ShapesWorld POPE questions, answered by generation and scored by exact_match.

lmms-eval 0.7.3 turns every model output into a string before scoring (``unwrap_generation_output``), so its
loglikelihood and multiple_choice tasks fail for every model; the plugin's ``loglikelihood`` is therefore checked
on lmms-eval ``Instance`` requests directly.
"""

from __future__ import annotations

import importlib.util
import io
import math
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
if importlib.util.find_spec("torchvision") is not None:  # lmms-eval and transformers' image processors import it
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:  # PyPI's CUDA-linked build next to CPU torch: "torchvision::nms does not exist"
        pytest.fail(f"torchvision is installed but cannot be imported ({exc}); install 0.28.0+cpu from the PyTorch "
                    "CPU index: make install-lmms (see the README)", pytrace=False)

pytestmark = pytest.mark.integration

N_QUESTIONS = 8  # 6 POPE questions per image: two images
TASK = "deco_shapes_pope"

TASK_YAML = """task: deco_shapes_pope
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: image
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
output_type: generate_until
generation_kwargs:
  max_new_tokens: 4
  until: ["\\n"]
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
metadata:
  version: 0.0
"""


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory, shapes_tokenizer, tiny_cfg) -> str:
    """An untrained tiny DecoModel exported with save_pretrained."""
    from deco_core.model.deco import DecoModel

    out = tmp_path_factory.mktemp("lmms-model")
    DecoModel.from_config(tiny_cfg.model, shapes_tokenizer).save_pretrained(out)
    return str(out)


def _pope_rows() -> list[dict]:
    """N_QUESTIONS ShapesWorld POPE questions: id, question (no image placeholder), yes/no answer, PNG bytes."""
    from deco_core.data.prompts import IMAGE_TOKEN
    from deco_core.data.shapes_eval import eval_pope_samples

    return [{"question_id": s["json"]["question_id"],
             "question": s["json"]["conversations"][0]["value"].replace(IMAGE_TOKEN, "").strip(),
             "answer": s["json"]["label"], "image": {"bytes": s["png"], "path": None}}
            for s in eval_pope_samples(N_QUESTIONS, seed=0)]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The questions as a parquet file with an Image column, and the task YAML beside it."""
    from datasets import Dataset, Features, Image, Value

    rows = _pope_rows()
    features = Features({"question_id": Value("string"), "question": Value("string"), "answer": Value("string"),
                         "image": Image()})
    tasks = tmp_path_factory.mktemp("lmms-tasks")
    data = tasks / "pope.parquet"
    Dataset.from_list(rows, features=features).to_parquet(str(data))
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(data=data))
    return tasks


def test_lmms_eval_runs_a_local_task_through_the_deco_plugin(exported_model, task_dir, tmp_path,
                                                               monkeypatch) -> None:
    """The model resolves through the entry point, every question is answered once, and the task reports
    exact_match as a number in [0, 1]."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager

    from deco_core.eval.lmms_plugin import MODEL_ID

    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    assert get_model(MODEL_ID).__name__ == "DecoLMMS"  # registered by the entry point, not imported by hand

    results = simple_evaluate(
        model=MODEL_ID, model_args=f"pretrained={exported_model},max_new_tokens=4", tasks=[TASK], batch_size=4,
        device="cpu", task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        log_samples=True, bootstrap_iters=0)

    assert results is not None
    value = results["results"][TASK]["exact_match,none"]
    assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, value
    assert results["n-samples"][TASK]["effective"] == N_QUESTIONS
    samples = results["samples"][TASK]
    assert sorted(s["doc_id"] for s in samples) == list(range(N_QUESTIONS))
    assert all(isinstance(s["resps"][0][0], str) for s in samples)


def test_plugin_loglikelihood_scores_both_continuation_forms(exported_model) -> None:
    """(log p, is_greedy) per request: finite and <= 0, and a multiple_choice continuation (" yes") scores the
    same as a loglikelihood task's doc_to_target (-> "yes" after the delimiter)."""
    from lmms_eval.api.instance import Instance
    from lmms_eval.models import get_model
    from PIL import Image

    from deco_core.eval.lmms_plugin import MODEL_ID

    lm = get_model(MODEL_ID).create_from_arg_string(f"pretrained={exported_model}", {"batch_size": 2})
    docs = [{**row, "image": Image.open(io.BytesIO(row["image"]["bytes"]))} for row in _pope_rows()[:2]]
    lm.task_dict = {TASK: {"test": docs}}

    def visual(doc: dict) -> list:
        return [doc["image"]]

    def request(doc_id: int, continuation) -> Instance:
        args = (docs[doc_id]["question"], continuation, visual, doc_id, TASK, "test")
        return Instance(request_type="loglikelihood", arguments=args, idx=0,
                        metadata={"task": TASK, "doc_id": doc_id, "repeats": 1})

    requests = [request(i, cont) for i in range(len(docs)) for cont in (" yes", " no", lambda doc: "yes")]
    results = lm.loglikelihood(requests)
    assert len(results) == len(requests)
    for logp, greedy in results:
        assert isinstance(logp, float) and math.isfinite(logp) and logp <= 0.0
        assert isinstance(greedy, bool)
    for i in range(len(docs)):
        assert results[3 * i + 2][0] == pytest.approx(results[3 * i][0], abs=1e-5)
