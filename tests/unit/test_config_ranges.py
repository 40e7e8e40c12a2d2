"""Numeric settings are range-checked at compose time (deco_core/config_ranges.py, ranges declared in
deco_core/config_schema.py): every numeric field has a declared range, out-of-range values are rejected naming the
full key, the value and the range; plus the config errors around them (missing file, one-sided shard sources)."""

from __future__ import annotations

import pytest

from deco_core.config import Config, ConfigError, compose, from_dict, to_dict
from deco_core.config_ranges import check_ranges, numeric_fields
from deco_core.config_schema import SECTION_RANGES

# (override, the key the error must name, a phrase of the allowed range)
BAD_VALUES = [
    ("pretrain.epochs=-1", "pretrain.epochs", ">= 1"),
    ("finetune.num_to_keep=0", "finetune.num_to_keep", ">= 1"),
    ("pretrain.max_failures=-2", "pretrain.max_failures", ">= -1"),
    ("finetune.max_failures=-2", "finetune.max_failures", ">= -1"),
    ("data.samples_per_shard=0", "data.samples_per_shard", ">= 1"),
    ("data.caption_samples=-10", "data.caption_samples", ">= 1"),
    ("model.tokenizer.max_length=-1", "model.tokenizer.max_length", ">= 1"),
    ("eval.batch_size=-1", "eval.batch_size", ">= 1"),
    ("ray.num_cpus=0", "ray.num_cpus", ">= 1"),
    ("data.preprocess_cpus=-1", "data.preprocess_cpus", "> 0"),
    ("pretrain.cpus_per_worker=-1", "pretrain.cpus_per_worker", "> 0"),
    ("finetune.lr=0", "finetune.lr", "> 0"),
    ("pretrain.lr=nan", "pretrain.lr", "> 0"),
    ("pretrain.warmup_ratio=1.0", "pretrain.warmup_ratio", "[0, 1)"),
    ("finetune.micro_batch_size=0", "finetune.micro_batch_size", ">= 1"),
    ("pretrain.max_steps=0", "pretrain.max_steps", ">= 1"),
    ("pretrain.betas=[0.9,1.5]", "pretrain.betas[1]", "[0, 1)"),
    ("data.max_bad_fraction=1.0", "data.max_bad_fraction", "[0, 1)"),
    ("data.format_mix.pope=-1", "data.format_mix.pope", ">= 0"),
    ("data.shapes.seed=-1", "data.shapes.seed", ">= 0"),
    ("model.projector.num_tokens=0", "model.projector.num_tokens", ">= 1"),
    ("data.storage.connect_timeout_s=0", "data.storage.connect_timeout_s", "> 0"),
    ("eval.num_actors=0", "eval.num_actors", ">= 1"),
    ("ray.object_store_memory_mb=-1", "ray.object_store_memory_mb", ">= 0"),
    ("model.vision.select_layer=7", "model.vision.select_layer", "[-4, 3]"),
]


@pytest.mark.parametrize(("override", "key", "allowed"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_out_of_range_value_is_rejected_naming_key_value_and_range(override: str, key: str, allowed: str) -> None:
    """Each bad numeric override raises ConfigError at compose time: "config key '<key>' = <value>: expected ..."."""
    value = override.split("=", 1)[1].split(",")[-1].strip("[]")
    with pytest.raises(ConfigError) as info:
        compose("pipeline/tiny", [override])
    message = str(info.value)
    assert f"config key '{key}' = " in message and value.rstrip("0").rstrip(".") in message, message
    assert allowed in message, message


def test_every_numeric_field_declares_a_range() -> None:
    """Walking the whole schema finds every int/float field (sections, lists of sections, optional fields,
    number lists and dicts) and each has a range, in its field metadata or in SECTION_RANGES."""
    fields = numeric_fields(Config, SECTION_RANGES)
    assert {"pretrain.epochs", "data.pretrain_sources[].weight", "model.vision.image_mean", "data.format_mix",
            "data.shapes.small_frac", "model.projector.qformer_width", "ray.num_cpus"} <= set(fields)
    assert [k for k, rng in fields.items() if rng is None] == []


def test_defaults_lie_inside_their_ranges() -> None:
    """The schema's own defaults pass the range check (both training sections and every nested section)."""
    assert check_ranges(Config, to_dict(Config()), SECTION_RANGES) == []


def test_optional_fields_accept_null_and_edge_values() -> None:
    """None for optional fields and the inclusive edges of each range compose."""
    cfg = compose("pipeline/tiny", ["pretrain.max_steps=null", "ray.num_cpus=null", "pretrain.max_failures=-1",
                                    "data.max_bad_fraction=0", "data.shuffle_buffer=0", "eval.worst_cases=0"])
    assert cfg.pretrain.max_steps is None and cfg.ray.num_cpus is None and cfg.pretrain.max_failures == -1


def test_ranges_apply_to_list_sections_and_from_dict() -> None:
    """A source weight is checked with its list index, and configs rebuilt by from_dict are checked too."""
    data = to_dict(compose("pipeline/tiny"))
    data["data"]["pretrain_sources"] = [{"uri": "/a", "weight": 1.0}, {"uri": "/b", "weight": -2.0}]
    data["data"]["finetune_sources"] = [{"uri": "/c", "weight": 1.0}]
    with pytest.raises(ConfigError, match=r"'data\.pretrain_sources\[1\]\.weight' = -2\.0: expected a number > 0"):
        from_dict(data)


def test_section_check_errors_are_config_errors() -> None:
    """A section's own cross-field check (ShapesConfig: min_objects <= max_objects) is a ConfigError, not a
    bare ValueError."""
    with pytest.raises(ConfigError, match=r"min_objects/max_objects"):
        compose("pipeline/tiny", ["data.shapes.min_objects=3", "data.shapes.max_objects=2"])


def test_missing_config_file_names_the_path_once_and_the_valid_refs() -> None:
    """A missing top-level file is named as given, once, with the valid names of its group and the ref form."""
    with pytest.raises(ConfigError) as info:
        compose("conf/pipeline/nope.yaml")
    message = str(info.value)
    assert message.startswith("config file not found: conf/pipeline/nope.yaml;")
    assert message.count("nope.yaml") == 1 and "conf/conf" not in message
    assert "llava7b, retrain, tiny" in message and "pipeline/<name>" in message


def test_finetune_sources_alone_name_the_missing_pretrain_sources() -> None:
    """Only data.finetune_sources set: composing fails naming data.pretrain_sources (the pretrain stage would have
    no data); without 'pretrain' in pipeline.stages it composes."""
    with pytest.raises(ConfigError, match=r"'data\.pretrain_sources' is empty while data\.finetune_sources is set"):
        compose("pipeline/tiny", ["data.finetune_sources=[{uri: /d/ft}]"])
    cfg = compose("pipeline/tiny", ["data.finetune_sources=[{uri: /d/ft}]", "finetune.init_from=/m",
                                    "pipeline.stages=[prepare_data,finetune,evaluate]"])
    assert cfg.data.finetune_sources[0].uri == "/d/ft"
