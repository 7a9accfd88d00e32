"""Training and segmentation on a CUDA device agree with the CPU (run where CUDA exists)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_dgc.cli import main
from napari_dgc.datasets.synthetic import make_leaf_scene
from napari_dgc.inference.segmentation import segment_cube
from napari_dgc.run_folder import RunDirectory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture
def scene_file(tmp_path):
    scene = make_leaf_scene(72, 72, 40, seed=5)
    path = tmp_path / "scene.npy"
    np.save(path, scene.cube)
    return path


def test_cli_trains_and_segments_on_cuda_like_the_cpu(scene_file, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        main(
            [
                "train",
                str(scene_file),
                "--clusters",
                "3",
                "--steps",
                "6",
                "--checkpoint-every",
                "3",
                "--crop-size",
                "32",
                "--device",
                "cuda",
                "--out",
                str(run_dir),
            ]
        )
        == 0
    )
    run = RunDirectory.open(run_dir)
    assert [info.step for info in run.checkpoints()] == [3, 6]

    out = tmp_path / "maps"
    assert (
        main(
            [
                "segment",
                str(run_dir),
                str(scene_file),
                "--out",
                str(out),
                "--format",
                "npy",
                "--device",
                "cuda",
                "--tile",
                "40",
            ]
        )
        == 0
    )
    capsys.readouterr()
    on_cuda = np.load(out / "scene_labels.npy")
    on_cpu = segment_cube(run.load_model(), np.load(scene_file), workers=1).labels
    # Same weights, different kernels: only pixels on a near-tie may differ.
    assert (on_cuda == on_cpu).mean() > 0.99


def test_segment_cube_follows_a_model_on_cuda(scene_file, tmp_path):
    from napari_dgc.config import ModelConfig
    from napari_dgc.model.network import DGCModel

    torch.manual_seed(0)
    model = DGCModel(40, ModelConfig(n_clusters=3))
    cube = np.load(scene_file)
    on_cpu = segment_cube(model, cube, return_probabilities=True)
    on_cuda = segment_cube(model.to("cuda"), cube, return_probabilities=True, workers=2)
    # Float32 kernels sum in another order on the GPU, and the soft assignment's temperature
    # (1/0.05) amplifies the rounding: 1.3e-4 at most on an H100.
    np.testing.assert_allclose(on_cuda.probabilities, on_cpu.probabilities, atol=1e-3)
    assert (on_cuda.labels == on_cpu.labels).mean() > 0.99
