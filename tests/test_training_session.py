"""The training-session and checkpoint-review models, without Qt or napari."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from _training_helpers import tiny_config, tiny_cube

from napari_dgc.errors import DGCError
from napari_dgc.state.review import ReviewModel
from napari_dgc.state.training import StartRequest, TrainingSession, TrainStatus
from napari_dgc.training.events import (
    CheckpointEvent,
    FinishedEvent,
    ProgressEvent,
    StartSelectedEvent,
    start_name,
)
from napari_dgc.training.loop import train


@dataclass
class ArraySource:
    """What the models need of a cube source: a key, a name and the cube."""

    key: str
    name: str
    cube: np.ndarray


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("session") / "run"
    for _ in train([tiny_cube(seed=1)], tiny_config(steps=8), run_dir):
        pass
    return run_dir


def test_models_import_no_gui_package():
    gui = "{'qtpy', 'napari', 'magicgui', 'pyqtgraph'}"
    probe = (
        "import sys, napari_dgc.state.training, napari_dgc.state.review; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {gui}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_session_requests_and_events(tmp_path):
    session = TrainingSession()
    requests: list[StartRequest] = []
    statuses: list[TrainStatus] = []
    messages: list[str] = []

    def runner(request: StartRequest) -> None:  # what the Qt runner does, minus the worker
        requests.append(request)
        session.begin(request)

    session.start_requested.connect(runner)
    session.status_changed.connect(statuses.append)
    session.message.connect(messages.append)
    config = tiny_config(starts__count=2, starts__steps=4)
    source = ArraySource("a", "leaf", tiny_cube())
    assert session.start(config, tmp_path / "run", [source])
    assert not session.start(config, tmp_path / "other", [source])  # not idle: refused
    assert len(requests) == 1 and requests[0].sources == (source,) and not requests[0].resume
    assert session.status is TrainStatus.RUNNING and session.run_dir == tmp_path / "run"
    assert session.total_run_steps == 10  # 2 starts x 4 steps, then steps 5-6 of the winner

    session.record(ProgressEvent(1, 6, {"total": 1.0}, 3, 1e-3, 0.1, start=1, run_step=5, run_total_steps=10))
    assert session.history.steps.tolist() == [5] and session.history.active_in_step.tolist() == [3]
    assert "active in step 3" in session.progress_text()
    session.record(CheckpointEvent(2, "start1-step-000002", tmp_path / "run", start=1, run_step=6))
    session.record(StartSelectedEvent(1, [10.0, 20.0], tmp_path / "run"))
    assert session.selected_start == 1
    assert messages[-1].startswith("Start 1 continues") and "start 1: 20" in messages[-1]
    session.record(FinishedEvent(6, tmp_path / "run"))
    session.end()
    assert statuses == [TrainStatus.RUNNING, TrainStatus.IDLE]
    assert session.progress_text() == "idle"
    assert start_name(0) == "start 0" and start_name(2, 3) == "start 2 (starts 0–2)"


def test_resume_run_keeps_the_runs_own_settings(headless_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(headless_run, run_dir)
    session = TrainingSession()
    requests: list[StartRequest] = []
    session.start_requested.connect(requests.append)
    session.set_run(run_dir, None)
    form = tiny_config(steps=12, seed=99).with_settings({"model.spectral_channels": 4})
    session.resume_run(form, [ArraySource("a", "leaf", tiny_cube(seed=1))])
    (request,) = requests
    created = tiny_config(steps=8)
    assert request.resume and request.config.steps == 12  # a resume may extend the run...
    assert request.config.seed == created.seed  # ...but keeps everything else of its own
    assert request.config.model.spectral_channels == created.model.spectral_channels


def test_review_model_opens_selects_and_chooses(headless_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(headless_run, run_dir)
    model = ReviewModel()
    requested: list[str] = []
    shown: list[str] = []
    model.segmentation_requested.connect(requested.append)
    model.labels_ready.connect(lambda cid, labels: shown.append(cid))
    model.open_run(run_dir, [ArraySource("a", "leaf", tiny_cube(seed=1))])
    ids = model.checkpoint_ids()
    assert ids == ["step-000002", "step-000004", "step-000006", "step-000008"]
    # Opens at the checkpoint training recommends (not cached yet: a worker's job).
    recommended = model.recommended.checkpoint_id
    assert recommended in ids and model.current == recommended and requested == [recommended]
    assert "✓ recommended" in model.describe_current()
    assert model.marker_steps()[2] == int(recommended[-6:])
    model.select(ids[-1])

    labels = model.review.labels(ids[0])  # as the review worker would
    model.labels_computed(run_dir, ids[0], labels)
    assert shown == []  # not the current checkpoint: not shown
    model.select(ids[0])
    assert shown == [ids[0]]  # cached: shown at once
    model.select_nearest(5.2)
    assert model.current == "step-000006"
    with pytest.raises(DGCError):
        model.select("step-000099")

    model.add_segmented(tmp_path / "another run", ids[1], labels, None)  # another run's result
    assert model.current == "step-000006"
    model.choose_current()
    assert model.chosen == "step-000006" and "★ chosen" in model.describe_current()
    assert model.marker_steps()[:2] == (6, 6)
    series = model.figure_series("loss at checkpoint")
    assert [name for name, *_ in series] == ["total"] and series[0][1] == [2, 4, 6, 8]


def test_live_review_follows_the_newest_checkpoint(headless_run, tmp_path):
    model = ReviewModel()
    sources = [ArraySource("a", "leaf", tiny_cube(seed=1))]
    model.begin_live(headless_run, sources, tiny_config(steps=8))
    assert model.live and model.review is None and model.checkpoints == []
    review = model.review_for(Path(headless_run), "cpu")  # the training worker's call
    assert model.review is review and model.review_for(headless_run) is review
    shown: list[str] = []
    model.labels_ready.connect(lambda cid, labels: shown.append(cid))
    for checkpoint_id in ("step-000002", "step-000004"):
        model.add_segmented(headless_run, checkpoint_id, review.labels(checkpoint_id), None)
    # The newest checkpoint on disk is followed (the run is complete, so step 8).
    assert model.current == "step-000008"
    model.begin_live(headless_run, sources, tiny_config(steps=10))  # resumed: caches kept
    assert model.review is review and model.total_steps == 10
