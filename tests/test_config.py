"""The configuration module: typed groups, one error per bad field, dotted keys, resume rule."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from napari_dgc.config import (
    RESUMABLE_SETTINGS,
    ModelConfig,
    SpatialInit,
    StartPlan,
    TrainConfig,
    differing_settings,
    get_setting,
    parse_setting,
    resumed_config,
    settings_of,
)
from napari_dgc.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_importing_the_config_imports_no_torch():
    probe = "import sys, napari_dgc.config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_groups_round_trip_through_json_with_choices_as_text():
    config = TrainConfig().with_settings({"model.spatial_init": "default", "model.n_clusters": 6})
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model"]["spatial_init"] == "default" and data["model"]["n_clusters"] == 6
    again = TrainConfig.from_dict(data)
    assert again == config and again.model.spatial_init is SpatialInit.DEFAULT


def test_every_bad_field_is_named_in_one_error():
    with pytest.raises(ConfigError) as caught:
        TrainConfig().with_settings({"steps": 0, "seed": -1, "device": 5})
    message = str(caught.value)
    assert "steps must be at least 1" in message and "seed must be at least 0" in message
    assert "device must be text" in message


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": "abc"}, "steps must be a whole number, got 'abc'"),
        ({"steps": True}, "steps must be a whole number"),
        ({"optim.learning_rate": float("nan")}, "optim.learning_rate must be a finite number"),
        ({"optim.weight_decay": float("inf")}, "optim.weight_decay must be a finite number"),
        ({"model": 5}, "model is a group of settings"),
        ({"model.n_clusters": "abc"}, "model.n_clusters must be a whole number"),
        ({"model.colour": "red"}, "unknown model settings: colour"),
        ({"optim.lr": 0.1}, "unknown optim settings: lr"),
        ({"steps.x": 1}, "steps is not a group of settings"),
        ({"model.spatial_kernel": 4}, "model.spatial_kernel must be odd"),
        ({"data.overlap_min": 0.9, "data.overlap_max": 0.5}, "must not exceed data.overlap_max"),
        ({"model.brightness_norm": "yes"}, "must be true or false"),
        ({"model.spatial_init": "sideways"}, "model.spatial_init must be one of identity, default"),
        ({"losses.weight_balance": 2.0}, "losses.weight_balance: retired, the spectral anchor"),
        ({"centroids.init": "random"}, "centroids.init: retired"),
    ],
)
def test_bad_values_get_a_clear_error(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig().with_settings(changes)


def test_optional_settings_accept_null_and_integral_floats_become_ints():
    config = TrainConfig().with_settings({"model.spectral_bands": None, "steps": 300.0})
    assert config.model.spectral_bands is None and config.steps == 300 and isinstance(config.steps, int)
    assert config.optim.learning_rate == 3e-4 and isinstance(
        TrainConfig().with_settings({"optim.learning_rate": 1}).optim.learning_rate, float
    )


def test_parse_setting_reads_json_else_text():
    assert parse_setting("optim.learning_rate=3e-4") == ("optim.learning_rate", 3e-4)
    assert parse_setting("model.spatial_init=default") == ("model.spatial_init", "default")
    assert parse_setting("model.spectral_bands=null") == ("model.spectral_bands", None)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_setting("steps")


def test_resume_may_change_only_steps_checkpoints_and_device():
    created = TrainConfig().with_settings({"model.spectral_channels": 8, "steps": 100})
    resumed = resumed_config(created, {"steps": 300, "device": "cpu"})
    assert resumed.steps == 300 and resumed.model == created.model
    assert differing_settings(created, resumed) == ["steps", "device"]
    with pytest.raises(
        ConfigError, match="only steps, checkpoint_every, device may change, not model.n_clusters"
    ):
        resumed_config(created, {"model.n_clusters": 5})
    assert set(RESUMABLE_SETTINGS) == {"steps", "checkpoint_every", "device"}


def test_settings_list_every_field_once_with_its_default():
    infos = list(settings_of())
    keys = [info.key for info in infos]
    assert len(keys) == len(set(keys))
    default = TrainConfig()
    for info in infos:
        assert get_setting(default, info.key) == info.default, info.key
    assert {info.flag for info in infos if info.flag} >= {"--clusters", "--steps", "--starts", "--lr"}


def test_start_plan_places_the_starts_on_the_run_timeline():
    assert StartPlan.for_run(TrainConfig()).starts == 1  # one start by default (issue 13)
    plan = StartPlan.for_run(
        TrainConfig().with_settings({"steps": 500, "starts.steps": 200, "starts.count": 3})
    )
    assert (plan.starts, plan.selection_step, plan.total_run_steps) == (3, 200, 900)
    assert plan.run_step_offset(1, selecting=True) == 200 and plan.run_step_offset(1, selecting=False) == 400
    short = StartPlan.for_run(TrainConfig().with_settings({"steps": 50}))
    assert short.selection_step == 50  # a run shorter than a start's steps selects at its end


def test_model_config_alone_validates_and_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="model.n_clusters must be between 2 and 64"):
        ModelConfig(n_clusters=1)
    with pytest.raises(ConfigError, match="unknown model settings: colour"):
        ModelConfig.from_dict({"colour": "red"})


def test_docs_settings_page_is_generated_from_the_code():
    spec = importlib.util.spec_from_file_location("make_settings_table", DOCS / "make_settings_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "settings.md").read_text(encoding="utf-8") == module.settings_markdown(), (
        "docs/settings.md is stale: run python docs/make_settings_table.py"
    )
