"""``napari-dgc segment``: label, class and probability maps; one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from napari_dgc.analysis.classes import ClassMapping, SemanticClass
from napari_dgc.analysis.export import export_model_folder
from napari_dgc.cli import main
from napari_dgc.config import ModelConfig, TrainConfig
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.model.network import DGCModel
from napari_dgc.run_folder import RunDirectory

N_BANDS = 10
K = 3


@pytest.fixture
def run(tmp_path) -> RunDirectory:
    config = TrainConfig(model=ModelConfig(n_clusters=K, embed_dim=8, meanshift_iters=1))
    run = RunDirectory.create(tmp_path / "run", config, N_BANDS, None, [], seed=0)
    for step, seed in ((10, 1), (20, 2)):
        torch.manual_seed(seed)
        model = DGCModel(N_BANDS, config.model)
        optimizer = torch.optim.AdamW(model.parameters())
        run.save_checkpoint(step, model.state_dict(), optimizer.state_dict(), {}, {})
    return run


@pytest.fixture
def cubes(tmp_path, rng) -> list:
    paths = []
    for name, shape in (("first", (21, 26)), ("second", (9, 40))):
        path = tmp_path / f"{name}.npy"
        np.save(path, rng.random((*shape, N_BANDS), dtype=np.float32))
        paths.append(path)
    return paths


def expected_labels(model: DGCModel, path) -> np.ndarray:
    return segment_cube(model, np.load(path)).labels


def fail(argv: list[str], capsys) -> str:
    """Run the CLI expecting exit code 2 and a one-line reason; return that line."""
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("napari-dgc segment: error: ") and "\n" not in error
    return error


@pytest.mark.parametrize("file_format", ["tif", "png", "npy"])
def test_writes_label_maps_equal_to_segment_cube(run, cubes, tmp_path, capsys, file_format):
    out = tmp_path / "out"
    argv = [
        "segment",
        str(run.path),
        *map(str, cubes),
        "--out",
        str(out),
        "--format",
        file_format,
        "--tile",
        "8",
        "--workers",
        "2",
    ]
    assert main(argv) == 0
    assert "first_labels" in capsys.readouterr().out
    latest = run.load_model()
    for cube in cubes:
        file = out / f"{cube.stem}_labels.{file_format}"
        if file_format == "png":
            image = Image.open(file)
            assert image.mode == "P"
            labels = np.asarray(image)
        else:
            labels = tifffile.imread(file) if file_format == "tif" else np.load(file)
        np.testing.assert_array_equal(labels, expected_labels(latest, cube))
        legend = json.loads((out / f"{cube.stem}_labels.legend.json").read_text())
        assert [v["value"] for v in legend["values"]] == list(range(K))


def test_checkpoint_choice_and_probabilities(run, cubes, tmp_path):
    out = tmp_path / "out"
    assert (
        main(
            [
                "segment",
                str(run.path),
                str(cubes[0]),
                "--out",
                str(out),
                "--checkpoint",
                "step-000010",
                "--probabilities",
                "--format",
                "npy",
            ]
        )
        == 0
    )
    first = run.load_model("step-000010")
    np.testing.assert_array_equal(np.load(out / "first_labels.npy"), expected_labels(first, cubes[0]))
    probabilities = np.load(out / "first_probabilities.npy")
    assert probabilities.shape == (K, 21, 26) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    # The run's chosen checkpoint is the default once there is one.
    run.choose("step-000010")
    assert (
        main(
            [
                "segment",
                str(run.path),
                str(cubes[0]),
                "--out",
                str(out),
                "--overwrite",
                "--format",
                "png",
                "--probabilities",
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(
        np.asarray(Image.open(out / "first_labels.png")), expected_labels(first, cubes[0])
    )
    assert tifffile.imread(out / "first_probabilities.tif").shape == (K, 21, 26)


def test_classes_from_a_model_folder(run, cubes, tmp_path):
    mapping = ClassMapping(
        [SemanticClass("background", "#000000", [0]), SemanticClass("leaf", "#00ff00", [1, 2])],
        n_clusters=K,
    )
    folder = export_model_folder(run, tmp_path / "model", mapping, checkpoint_id="step-000020")
    out = tmp_path / "out"
    assert main(["segment", "--classes", str(folder), *map(str, cubes), "--out", str(out)]) == 0
    for cube in cubes:
        labels = tifffile.imread(out / f"{cube.stem}_labels.tif")
        np.testing.assert_array_equal(labels, expected_labels(run.load_model("step-000020"), cube))
        np.testing.assert_array_equal(
            tifffile.imread(out / f"{cube.stem}_classes.tif"), mapping.apply(labels)
        )


def test_bad_input_exits_with_one_line(run, cubes, tmp_path, capsys):
    out = tmp_path / "out"
    assert "run.json" in fail(
        ["segment", str(tmp_path / "nothing"), str(cubes[0]), "--out", str(out)], capsys
    )
    assert "no checkpoint 'step-000999'" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out), "--checkpoint", "step-000999"], capsys
    )
    assert "at least one cube" in fail(["segment", str(run.path), "--out", str(out)], capsys)
    wrong_bands = tmp_path / "wrong.npy"
    np.save(wrong_bands, np.zeros((5, 5, N_BANDS + 1), np.float32))
    assert "wrong.npy: the cube has 11 bands, the model was trained on 10" in fail(
        ["segment", str(run.path), str(cubes[0]), str(wrong_bands), "--out", str(out)], capsys
    )
    assert "missing.npy" in fail(
        ["segment", str(run.path), str(tmp_path / "missing.npy"), "--out", str(out)], capsys
    )
    assert "cannot go with --classes" in fail(
        [
            "segment",
            "--classes",
            str(run.path),
            str(cubes[0]),
            "--out",
            str(out),
            "--checkpoint",
            "step-000010",
        ],
        capsys,
    )
    assert "unknown device 'tpu'" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out), "--device", "tpu"], capsys
    )
    assert not out.exists()  # nothing was written for any of them

    twin = tmp_path / "twin"
    twin.mkdir()
    np.save(twin / "first.npy", np.load(cubes[0]))
    assert "same output name" in fail(
        ["segment", str(run.path), str(cubes[0]), str(twin / "first.npy"), "--out", str(out)], capsys
    )
    assert main(["segment", str(run.path), str(cubes[0]), "--out", str(out)]) == 0
    capsys.readouterr()
    assert "first_labels.tif: exists; pass --overwrite" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out)], capsys
    )
    for option in ("--tile", "--workers"):
        with pytest.raises(SystemExit) as exit_info:
            main(["segment", str(run.path), str(cubes[0]), "--out", str(out), option, "0"])
        assert exit_info.value.code == 2
        assert f"argument {option}: must be a positive integer" in capsys.readouterr().err


def _list_digest(run: RunDirectory, checkpoint_id: str, name: str) -> None:
    from napari_dgc.atomic import file_sha256

    manifest = json.loads(run.manifest_path.read_text())
    for entry in manifest["checkpoints"]:
        if entry["id"] == checkpoint_id:
            entry["files"][name] = file_sha256(run.path / "checkpoints" / checkpoint_id / name)
    run.manifest_path.write_text(json.dumps(manifest))


def test_nan_weights_absurd_sizes_and_bad_pixels_exit_with_one_line(run, cubes, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "out"
    weights = run.path / "checkpoints" / "step-000020" / "model.safetensors"
    tensors = load_file(weights)
    tensors["centroids"].fill_(float("nan"))
    save_file(tensors, weights, {"n_bands": str(N_BANDS)})
    _list_digest(run, "step-000020", "model.safetensors")
    assert "model.safetensors: tensor centroids holds NaN or infinite values" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out)], capsys
    )
    # A run.json asking for a model of petabytes is refused before anything is allocated.
    manifest = json.loads(run.manifest_path.read_text())
    manifest["config"]["model"]["embed_dim"] = 10**7
    run.manifest_path.write_text(json.dumps(manifest))
    assert "model.safetensors: tensor" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out), "--checkpoint", "step-000010"], capsys
    )
    manifest["config"]["model"]["embed_dim"] = 8
    run.manifest_path.write_text(json.dumps(manifest))
    nan_cube, empty_cube = tmp_path / "nan.npy", tmp_path / "empty.npy"
    pixels = np.load(cubes[0])
    pixels[3, 4, 5] = np.nan
    np.save(nan_cube, pixels)
    np.save(empty_cube, np.zeros((0, 26, N_BANDS), np.float32))
    segment = ["segment", str(run.path), "--checkpoint", "step-000010", "--out", str(out)]
    assert "nan.npy: NaN or infinite value at pixel (row 3, col 4), band 5" in fail(
        [*segment, str(nan_cube)], capsys
    )
    error = fail([*segment, str(empty_cube)], capsys)  # refused by the reader or by segment_cube
    assert "empty.npy" in error and ("no pixels" in error or "holds no values" in error)
    assert not out.exists()


def test_full_disk_under_out_is_one_line_and_leaves_no_empty_folder(
    run, cubes, tmp_path, capsys, monkeypatch
):
    import errno

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("napari_dgc.analysis.export.atomic_write_bytes", full)
    out = tmp_path / "new" / "out"
    assert "No space left on device" in fail(
        ["segment", str(run.path), str(cubes[0]), "--out", str(out)], capsys
    )
    assert not (tmp_path / "new").exists()


def test_segment_imports_no_compiler_or_optimiser_machinery(run, cubes, tmp_path):
    """Start-up (issue 15 item 11): the weight check builds a shape-only model without importing
    torch._dynamo (0.8 s), and nothing imports scipy.optimize (0.3 s) for a plain segmentation."""
    import subprocess
    import sys

    argv = ["segment", str(run.path), str(cubes[0]), "--out", str(tmp_path / "maps")]
    probe = (
        f"import sys; from napari_dgc.cli import main; code = main({argv!r}); "
        "print(code, 'torch._dynamo' in sys.modules, 'scipy.optimize' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1].split() == ["0", "False", "False"], result.stdout
