"""The checkpoint timeline on a run folder trained without the GUI (as the CLI does)."""

from __future__ import annotations

import numpy as np
import pytest
from _training_helpers import N_CLUSTERS, add_cube_layer, tiny_config, tiny_cube

from napari_dgc._qt import timeline_widget as timeline_module
from napari_dgc._qt.cube_layers import LABEL_OFFSET, labels_layer_name
from napari_dgc._qt.plots import short_number
from napari_dgc._qt.timeline_widget import CHOSEN_MARKER, RECOMMENDED_MARKER, TimelineWidget
from napari_dgc.run_folder import RunDirectory
from napari_dgc.training.loop import train

TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def headless_run(tmp_path_factory):
    """A finished 4-checkpoint run trained by the engine alone, on a seed-1 leaf cube."""
    run_dir = tmp_path_factory.mktemp("timeline") / "run"
    for _ in train([tiny_cube(seed=1)], tiny_config(steps=8), run_dir):
        pass
    return run_dir


@pytest.fixture
def notifications(monkeypatch):
    messages: list[str] = []
    monkeypatch.setattr(timeline_module, "show_error", messages.append)
    return messages


def open_timeline(viewer, qtbot, run_dir) -> TimelineWidget:
    timeline = TimelineWidget(viewer)
    viewer.window.add_dock_widget(timeline, name="DGC: Checkpoints")
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS):
        assert timeline.open_run(run_dir)
    return timeline


def test_open_run_shows_recommended_and_sweeps_figures(
    make_napari_viewer, qtbot, headless_run, notifications
):
    viewer = make_napari_viewer()
    cube = add_cube_layer(viewer, "leaf", seed=1)
    timeline = open_timeline(viewer, qtbot, headless_run)
    review = timeline.model
    ids = review.checkpoint_ids()
    assert ids == ["step-000002", "step-000004", "step-000006", "step-000008"]
    # Nothing chosen yet: the checkpoint training recommends, marked on every plot.
    shown = RunDirectory.open(headless_run).recommended_checkpoint.checkpoint_id
    assert timeline.current_checkpoint_id() == shown
    assert (int(shown[-6:]), RECOMMENDED_MARKER, "dot") in timeline.plots.plot(
        "spectral separation"
    ).markers()
    labels = viewer.layers[labels_layer_name("leaf")]
    model = RunDirectory.open(headless_run).load_model(shown)
    from napari_dgc.inference.segmentation import segment_cube

    expected = segment_cube(model, tiny_cube(seed=1)).labels
    np.testing.assert_array_equal(labels.data, expected + LABEL_OFFSET)
    assert labels.metadata["dgc_checkpoint"] == shown
    assert labels.metadata["dgc_n_clusters"] == N_CLUSTERS
    assert tuple(labels.scale) == tuple(cube.scale[1:])
    # Every cluster has its own colour, none transparent.
    colors = {tuple(labels.colormap.map(np.array([k + LABEL_OFFSET]))[0]) for k in range(N_CLUSTERS)}
    assert len(colors) == N_CLUSTERS and all(color[3] > 0 for color in colors)

    qtbot.waitUntil(lambda: len(review.figures) == 4, timeout=TIMEOUT_MS)
    nmi_plot = timeline.plots.plot("NMI to previous checkpoint")
    assert nmi_plot.series_names() == ["NMI"]
    assert review.figures[ids[0]].nmi_to_previous is None
    assert "NMI to previous" in timeline.checkpoint_label.text()
    separation_plot = timeline.plots.plot("spectral separation")
    assert separation_plot.series_names() == ["separation"]
    separation = review.figures[shown].spectral_separation
    assert separation is not None and separation > 0
    assert f"separation {short_number(separation)}" in timeline.checkpoint_label.text()
    assert not notifications


def test_cached_checkpoint_shows_synchronously(make_napari_viewer, qtbot, headless_run):
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf", seed=1)
    timeline = open_timeline(viewer, qtbot, headless_run)
    qtbot.waitUntil(lambda: len(timeline.model.figures) == 4, timeout=TIMEOUT_MS)  # all segmented
    labels = viewer.layers[labels_layer_name("leaf")]
    first = timeline.model.checkpoints[0].checkpoint_id
    timeline.select_checkpoint(first)  # cached: no worker round trip
    assert labels.metadata["dgc_checkpoint"] == first
    assert timeline.shown_checkpoint == first


def test_plot_click_moves_slider_and_choice_is_recorded(make_napari_viewer, qtbot, tmp_path, headless_run):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(headless_run, run_dir)
    viewer = make_napari_viewer()
    add_cube_layer(viewer, "leaf", seed=1)
    timeline = open_timeline(viewer, qtbot, run_dir)
    with qtbot.waitSignal(timeline.checkpoint_shown, timeout=TIMEOUT_MS) as blocker:
        timeline.plots.plot("active in cubes").clicked.emit(4.4)  # nearest checkpoint: step 4
    assert blocker.args == ["step-000004"]
    with qtbot.waitSignal(timeline.checkpoint_chosen) as chosen:
        timeline.use_button.click()
    assert chosen.args == ["step-000004"]
    assert RunDirectory.open(run_dir).chosen_checkpoint == "step-000004"
    assert "chosen" in timeline.checkpoint_label.text()
    markers = timeline.plots.plot("active in cubes").markers()
    assert [x for x, color, _ in markers if color == CHOSEN_MARKER] == [4.0]

    # Reopening shows the chosen checkpoint, not the latest.
    again = open_timeline(viewer, qtbot, run_dir)
    assert again.current_checkpoint_id() == "step-000004"


def test_bad_run_folder_is_notified(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    timeline = TimelineWidget(viewer)
    assert not timeline.open_run(tmp_path)
    assert len(notifications) == 1 and "run.json" in notifications[0]
    assert not timeline.use_button.isEnabled()
    (tmp_path / "run.json").write_text("{ truncated")
    assert not timeline.open_run(tmp_path)
    assert len(notifications) == 2


def test_cube_of_other_band_count_is_not_used(make_napari_viewer, qtbot, headless_run, notifications):
    viewer = make_napari_viewer()
    wrong = tiny_cube()[..., :10]
    viewer.add_image(np.moveaxis(wrong, -1, 0), name="ten bands", metadata={"wavelengths": list(range(10))})
    timeline = TimelineWidget(viewer)
    assert timeline.open_run(headless_run)  # the run opens; there is just nothing to segment
    assert timeline.model.sources == {}
    assert len(timeline.model.checkpoints) == 4
    assert labels_layer_name("ten bands") not in viewer.layers
    assert "16 bands" in timeline.status_label.text()
    assert timeline._review_worker is None
    assert not notifications


def test_a_prepared_run_is_shown_on_the_raw_cube_layer_at_its_binning(
    make_napari_viewer, qtbot, tmp_path, notifications
):
    from napari_dgc._reader import cube_layer_data
    from napari_dgc.inference.segmentation import segment_cube
    from napari_dgc.io import open_cube
    from napari_dgc.run_folder.preparation_file import run_preparation

    path = tmp_path / "leaf.npy"
    np.save(path, tiny_cube(seed=1))  # 32 x 32 pixels, 16 bands
    run_dir = tmp_path / "run"
    for _ in train([path], tiny_config(steps=2, prep__binning=2, prep__band_indices="2:14"), run_dir):
        pass
    viewer = make_napari_viewer()
    data, kwargs, _ = cube_layer_data(open_cube(path))[0]
    cube_layer = viewer.add_image(data, **kwargs)
    open_timeline(viewer, qtbot, run_dir)
    # The raw reader layer (16 bands) is used for the run of 12 bands, not opened again.
    assert len([layer for layer in viewer.layers if layer.ndim == 3]) == 1
    labels = viewer.layers[labels_layer_name(cube_layer.name)]
    run = RunDirectory.open(run_dir)
    expected = segment_cube(run.load_model(), run_preparation(run).apply(open_cube(path))).labels
    assert expected.shape == (16, 16)
    np.testing.assert_array_equal(labels.data, expected + LABEL_OFFSET)
    assert tuple(labels.scale) == tuple(2 * np.asarray(cube_layer.scale[1:]))
    assert tuple(labels.translate) == tuple(np.asarray(cube_layer.translate[1:]) + 0.5)
    # The merge panel's cluster spectra come from the cube prepared as the run's was.
    from napari_dgc._qt.merge_layers import cluster_groups, clustering_of

    ((key, layers),) = cluster_groups(viewer).items()
    pixels = clustering_of(viewer, key, layers).cubes[cube_layer.name]
    prepared = run_preparation(run).apply(open_cube(path))
    assert pixels.shape == (12, 16, 16)
    np.testing.assert_array_equal(
        np.asarray(pixels[:, 3, 4]), prepared.read_window(slice(3, 4), slice(4, 5))[0, 0]
    )
    assert not notifications
