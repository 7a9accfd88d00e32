"""The GUI workers give checkpoint segmentation every core unless a training runs."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from napari_dgc._qt import workers
from napari_dgc.config import TrainConfig
from napari_dgc.training.events import CheckpointEvent, FinishedEvent


class RecordingReview:
    """Stands in for a CheckpointReview: records the ``workers`` of every call."""

    path = Path("run")

    def __init__(self, missing: list[str] | None = None):
        self.calls: list[tuple[str, str, int | None]] = []
        self.missing = list(missing or [])

    def labels(self, checkpoint_id, *, workers=None):
        self.calls.append(("labels", checkpoint_id, workers))
        return {}

    def figures(self, checkpoint_id, *, workers=None):
        self.calls.append(("figures", checkpoint_id, workers))
        if checkpoint_id in self.missing:
            self.missing.remove(checkpoint_id)
        return None

    def checkpoints_without_figures(self):
        return list(self.missing)


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 4)


def fake_train(run_dir: Path):
    def train(inputs, config, run_dir_argument, *, resume):
        yield CheckpointEvent(step=1, checkpoint_id="step-000001", run_dir=run_dir)
        yield FinishedEvent(step=1, run_dir=run_dir)

    return train


def test_training_leaves_a_core_and_gives_it_back(four_cores, monkeypatch, tmp_path):
    assert workers.segmentation_workers() == 4
    monkeypatch.setattr(workers, "train", fake_train(tmp_path))
    review = RecordingReview()
    opened = []

    def open_review(run_dir, device):
        opened.append((run_dir, device))
        return review

    events = workers.training_events([], TrainConfig(), tmp_path, resume=False, open_review=open_review)
    next(events)  # the checkpoint event: the training is running
    assert workers.segmentation_workers() == 3
    next(events)  # the checkpoint's segmentation, inside the training
    assert review.calls == [("labels", "step-000001", 3), ("figures", "step-000001", 3)]
    assert [run_dir for run_dir, _ in opened] == [tmp_path]  # opened once, at the first checkpoint
    events.close()  # stopped by the user
    assert workers.segmentation_workers() == 4


def test_review_worker_uses_every_core_without_training(four_cores):
    review = RecordingReview(missing=["step-000002"])
    requests = queue.SimpleQueue()
    requests.put("step-000001")
    list(workers.review_events(review, requests, sweep=True))
    assert review.calls == [
        ("labels", "step-000001", 4),
        ("figures", "step-000001", 4),
        ("figures", "step-000002", 4),
    ]


def test_one_core_still_gets_one_worker(monkeypatch, tmp_path):
    monkeypatch.setattr(workers, "usable_cores", lambda: 1)
    monkeypatch.setattr(workers, "train", fake_train(tmp_path))
    events = workers.training_events([], TrainConfig(), tmp_path, resume=False, open_review=None)
    next(events)
    assert workers.segmentation_workers() == 1
    events.close()
