"""Wavelengths everywhere: the status bar while hovering a cube, and the merge panel's spectra CSV."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import tifffile
from _training_helpers import add_cube_layer

from napari_dgc._qt.band_wavelength import follow_band_wavelength
from napari_dgc._qt.merge_widget import MergeWidget
from napari_dgc.cli import main
from napari_dgc.datasets.synthetic import make_leaf_scene


def hover(viewer, position) -> None:
    """Put the pointer over the canvas at a world position, as a mouse move does."""
    viewer.mouse_over_canvas = True
    viewer.cursor.position = position
    viewer.update_status_from_cursor()


def test_status_bar_shows_the_wavelength_of_the_band_under_the_pointer(make_napari_viewer):
    viewer = make_napari_viewer()
    cube = add_cube_layer(viewer, "leaf")
    follow_band_wavelength(viewer)
    viewer.layers.selection.active = cube
    viewer.dims.set_current_step(0, 5)
    hover(viewer, (5, 10, 12))
    wavelength = cube.metadata["wavelengths"][5]
    coordinates = viewer.status["coordinates"]
    assert coordinates.endswith(f"· band 5 of 16 · {wavelength:.1f} nm")
    assert coordinates.count(" nm") == 1  # appended once, not again by its own status event

    viewer.dims.set_current_step(0, 9)
    hover(viewer, (9, 3, 4))
    assert viewer.status["coordinates"].endswith(f"{cube.metadata['wavelengths'][9]:.1f} nm")


def test_status_set_by_napari_window_gets_the_wavelength(make_napari_viewer):
    """In the window, napari computes the status in a thread and assigns ``viewer.status`` in
    the GUI thread (``set_status_and_tooltip``); that assignment is what gets the wavelength.
    """
    viewer = make_napari_viewer()
    cube = add_cube_layer(viewer, "leaf")
    follow_band_wavelength(viewer)
    viewer.dims.set_current_step(0, 7)
    status = cube.get_status((7, 11, 13), world=True)
    viewer.status = status
    assert viewer.status["coordinates"] == f"{status['coordinates']} · band 7 of 16 · " + (
        f"{cube.metadata['wavelengths'][7]:.1f} nm"
    )
    viewer.status = "[7 11 13] » leaf: 0.5    DGC clusters [leaf]: 3"  # several layers selected
    assert viewer.status.endswith(" nm") and viewer.status.count(" nm") == 1
    viewer.status = "Ready"
    assert viewer.status == "Ready"


def test_status_bar_is_left_alone_without_wavelengths(make_napari_viewer):
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((4, 8, 8), dtype=np.float32))
    follow_band_wavelength(viewer)
    viewer.layers.selection.active = image
    hover(viewer, (1, 2, 2))
    assert " nm" not in viewer.status["coordinates"]


ROWS, COLS, BANDS = 20, 24, 10


def cluster_rows(text: str) -> list[dict]:
    return [row for row in csv.DictReader(io.StringIO(text)) if row["kind"] == "cluster"]


def test_merge_panel_exports_the_spectra_csv_of_the_cli(make_napari_viewer, qtbot, tmp_path, capsys):
    scene = make_leaf_scene(ROWS, COLS, BANDS, seed=4)
    clusters = scene.labels.astype(np.int32)
    viewer = make_napari_viewer()
    viewer.add_image(
        np.moveaxis(scene.cube, -1, 0), name="leaf", metadata={"wavelengths": scene.wavelengths.tolist()}
    )
    viewer.add_labels(
        clusters + 1,
        name="DGC clusters [leaf]",
        metadata={
            "dgc_run": "/runs/demo",
            "dgc_checkpoint": "step-000010",
            "dgc_cube_layer": "leaf",
            "dgc_n_clusters": 3,
            "dgc_label_offset": 1,
        },
    )
    widget = MergeWidget(viewer)
    qtbot.addWidget(widget)
    model = widget.model
    model.assign([0], 0)
    model.assign([1, 2], 1)
    written = widget.spectra_view.export_csv(tmp_path / "panel.csv")
    assert written == tmp_path / "panel.csv"
    panel = written.read_text()
    assert "Wrote spectra" in widget.status_label.text()
    rows = list(csv.DictReader(io.StringIO(panel)))
    assert {row["kind"] for row in rows} == {"cluster", "class"}
    assert float(rows[3]["wavelength_nm"]) == pytest.approx(scene.wavelengths[3], rel=1e-5)
    # A second export to the same file is refused unless replacing was confirmed.
    assert widget.spectra_view.export_csv(written) is None
    assert "exists" in widget.status_label.text()

    np.save(tmp_path / "leaf.npy", scene.cube)
    (tmp_path / "leaf.json").write_text(json.dumps({"wavelengths": scene.wavelengths.tolist()}))
    tifffile.imwrite(tmp_path / "labels.tif", clusters.astype(np.uint8))
    code = main(
        [
            "spectra",
            str(tmp_path / "labels.tif"),
            str(tmp_path / "leaf.npy"),
            "--out",
            str(tmp_path / "cli.csv"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert cluster_rows(panel) == cluster_rows((tmp_path / "cli.csv").read_text())


def test_spectra_export_without_clusters_is_refused(make_napari_viewer, qtbot, tmp_path):
    widget = MergeWidget(make_napari_viewer())
    qtbot.addWidget(widget)
    assert widget.spectra_view.export_csv(tmp_path / "x.csv") is None
    assert "no spectra yet" in widget.status_label.text()
    assert not (tmp_path / "x.csv").exists()
