"""Reading the next batch ahead in a background thread: the same pairs, states and checkpoints."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
from _training_helpers import tiny_config, tiny_cube

from napari_dgc.run_folder import RunDirectory
from napari_dgc.training import loop
from napari_dgc.training.events import ProgressEvent
from napari_dgc.training.loop import train
from napari_dgc.training.sampling import CropPair, PairStream, open_sources

THREAD_PREFIX = "dgc-read-ahead"


def _cubes() -> list[np.ndarray]:
    """Three cubes of different sizes (pairs land on cube changes inside a batch)."""
    rng = np.random.default_rng(7)
    return [rng.random(shape, dtype=np.float32) for shape in [(40, 50, 4), (36, 36, 4), (60, 44, 4)]]


def _stream(cubes, *, read_ahead: bool) -> PairStream:
    return PairStream(open_sources(cubes), 12, (0.2, 0.8), 3, 5, True, 1, read_ahead=read_ahead)


def _assert_same_pairs(got: list[CropPair], want: list[CropPair]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a.cube_index, a.spectral_shift) == (b.cube_index, b.spectral_shift)
        for field in ("pixels", "index_a", "index_b", "match_a", "match_b", "coords_a", "coords_b"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field


def _reader_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith(THREAD_PREFIX)]


# Each call: (size, whole). The first batch is whole (the data-dependent initialisation), one
# later is whole (the centroid fit), and the batch size changes twice (the plan is redone).
CALLS = [(4, True)] + [(4, False)] * 8 + [(4, True)] + [(4, False)] * 4 + [(2, False)] * 3 + [(4, False)] * 3


@pytest.mark.parametrize(("rank", "world_size"), [(0, 1), (0, 2), (1, 2)])
def test_read_ahead_yields_exactly_the_pairs_of_no_read_ahead(rank, world_size):
    cubes = _cubes()
    with _stream(cubes, read_ahead=True) as ahead:
        plain = _stream(cubes, read_ahead=False)
        assert len(CALLS) == 20
        for size, whole in CALLS:
            want = plain.next_batch(size, rank, world_size, whole=whole)
            got = ahead.next_batch(size, rank, world_size, whole=whole)
            _assert_same_pairs(got, want)
            assert ahead.state_dict() == plain.state_dict()


def test_the_state_is_that_of_the_last_batch_returned_and_resumes_the_same_pairs():
    cubes = _cubes()
    ahead, plain = _stream(cubes, read_ahead=True), _stream(cubes, read_ahead=False)
    for _ in range(7):
        ahead.next_batch(4, 0, 2)
        plain.next_batch(4, 0, 2)
    saved = json.loads(json.dumps(ahead.state_dict()))  # as a checkpoint stores it
    assert saved == plain.state_dict()
    ahead.close()
    assert ahead.state_dict() == saved  # closing drops the batch read ahead, not a returned one
    expected = [plain.next_batch(4, 0, 2) for _ in range(6)]
    for read_ahead in (True, False):
        with _stream(cubes, read_ahead=read_ahead) as resumed:
            resumed.next_batch(4, 0, 2)  # something read ahead, then replaced by the loaded state
            resumed.load_state_dict(saved)
            for want in expected:
                _assert_same_pairs(resumed.next_batch(4, 0, 2), want)


def test_the_next_batch_is_read_in_the_background_thread():
    class RecordingCube:
        shape_hw, n_bands, path = (40, 40), 3, "recording.npy"

        def __init__(self):
            self.data = np.ones((40, 40, 3), np.float32)
            self.threads: list[str] = []

        def read_window(self, rows, cols):
            self.threads.append(threading.current_thread().name)
            return self.data[rows, cols]

    cube = RecordingCube()
    stream = PairStream(open_sources([cube]), 12, (0.2, 0.8), 3, 0, read_ahead=True)
    stream.next_batch(2)
    assert cube.threads[:2] == [threading.current_thread().name] * 2  # the first batch: no plan yet
    stream.next_batch(2)  # waits for the background read of batch 2, starts batch 3's
    deadline = time.monotonic() + 30
    while len(cube.threads) < 6 and time.monotonic() < deadline:  # batch 3 is read with no call
        time.sleep(0.01)
    stream.close()
    assert len(cube.threads) == 6
    assert all(name.startswith(THREAD_PREFIX) for name in cube.threads[2:])
    assert not _reader_threads()
    plain = PairStream(open_sources([cube]), 12, (0.2, 0.8), 3, 0)
    plain.next_batch(2)
    assert plain._executor is None and not _reader_threads()  # no read-ahead, no thread


def test_an_error_of_the_background_read_is_raised_by_the_next_batch():
    error = OSError("the disk went away")

    class FailingCube:
        shape_hw, n_bands, path = (40, 40), 3, "failing.npy"

        def __init__(self):
            self.reads = 0

        def read_window(self, rows, cols):
            self.reads += 1
            if self.reads > 2:  # the first batch reads; the one read ahead fails
                raise error
            return np.ones((40, 40, 3), np.float32)[rows, cols]

    cube = FailingCube()
    with PairStream(open_sources([cube]), 12, (0.2, 0.8), 3, 0, read_ahead=True) as stream:
        stream.next_batch(2)
        state = stream.state_dict()
        with pytest.raises(OSError) as raised:
            stream.next_batch(2)
        assert raised.value is error
        assert cube.reads >= 3
        assert stream.state_dict() == state  # the failed batch was not returned


def _checkpoints(path) -> list[tuple]:
    run = RunDirectory.open(path)
    return [run.load_checkpoint_state(info.checkpoint_id) for info in run.checkpoints()]


def _assert_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key != "elapsed_s":  # wall-clock training time
                _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}/{index}")
    else:
        assert a == b, where


def test_training_with_and_without_read_ahead_writes_identical_checkpoints(tmp_path, monkeypatch):
    cubes = [tiny_cube(seed=1), tiny_cube(seed=2), tiny_cube(40, 36, seed=3)]
    config = tiny_config(data__batch_size=2, data__pairs_per_cube=3)
    list(train(cubes, config, tmp_path / "ahead"))
    monkeypatch.setattr(loop, "READ_AHEAD", False)
    list(train(cubes, config, tmp_path / "plain"))
    ahead, plain = _checkpoints(tmp_path / "ahead"), _checkpoints(tmp_path / "plain")
    assert len(ahead) == len(plain) == 3
    _assert_equal(ahead, plain)


def test_stopping_and_finishing_a_run_close_every_stream(tmp_path, monkeypatch):
    streams: list[PairStream] = []
    closed: list[PairStream] = []
    for_config, close = PairStream.for_config, PairStream.close

    def recorded(*args, **kwargs):
        streams.append(for_config(*args, **kwargs))
        return streams[-1]

    def recorded_close(stream):
        closed.append(stream)
        close(stream)

    monkeypatch.setattr(PairStream, "for_config", recorded)
    monkeypatch.setattr(PairStream, "close", recorded_close)
    cubes = [tiny_cube(seed=1), tiny_cube(seed=2)]
    stopped = train(cubes, tiny_config(), tmp_path / "stopped")
    for event in stopped:
        if isinstance(event, ProgressEvent) and event.step == 3:
            assert streams[-1].read_ahead and _reader_threads()  # the next batch is being read
            break
    stopped.close()
    assert closed == streams and not _reader_threads()
    list(train(cubes, tiny_config(), tmp_path / "stopped", resume=True))
    list(train(cubes, tiny_config(starts__count=2, starts__steps=2), tmp_path / "starts"))
    assert len(streams) == 5  # the stopped run, its resume, two starts and the continued winner
    assert closed == streams and not _reader_threads()
