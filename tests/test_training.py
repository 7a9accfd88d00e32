"""Training generator: events, checkpoints, exact resume, reproducibility, re-seeding, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _training_helpers import configured

from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.errors import CheckpointError, ConfigError, CubeFormatError
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.events import LOSS_TERMS, CheckpointEvent, FinishedEvent, ProgressEvent
from napari_dgc.training.loop import train
from napari_dgc.training.trainer import Trainer, cosine_decay

TINY_MODEL = ModelConfig(n_clusters=2, embed_dim=8, spectral_channels=4, spectral_bands=8, meanshift_iters=2)


def tiny_config(**overrides) -> TrainConfig:
    """One start unless ``restarts`` is given (the start selection has tests of its own)."""
    settings = dict(
        model=TINY_MODEL,
        steps=6,
        checkpoint_every=3,
        data__crop_size=12,
        data__batch_size=2,
        data__pairs_per_cube=2,
        device="cpu",
        seed=3,
        starts__count=1,
    )
    settings.update(overrides)
    return configured(**settings)


@pytest.fixture
def cubes(rng):
    """Two small two-material cubes of 10 bands."""
    result = []
    for _ in range(2):
        labels = rng.random((24, 24)) < 0.5
        spectra = np.where(labels[..., None], np.linspace(0, 1, 10), np.linspace(1, 0, 10))
        result.append((spectra + 0.05 * rng.normal(size=spectra.shape)).astype(np.float32))
    return result


def test_events_come_in_order_with_all_loss_terms(cubes, tmp_path):
    events = list(train(cubes, tiny_config(), tmp_path / "run"))
    kinds = [type(e).__name__[0] for e in events]
    assert "".join(kinds) == "PPPCPPPCF"
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert [e.step for e in progress] == list(range(1, 7))
    assert set(progress[0].losses) == set(LOSS_TERMS)
    assert all(np.isfinite(v) for e in progress for v in e.losses.values())
    assert progress[0].total_steps == 6 and progress[0].learning_rate == pytest.approx(3e-4)
    assert 1 <= progress[-1].active_clusters <= 2
    assert [e.checkpoint_id for e in events if isinstance(e, CheckpointEvent)] == [
        "step-000003",
        "step-000006",
    ]
    assert isinstance(events[-1], FinishedEvent) and events[-1].step == 6
    run = RunDirectory.open(tmp_path / "run")
    assert [c.step for c in run.checkpoints()] == [3, 6]
    assert set(run.checkpoints()[0].stats["losses"]) == set(LOSS_TERMS)
    model = run.load_model()
    assert model.predict(torch.from_numpy(cubes[0]).permute(2, 0, 1)[None]).shape == (1, 24, 24)


def _weights(path) -> dict:
    return (
        RunDirectory.open(path)
        .load_model(RunDirectory.open(path).latest_checkpoint().checkpoint_id)
        .state_dict()
    )


def test_stopped_and_resumed_run_ends_with_the_uninterrupted_weights(cubes, tmp_path):
    list(train(cubes, tiny_config(), tmp_path / "straight"))
    interrupted = train(cubes, tiny_config(), tmp_path / "stopped")
    for event in interrupted:
        if isinstance(event, ProgressEvent) and event.step == 4:
            break  # stop after step 4: steps 4.. are redone from checkpoint 3
    interrupted.close()
    assert [c.step for c in RunDirectory.open(tmp_path / "stopped").checkpoints()] == [3]
    resumed = list(train(cubes, tiny_config(), tmp_path / "stopped", resume=True))
    assert [e.step for e in resumed if isinstance(e, ProgressEvent)] == [4, 5, 6]
    straight, stopped = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    assert straight.keys() == stopped.keys()
    for name in straight:
        assert torch.equal(straight[name], stopped[name]), name


def test_same_seed_same_weights_other_seed_other_weights(cubes, tmp_path):
    config = tiny_config(steps=2, checkpoint_every=2)
    list(train(cubes, config, tmp_path / "a"))
    list(train(cubes, config, tmp_path / "b"))
    list(train(cubes, tiny_config(steps=2, checkpoint_every=2, seed=4), tmp_path / "c"))
    a, b, c = (_weights(tmp_path / name) for name in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_finished_run_can_be_extended(cubes, tmp_path):
    list(train(cubes, tiny_config(steps=3), tmp_path / "run"))
    events = list(train(cubes, tiny_config(steps=6), tmp_path / "run", resume=True))
    assert [e.step for e in events if isinstance(e, ProgressEvent)] == [4, 5, 6]


def _trainer(cubes, **overrides) -> Trainer:
    from napari_dgc.model.network import DGCModel
    from napari_dgc.training.sampling import PairStream, open_sources

    config = tiny_config(**overrides)
    stream = PairStream(open_sources(cubes), config.data.crop_size, (0.2, 0.8), 2, 0)
    torch.manual_seed(0)
    return Trainer(DGCModel(10, config.model), stream, config, torch.device("cpu"))


def test_without_decay_each_centroid_moves_to_its_weighted_mean_embedding(cubes):
    trainer = _trainer(cubes, centroids__ema_decay=0.0)
    basis = torch.eye(8)
    z = torch.cat([basis[0].repeat(30, 1), basis[1].repeat(20, 1)])
    p = torch.zeros(50, 2)
    p[:30, 0], p[30:, 1] = 1.0, 1.0
    trainer._update_centroids(z, p)
    torch.testing.assert_close(trainer.model.centroids, basis[:2])


def test_a_cluster_without_mass_keeps_its_centroid(cubes):
    trainer = _trainer(cubes, centroids__ema_decay=0.9)
    basis = torch.eye(8)
    trainer.model.centroids.copy_(basis[:2])
    # 99 pixels sit on centroid 0, one far from both; cluster 1 holds no mass. Earlier versions
    # moved cluster 1 to the far pixel (re-seeding), which emptied clusters at large K.
    z = torch.cat([basis[0].repeat(99, 1), basis[3][None]])
    p = torch.zeros(100, 2)
    p[:, 0] = 1.0
    trainer._update_centroids(z, p)
    assert torch.equal(trainer.model.centroids[1], basis[1])
    mean = torch.nn.functional.normalize(99 * basis[0] + basis[3], dim=0)
    torch.testing.assert_close(
        trainer.model.centroids[0], torch.nn.functional.normalize(0.9 * basis[0] + 0.1 * mean, dim=0)
    )


def test_kmeans_init_puts_centroids_on_the_data(cubes):
    from napari_dgc.training.trainer import spherical_kmeans

    basis = torch.eye(8)
    z = torch.nn.functional.normalize(
        torch.cat([basis[0] + 0.05 * torch.randn(60, 8), basis[5] + 0.05 * torch.randn(40, 8)]), dim=1
    )
    centroids = spherical_kmeans(z, 2, np.random.default_rng(0))
    assert sorted((centroids @ basis[[0, 5]].T).argmax(dim=1).tolist()) == [0, 1]
    assert float((centroids @ basis[[0, 5]].T).max(dim=1).values.min()) > 0.95
    trainer = _trainer(cubes)
    before = trainer.model.centroids.clone()
    trainer.step()
    assert not torch.allclose(before, trainer.model.centroids, atol=0.05)


def test_spectral_start_runs_once_before_the_first_step(cubes, monkeypatch):
    trainer = _trainer(cubes)
    calls = []
    monkeypatch.setattr(trainer, "_fit_centroids", lambda pairs, spectra: calls.append(trainer.step_count))
    for _ in range(5):
        trainer.step()
    assert calls == [0]


def test_spectral_start_sees_every_cube_not_only_the_first_batch(rng):
    """The first batch's crops come from one cube; a material only another cube holds must still
    get its own anchor cluster."""
    bands = np.linspace(0, 1, 10)
    materials = np.stack([bands, 1 - bands, np.sin(np.pi * bands)]).astype(np.float32)
    halves = np.repeat(np.arange(2), 12)[None, :].repeat(24, axis=0)  # materials 0 | 1
    two_materials = materials[halves]
    third_material = np.broadcast_to(materials[2], (24, 24, 10))
    cubes = [c + 0.01 * rng.normal(size=c.shape).astype(np.float32) for c in (two_materials, third_material)]
    model = ModelConfig(n_clusters=3, embed_dim=8, spectral_channels=4, spectral_bands=8, meanshift_iters=2)
    trainer = _trainer(cubes, model=model)
    trainer.step()
    unit = torch.nn.functional.normalize(torch.from_numpy(materials), dim=1)
    assert sorted((unit @ trainer.anchor_centroids.T).argmax(dim=1).tolist()) == [0, 1, 2]


def test_spectral_start_keeps_the_seeding_of_lowest_inertia(cubes, monkeypatch):
    from types import SimpleNamespace

    import napari_dgc.training.trainer as training

    bands, embeddings = torch.eye(10), torch.eye(8)
    good = bands[[0, 1]]  # the two directions the spectra below lie on
    fits = iter([bands[[2, 3]], good, bands[[0, 4]]])
    monkeypatch.setattr(training, "spherical_kmeans", lambda points, k, rng: next(fits))
    trainer = _trainer(cubes, centroids__fit_inits=3)
    spectra = torch.cat([3.0 * bands[0].repeat(30, 1), 0.5 * bands[1].repeat(20, 1)])
    z = torch.cat([embeddings[4].repeat(30, 1), embeddings[6].repeat(20, 1)])
    monkeypatch.setattr(trainer, "_forward", lambda pairs: (z, None, torch.arange(50)))
    trainer._fit_centroids([SimpleNamespace(pixels=spectra.numpy())], spectra.numpy())
    torch.testing.assert_close(trainer.anchor_centroids, good)
    # each model centroid starts at the mean embedding of its anchor cluster's pixels
    torch.testing.assert_close(trainer.model.centroids, embeddings[[4, 6]])


def _scripted_selection_scores(monkeypatch, scores):
    """Make every checkpoint of start ``s`` score ``scores[s]``, so the selection sees ``scores``."""
    import napari_dgc.training.loop as training

    monkeypatch.setattr(
        training._RunTraining, "_signals", lambda self, trainer: {"selection_score": scores[trainer.start]}
    )


def test_restarts_continue_the_start_that_separates_the_spectra_best(cubes, tmp_path, monkeypatch):
    _scripted_selection_scores(monkeypatch, [1.0, 5.0, 2.0])
    config = tiny_config(starts__count=3, starts__steps=4, checkpoint_every=3)
    events = list(train(cubes, config, tmp_path / "run"))
    progress = [
        (e.start, e.step, e.run_step, e.run_total_steps) for e in events if isinstance(e, ProgressEvent)
    ]
    selection = [(start, step) for start in range(3) for step in range(1, 5)]
    assert [p[:2] for p in progress] == selection + [(1, 5), (1, 6)]
    assert [p[2] for p in progress] == list(range(1, 15))
    assert {p[3] for p in progress} == {14}
    # Every start writes as it trains, and always at the selection step (4 is not a multiple
    # of 3); then the selected start goes on.
    saved = [(e.start, e.step, e.run_step, e.checkpoint_id) for e in events if isinstance(e, CheckpointEvent)]
    assert saved == [
        (0, 3, 3, "step-000003"),
        (0, 4, 4, "step-000004"),
        (1, 3, 7, "start1-step-000003"),
        (1, 4, 8, "start1-step-000004"),
        (2, 3, 11, "start2-step-000003"),
        (2, 4, 12, "start2-step-000004"),
        (1, 6, 14, "start1-step-000006"),
    ]
    run = RunDirectory.open(tmp_path / "run")
    assert [c.checkpoint_id for c in run.checkpoints()] == [s[3] for s in saved]
    assert [run.load_checkpoint_state(c.checkpoint_id)[2]["start"] for c in run.checkpoints()] == [
        s[0] for s in saved
    ]
    assert [c.stats.get("selection_score") for c in run.checkpoints() if c.step == 4] == [1.0, 5.0, 2.0]
    assert (run.selected_start, run.start_scores) == (1, [1.0, 5.0, 2.0])
    assert run.latest_checkpoint().checkpoint_id == "start1-step-000006"
    assert [c.step for c in run.checkpoints(start=1)] == [3, 4, 6]
    # Start 0 is the single-start run of the seed; start 1 is not.
    list(train(cubes, tiny_config(steps=4, checkpoint_every=2), tmp_path / "single"))
    single = RunDirectory.open(tmp_path / "single").load_model("step-000004").state_dict()
    for name, tensor in run.load_model("step-000004").state_dict().items():
        assert torch.equal(single[name], tensor), name
    assert not torch.equal(single["centroids"], run.load_model("start1-step-000004").centroids)
    # The default model of the run is the selected start's latest.
    assert torch.equal(run.load_model().centroids, run.load_model("start1-step-000006").centroids)


def test_starts_that_tie_up_to_rounding_keep_the_first(cubes, tmp_path, monkeypatch):
    # Identical label maps give Calinski–Harabasz indices that differ in the last bits.
    _scripted_selection_scores(monkeypatch, [1.0, 35293.25448314758, 35293.25448314759])
    list(train(cubes, tiny_config(starts__count=3, starts__steps=2, steps=2), tmp_path / "run"))
    assert RunDirectory.open(tmp_path / "run").selected_start == 1


def _stop_at(events, condition) -> None:
    for event in events:
        if condition(event):
            break
    else:
        raise AssertionError("the run never reached the stopping point")
    events.close()


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda e: isinstance(e, ProgressEvent) and (e.start, e.step) == (0, 3), id="start0"),
        pytest.param(lambda e: isinstance(e, ProgressEvent) and (e.start, e.step) == (1, 3), id="start1"),
        pytest.param(
            lambda e: isinstance(e, CheckpointEvent) and (e.start, e.step) == (1, 4), id="before-selection"
        ),
        pytest.param(
            lambda e: isinstance(e, ProgressEvent) and (e.start, e.step) == (0, 5), id="after-selection"
        ),
    ],
)
def test_restarted_run_resumes_exactly(cubes, tmp_path, monkeypatch, stop):
    """Stopped during a start, between the last start and the selection, or after it."""
    _scripted_selection_scores(monkeypatch, [3.0, 1.0])
    config = tiny_config(starts__count=2, starts__steps=4)
    list(train(cubes, config, tmp_path / "straight"))
    _stop_at(train(cubes, config, tmp_path / "stopped"), stop)
    resumed = list(train(cubes, config, tmp_path / "stopped", resume=True))
    straight_run, stopped_run = (RunDirectory.open(tmp_path / name) for name in ("straight", "stopped"))
    assert [c.checkpoint_id for c in stopped_run.checkpoints()] == [
        c.checkpoint_id for c in straight_run.checkpoints()
    ]
    assert stopped_run.selected_start == straight_run.selected_start == 0
    assert resumed[-1].step == 6
    straight, stopped = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    for name in straight:
        assert torch.equal(straight[name], stopped[name]), name


def test_extending_a_restarted_run_keeps_its_selection_step(cubes, tmp_path, monkeypatch):
    _scripted_selection_scores(monkeypatch, [1.0, 3.0])
    run_dir = tmp_path / "run"
    list(train(cubes, tiny_config(starts__count=2, starts__steps=8, steps=4), run_dir))
    assert RunDirectory.open(run_dir).selected_start == 1
    events = list(train(cubes, tiny_config(starts__count=2, starts__steps=8, steps=8), run_dir, resume=True))
    progress = [(e.start, e.step, e.run_step) for e in events if isinstance(e, ProgressEvent)]
    assert progress == [(1, step, step + 4) for step in range(5, 9)]


def test_selection_score_prefers_labels_that_follow_the_materials(cubes, monkeypatch):
    from napari_dgc.training.starts import selection_score, selection_windows

    trainer = _trainer(cubes)
    trainer.model.set_normalization(np.zeros(10), np.ones(10), 1e-6)
    windows = selection_windows([_source(c) for c in cubes], 3, 16, seed=0)
    assert [w.shape for w in windows] == [(16, 16, 10)] * 3
    materials = [torch.from_numpy((w[..., 0] < w[..., -1]).astype(np.int64))[None] for w in windows]
    follows = iter(materials)
    monkeypatch.setattr(trainer.model, "predict", lambda x: next(follows))
    separated = selection_score(trainer.model, windows)
    stripes = iter([torch.arange(16).repeat(16, 1)[None] % 2] * 3)
    monkeypatch.setattr(trainer.model, "predict", lambda x: next(stripes))
    assert separated > 10 * selection_score(trainer.model, windows)


def test_selection_windows_are_seeded_and_clipped_to_small_cubes(cubes):
    sources = [_source(c) for c in cubes]
    first = selection_windows_of(sources, 10, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, selection_windows_of(sources, 10, seed=1)))
    assert not all(np.array_equal(a, b) for a, b in zip(first, selection_windows_of(sources, 10, seed=2)))
    assert all(w.shape == (10, 10, 10) for w in first)
    assert all(w.shape == (24, 24, 10) for w in selection_windows_of(sources, 40, seed=1))


def _source(cube):
    from napari_dgc.training.sampling import SampledCube

    return SampledCube(cube, "cube")


def selection_windows_of(sources, size, seed):
    from napari_dgc.training.starts import selection_windows

    return selection_windows(sources, 4, size, seed)


@pytest.mark.parametrize(
    "settings",
    [
        {"optim__average_decay": 0},
        {"centroids__ema_decay": 0.5},
        {"losses__weight_anchor": 0, "centroids__fit_inits": 3},
    ],
)
def test_resume_is_exact_with_other_settings(cubes, tmp_path, settings):
    list(train(cubes, tiny_config(**settings), tmp_path / "straight"))
    list(train(cubes, tiny_config(steps=3, **settings), tmp_path / "stopped"))
    list(train(cubes, tiny_config(**settings), tmp_path / "stopped", resume=True))
    straight, stopped = _weights(tmp_path / "straight"), _weights(tmp_path / "stopped")
    for name in straight:
        assert torch.equal(straight[name], stopped[name]), name


def test_cosine_decay_reaches_its_final_fraction_and_holds_it():
    assert cosine_decay(2.0, 0.1, 0, 101) == pytest.approx(2.0)
    assert cosine_decay(2.0, 0.1, 50, 101) == pytest.approx(1.1)  # half way: half the decay
    assert cosine_decay(2.0, 0.1, 100, 101) == pytest.approx(0.2)
    assert cosine_decay(2.0, 0.1, 500, 101) == pytest.approx(0.2)
    assert cosine_decay(2.0, 0.1, 5, 1) == 2.0


def test_config_round_trips_through_json():
    config = tiny_config(model__spatial_init="default", losses__anchor_final_fraction=0.5)
    again = TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and isinstance(again.model, ModelConfig)


# -- bad input: clear error, nothing written ----------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"data__overlap_min": 0.9, "data__overlap_max": 0.5}, "overlap"),
        ({"data__crop_size": 4}, "crop_size"),
        ({"steps": 0}, "steps"),
        ({"optim__learning_rate": -1.0}, "learning_rate"),
        ({"device": "tpu"}, "device"),
        ({"losses__weight_anchor": -0.1}, "weight_anchor"),
        ({"losses__anchor_final_fraction": 1.5}, "anchor_final_fraction"),
        ({"losses__schedule_steps": 0}, "schedule_steps"),
        ({"losses__weight_fidelity": 0.3}, "losses.weight_fidelity: retired"),
        ({"centroids__dead_policy": "kick"}, "centroids.dead_policy: retired"),
        ({"centroids__dead_threshold": 0.01}, "centroids.dead_threshold: retired, dead clusters"),
        ({"centroids__fit_inits": 0}, "centroids.fit_inits"),
        ({"starts__count": 0}, "starts.count"),
        ({"starts__steps": 0}, "starts.steps"),
        ({"starts__selection_windows": 0}, "selection_windows"),
    ],
)
def test_bad_settings_raise_config_error(settings, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**settings)


def test_bad_cluster_counts_raise_config_error():
    with pytest.raises(ConfigError, match="n_clusters"):
        tiny_config(model=ModelConfig(n_clusters=1))
    with pytest.raises(ConfigError, match="n_clusters"):
        tiny_config(model=ModelConfig(n_clusters=500))


@pytest.mark.parametrize("problem", ["bands", "small", "nan", "constant"])
def test_bad_cubes_raise_before_anything_is_written(cubes, tmp_path, problem):
    if problem == "bands":
        data, match = [cubes[0], cubes[1][..., :9]], "bands"
    elif problem == "small":
        data, match = [cubes[0], cubes[1][:10]], "smaller than the 12 x 12 crop"
    elif problem == "nan":
        bad = cubes[1].copy()
        bad[5, 5, 2] = np.inf
        data, match = [cubes[0], bad], "array 1: NaN or infinite"
    else:
        data, match = [np.ones((24, 24, 10), np.float32)], "constant"
    with pytest.raises(CubeFormatError, match=match):
        list(train(data, tiny_config(), tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resuming_with_another_band_count_is_refused(cubes, tmp_path):
    list(train(cubes, tiny_config(steps=3), tmp_path / "run"))
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(CheckpointError, match="10 bands, not 9"):
        list(train([c[..., :9] for c in cubes], tiny_config(), tmp_path / "run", resume=True))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before


def test_new_run_never_overwrites_an_existing_one(cubes, tmp_path):
    list(train(cubes, tiny_config(steps=3), tmp_path / "run"))
    with pytest.raises(CheckpointError, match="already"):
        list(train(cubes, tiny_config(), tmp_path / "run"))
    assert [c.step for c in RunDirectory.open(tmp_path / "run").checkpoints()] == [3]


# ---------------------------------------------------------------- resume validates as load does
def _damage(run_path, checkpoint_id: str, file_name: str, change) -> None:
    """Apply ``change`` to one file of a checkpoint and list its new checksum, as if genuine."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from napari_dgc.atomic import file_sha256

    file = run_path / "checkpoints" / checkpoint_id / file_name
    if file_name.endswith(".safetensors"):
        with safe_open(file, framework="pt") as handle:
            metadata = handle.metadata()
        tensors = load_file(file)
        change(tensors)
        save_file(tensors, file, metadata)
    else:
        state = json.loads(file.read_text())
        change(state)
        file.write_text(json.dumps(state))
    manifest = json.loads((run_path / "run.json").read_text())
    for entry in manifest["checkpoints"]:
        if entry["id"] == checkpoint_id:
            entry["files"][file_name] = file_sha256(file)
    (run_path / "run.json").write_text(json.dumps(manifest))


def _split_groups(state):
    group = state["optimizer"]["param_groups"][0]
    params = group["params"]
    state["optimizer"]["param_groups"] = [{**group, "params": params[:2]}, {**group, "params": params[2:]}]


RESUME_DAMAGE = {
    "wrong shape": ("model.safetensors", lambda t: t.update(centroids=torch.zeros(5, 3)), "tensor centroids"),
    "missing tensor": ("model.safetensors", lambda t: t.pop("centroids"), "missing \\['centroids'\\]"),
    "extra tensor": (
        "model.safetensors",
        lambda t: t.update(extra=torch.zeros(2)),
        "unexpected \\['extra'\\]",
    ),
    "other dtype": ("model.safetensors", lambda t: t.update(centroids=t["centroids"].double()), "float64"),
    "NaN weights": ("model.safetensors", lambda t: t["centroids"].fill_(float("nan")), "NaN or infinite"),
    "optimizer shape": (
        "optimizer.safetensors",
        lambda t: t.update({"optimizer.state.0.exp_avg": torch.zeros(7, 7)}),
        "optimizer.safetensors: optimizer state 'exp_avg'",
    ),
    "optimizer NaN": (
        "optimizer.safetensors",
        lambda t: t["optimizer.state.1.exp_avg_sq"].fill_(float("inf")),
        "optimizer.safetensors: tensor .* NaN or infinite",
    ),
    "group count": ("state.json", _split_groups, "optimizer.safetensors: 2 parameter groups"),
    "garbage sampler": (
        "state.json",
        lambda s: s["training"]["sampler"].update(rng="garbage"),
        "state.json: training state 'sampler.rng'",
    ),
    "sampler position": (
        "state.json",
        lambda s: s["training"]["sampler"].update(order_position=99),
        "state.json: training state 'sampler.order_position'",
    ),
    "garbage RNG": (
        "state.json",
        lambda s: s["training"].update(kick_rng={"bit_generator": "PCG64", "state": 5}),
        "state.json: training state 'kick_rng'",
    ),
    "negative step": (
        "state.json",
        lambda s: (s.update(step=-50), s["training"].update(step=-50)),
        "state.json: step -50 differs",
    ),
    "training step": (
        "state.json",
        lambda s: s["training"].update(step=-50),
        "state.json: training step -50",
    ),
    "elapsed": ("state.json", lambda s: s["training"].update(elapsed_s="x"), "state.json: training time"),
}


@pytest.mark.parametrize("damage", sorted(RESUME_DAMAGE))
def test_resume_refuses_a_damaged_checkpoint_naming_the_file(cubes, tmp_path, damage):
    """Resume checks what load_model checks and more; a clean CheckpointError, never a traceback,
    nothing written, and the run still usable from its other checkpoints."""
    run_path = tmp_path / "run"
    list(train(cubes, tiny_config(), run_path))
    file_name, change, match = RESUME_DAMAGE[damage]
    _damage(run_path, "step-000006", file_name, change)
    manifest = (run_path / "run.json").read_bytes()
    with pytest.raises(CheckpointError, match=match):
        list(train(cubes, tiny_config(steps=9), run_path, resume=True))
    assert (run_path / "run.json").read_bytes() == manifest
    run = RunDirectory.open(run_path)
    assert [c.step for c in run.checkpoints()] == [3, 6]
    run.load_model("step-000003")
    if file_name == "model.safetensors":  # segment / export / timeline refuse it as well
        with pytest.raises(CheckpointError, match=match):
            run.load_model("step-000006")
    assert not run.is_busy()  # the failed resume released the run lock


def test_anchor_term_follows_the_spectral_start_and_its_schedule(cubes):
    trainer = _trainer(cubes, steps=8, losses__schedule_steps=4)
    first = trainer.step()
    anchor = trainer.anchor_centroids
    assert anchor is not None and anchor.shape == (2, 10)  # K x bands, fitted on the raw spectra
    torch.testing.assert_close(anchor.norm(dim=1), torch.ones(2))
    assert first.losses["anchor"] > 0
    for _ in range(6):
        last = trainer.step()
    assert torch.equal(trainer.anchor_centroids, anchor)  # fitted once, kept
    # After the cosine decay the weight stays at its final fraction (0.2 of 10): the anchor
    # keeps pulling towards the start's partition.
    assert last.losses["anchor"] > 0
    unanchored = _trainer(cubes, losses__weight_anchor=0.0)
    assert unanchored.step().losses["anchor"] == 0.0 and unanchored.anchor_centroids is not None


def test_damaged_anchor_centroids_are_refused(cubes):
    trainer = _trainer(cubes)
    trainer.step()
    state = trainer.training_state()
    fresh = _trainer(cubes)
    for bad in (torch.zeros(3, 10), torch.full((2, 10), float("nan"))):
        state["tensors"]["anchor_centroids"] = bad
        with pytest.raises(ValueError, match="anchor centroids"):
            fresh.load_training_state(state)
    assert fresh.anchor_centroids is None  # left as it was


def test_a_run_from_before_the_retired_settings_opens_and_resumes_exactly(cubes, tmp_path):
    """Earlier versions stored the balance, uniform-assignment, fidelity and re-seeding settings
    in run.json and their generator and usage average in each checkpoint's state: such a run
    still opens, segments and resumes (without them)."""
    list(train(cubes, tiny_config(), tmp_path / "straight"))
    run_path = tmp_path / "earlier"
    list(train(cubes, tiny_config(steps=3), run_path))
    manifest = json.loads((run_path / "run.json").read_text())
    manifest["config"]["losses"].update(weight_balance=2.0, uniform_target="usage", fidelity_pixels=1024)
    manifest["config"]["centroids"].update(
        init="spectra", dead_policy="reseed", fit_step=0, kick=0.05, dead_threshold=0.01
    )
    (run_path / "run.json").write_text(json.dumps(manifest))
    earlier_generator = np.random.default_rng(5).bit_generator.state
    _damage(
        run_path,
        "step-000003",
        "state.json",
        lambda s: s["training"].update(usage_ema=[0.5, 0.5], fidelity_rng=earlier_generator),
    )
    assert RunDirectory.open(run_path).config == tiny_config(steps=3)
    list(train(cubes, tiny_config(), run_path, resume=True))
    straight, resumed = _weights(tmp_path / "straight"), _weights(run_path)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
