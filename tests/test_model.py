"""DGC model: per-pixel spectral stage, exact mean-shift gradient, tiles == whole image, config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_dgc.config import ModelConfig
from napari_dgc.errors import ConfigError
from napari_dgc.model import meanshift as _meanshift
from napari_dgc.model import network as model_module
from napari_dgc.model.band_convolution import band_convolution, box_resampling_matrix, position_blocks
from napari_dgc.model.meanshift import mean_shift
from napari_dgc.model.network import DGCModel

SMALL = ModelConfig(n_clusters=3, embed_dim=8, spectral_channels=4, spectral_bands=8, meanshift_iters=2)


def _model(n_bands: int = 12, config: ModelConfig = SMALL, seed: int = 0) -> DGCModel:
    torch.manual_seed(seed)
    return DGCModel(n_bands, config).eval()


def test_spectral_stage_mixes_no_pixels():
    model = _model()
    pixels = torch.randn(20, 12)
    before = model.spectral(pixels)
    changed = pixels.clone()
    changed[7] += 5.0
    after = model.spectral(changed)
    differs = (before - after).abs().amax(dim=1) > 0
    assert differs.nonzero().flatten().tolist() == [7]


@pytest.mark.parametrize("brightness_norm", [False, True])
def test_fused_normalisation_and_chunks_give_the_plain_spectral_stage(monkeypatch, brightness_norm):
    config = ModelConfig(**{**SMALL.to_dict(), "brightness_norm": brightness_norm})
    model = _model(config=config)
    model.set_normalization(torch.rand(12), torch.rand(12) + 0.5, brightness_floor=0.01)
    raw = torch.rand(50, 12) + 0.2
    plain = model.spectral(model.normalize_pixels(raw))  # parameters need grad: one chunk
    assert plain.requires_grad
    monkeypatch.setattr(model_module, "SPECTRAL_CHUNK_PIXELS", 7)
    with torch.inference_mode():
        fused = model.band_features(model.spectral_input(raw))
    torch.testing.assert_close(fused, plain.detach(), rtol=1e-5, atol=1e-5)


def test_embed_depends_only_on_the_receptive_field():
    model = _model()
    x = torch.randn(1, 12, 40, 40)
    changed = x.clone()
    changed[0, :, 20, 20] += 3.0
    moved = (model.embed(x) - model.embed(changed)).abs().amax(dim=1)[0] > 1e-6
    rows, cols = moved.nonzero(as_tuple=True)
    radius = model.receptive_radius
    assert moved[20, 20]
    assert (rows - 20).abs().max() <= radius and (cols - 20).abs().max() <= radius


def test_receptive_radius_of_the_paper_architecture():
    assert DGCModel(5).receptive_radius == 2 * 1 + 5 * 2


@pytest.mark.parametrize("length", [20, 100])
def test_band_convolution_equals_conv1d(length):
    torch.manual_seed(1)
    conv = torch.nn.Conv1d(3, 5, 9, stride=2, padding=4)
    x = torch.randn(6, 3, length)
    torch.testing.assert_close(band_convolution(x, conv), conv(x), rtol=1e-5, atol=1e-5)


def test_box_resampling_averages_bands():
    matrix = box_resampling_matrix(6, 3)
    torch.testing.assert_close(matrix.sum(dim=0), torch.ones(3))
    spectrum = torch.arange(6.0)
    torch.testing.assert_close(spectrum @ matrix, torch.tensor([0.5, 2.5, 4.5]))


def test_mean_shift_gradient_is_exact_with_border_and_mask():
    torch.manual_seed(0)
    z = F.normalize(torch.randn(2, 4, 6, 5, dtype=torch.float64), dim=1).requires_grad_()
    bandwidth = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(2, 6, 5, dtype=torch.float64)
    valid[1, :2] = 0
    assert torch.autograd.gradcheck(lambda a, b: mean_shift(a, b, 2, 1, valid), (z, bandwidth))
    assert torch.autograd.gradcheck(lambda a, b: mean_shift(a, b, 1, 2), (z, bandwidth))


def _mean_shift_with_and_without_gradients(masked: bool):
    """Embeddings, bandwidth, valid mask and the autograd path's result for the tests below."""
    torch.manual_seed(1)
    z = F.normalize(torch.randn(2, 8, 11, 13), dim=1)
    valid = torch.rand(2, 11, 13) > 0.3 if masked else None
    bandwidth = torch.tensor(0.4, requires_grad=True)
    with_grad = mean_shift(z.clone().requires_grad_(), bandwidth, 3, 2, valid)
    assert with_grad.requires_grad  # the autograd path really ran
    return z, bandwidth, valid, with_grad.detach()


@pytest.mark.parametrize("masked", [False, True])
def test_mean_shift_compiled_cpu_path_equals_the_autograd_path(monkeypatch, masked):
    z, bandwidth, valid, expected = _mean_shift_with_and_without_gradients(masked)
    compiled = []
    original = _meanshift._mean_shift_compiled
    monkeypatch.setattr(
        _meanshift, "_mean_shift_compiled", lambda *args: compiled.append(1) or original(*args)
    )
    with torch.inference_mode():
        fast = mean_shift(z, bandwidth, 3, 2, valid)
    assert compiled  # float32 on the CPU takes the compiled kernel
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block_elements", [8 * 13 * 3, 10**9])  # ragged row blocks / one block
@pytest.mark.parametrize("masked", [False, True])
def test_mean_shift_torch_inference_path_equals_the_autograd_path(monkeypatch, block_elements, masked):
    """The forward-only path of other devices (GPUs), called directly here."""
    monkeypatch.setattr(_meanshift, "INFERENCE_BLOCK_ELEMENTS", block_elements)
    z, bandwidth, valid, expected = _mean_shift_with_and_without_gradients(masked)
    neighbour_ok = None if valid is None else _meanshift._neighbour_mask(valid.float(), 2).float()
    fast = _meanshift._mean_shift_inference(z, 1.0 / 0.4**2, neighbour_ok, 2, 3)
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)


def test_mean_shift_keeps_unit_norm_and_pulls_neighbours_together():
    torch.manual_seed(0)
    base = F.normalize(torch.randn(1, 8, 1, 1), dim=1).expand(1, 8, 10, 10)
    z = F.normalize(base + 0.3 * torch.randn(1, 8, 10, 10), dim=1)
    shifted = mean_shift(z, torch.tensor(1.0), 3, 2)
    torch.testing.assert_close(shifted.norm(dim=1), torch.ones(1, 10, 10))
    spread_before = (z - z.mean(dim=(2, 3), keepdim=True)).norm(dim=1).mean()
    spread_after = (shifted - shifted.mean(dim=(2, 3), keepdim=True)).norm(dim=1).mean()
    assert spread_after < spread_before


def test_tile_with_halo_equals_whole_image():
    model = _model()
    x = torch.randn(1, 12, 36, 36)
    whole = model.embed(x)
    radius = model.receptive_radius
    rows, cols = slice(10 - radius, 22 + radius), slice(0, 14 + radius)  # touches the left border
    tile = model.embed(x[:, :, rows, cols])
    inner = tile[:, :, radius : radius + 12, :14]
    torch.testing.assert_close(inner, whole[:, :, 10:22, 0:14], rtol=1e-5, atol=1e-5)


def test_valid_mask_makes_outside_pixels_act_like_the_image_border():
    model = _model()
    x = torch.randn(1, 12, 20, 20)
    whole = model.embed(x)
    padded = torch.full((1, 12, 26, 26), float("nan"))
    padded[:, :, 3:23, 3:23] = x
    valid = torch.zeros(1, 26, 26, dtype=torch.bool)
    valid[:, 3:23, 3:23] = True
    inner = model.embed(padded, valid_mask=valid)[:, :, 3:23, 3:23]
    torch.testing.assert_close(inner, whole, rtol=1e-5, atol=1e-5)


def test_outputs_are_normalised_and_predict_is_the_nearest_centroid():
    model = _model()
    x = torch.randn(2, 12, 16, 16)
    z, p = model(x)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(2, 16, 16))
    torch.testing.assert_close(p.sum(dim=1), torch.ones(2, 16, 16))
    torch.testing.assert_close(model.centroids.norm(dim=1), torch.ones(3))
    assert torch.equal(model.predict(x), p.argmax(dim=1))


def test_state_dict_holds_normalisation_and_centroids():
    model = _model()
    model.set_normalization(torch.arange(12.0), torch.full((12,), 2.0))
    state = model.state_dict()
    assert {"band_offset", "band_scale", "centroids", "bandwidth_raw"} <= state.keys()
    clone = _model(seed=99)
    clone.load_state_dict(state)
    x = torch.randn(1, 12, 16, 16)
    assert torch.equal(clone.predict(x), model.predict(x))


def test_normalize_uses_dataset_statistics_and_brightness():
    model = _model(config=ModelConfig(**{**SMALL.to_dict(), "brightness_norm": True}))
    model.set_normalization(torch.zeros(12), torch.ones(12), brightness_floor=1e-3)
    x = torch.rand(1, 12, 4, 4) + 0.5
    torch.testing.assert_close(model.normalize(x), model.normalize(3.0 * x))


def test_config_round_trips_through_json():
    config = ModelConfig(n_clusters=5, spectral_bands=None, brightness_norm=True)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_identity_spatial_init_starts_from_the_per_pixel_spectral_features(monkeypatch):
    monkeypatch.setattr(model_module, "IDENTITY_INIT_NOISE", 0.0)
    config = ModelConfig(**{**SMALL.to_dict(), "meanshift_iters": 0, "spatial_init": "identity"})
    model = _model(config=config)
    x = torch.rand(1, 12, 9, 9)
    features = model.spectral(model.normalize(x).movedim(1, -1).reshape(-1, 12))
    expected = F.normalize(features, dim=1).reshape(1, 9, 9, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(model.embed(x), expected)
    default = _model(config=ModelConfig(**{**config.to_dict(), "spatial_init": "default"}))
    assert not torch.allclose(default.embed(x), expected, atol=1e-3)  # random kernels mix pixels


def test_data_initialisation_centres_and_scales_every_convolution():
    model = _model(config=ModelConfig(**{**SMALL.to_dict(), "meanshift_iters": 0}))
    model.set_normalization(torch.rand(12), torch.rand(12) + 0.5)
    x = torch.rand(2, 12, 16, 16) + 0.5
    before = model.embed(x)
    model.initialize_from_data(x)
    features = model.spectral(model.normalize(x).movedim(1, -1).reshape(-1, 12))
    features = features.reshape(2, 16, 16, -1).permute(0, 3, 1, 2)
    hidden = F.relu(model.spatial_convs[0](features))
    out = model.spatial_convs[1](hidden)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(out.shape[1]), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(out.shape[1]), atol=1e-4, rtol=0)
    # Pixels now differ in direction: the cosine between embeddings spreads out.
    after = model.embed(x)
    assert (after.flatten(2) - after.flatten(2).mean(-1, keepdim=True)).norm() > 3 * (
        before.flatten(2) - before.flatten(2).mean(-1, keepdim=True)
    ).norm()


def test_data_initialisation_keeps_the_scale_of_channels_that_do_not_vary():
    model = _model()
    weights = [conv.weight.clone() for conv in model.spatial_convs]
    model.initialize_from_data(torch.ones(1, 12, 8, 8))  # a flat crop: every channel constant
    for conv, before in zip(model.spatial_convs, weights):
        torch.testing.assert_close(conv.weight, before)
    assert torch.isfinite(model.embed(torch.rand(1, 12, 8, 8))).all()


@pytest.mark.parametrize(
    "settings",
    [
        {"n_clusters": 1},
        {"n_clusters": 65},
        {"meanshift_window": 4},
        {"temperature": 0.0},
        {"spectral_kernel": 0},
        {"spatial_init": "zeros"},
    ],
)
def test_bad_model_settings_raise_config_error(settings):
    with pytest.raises(ConfigError):
        ModelConfig(**settings)


def test_unknown_model_setting_raises():
    with pytest.raises(ConfigError, match="unknown"):
        ModelConfig.from_dict({"n_clusters": 3, "colour": "red"})


def test_wrong_band_count_raises():
    with pytest.raises(ConfigError, match="12"):
        _model().embed(torch.randn(1, 10, 8, 8))


@pytest.mark.parametrize("n_blocks", [1, 3, 4, 100])
@pytest.mark.parametrize(
    "config",
    [ModelConfig(), ModelConfig(spectral_stride=1, spectral_kernel=5, spectral_layers=2, embed_dim=6)],
)
def test_position_blocked_spectral_stage_equals_conv1d(monkeypatch, n_blocks, config):
    monkeypatch.setattr(model_module, "INFERENCE_POSITION_BLOCKS", n_blocks)
    monkeypatch.setattr(model_module, "SPECTRAL_CHUNK_PIXELS", 13)  # ragged last chunk
    torch.manual_seed(9)
    model = DGCModel(40, config).double()
    sequences = torch.randn(50, model.spectral_length, dtype=torch.float64)
    with torch.no_grad():
        expected = model.spectral_convs(sequences.unsqueeze(1)).mean(dim=-1)  # oneDNN conv1d
        blocked = model.band_features(sequences)
    torch.testing.assert_close(blocked, expected, rtol=1e-10, atol=1e-12)


def test_position_blocks_read_only_the_positions_their_kernels_reach():
    conv = torch.nn.Conv1d(2, 3, kernel_size=9, stride=2, padding=4)
    blocks = position_blocks(conv, 32, 4)  # 16 output positions, 4 per block
    reached = [(rows.start // 2, rows.stop // 2) for rows, _, _, _ in blocks]
    # output positions 0-3 read inputs 0..10, 4-7 read 4..18, 8-11 read 12..26, 12-15 read 20..31
    assert reached == [(0, 11), (4, 19), (12, 27), (20, 32)]
    assert [cols for _, cols, _, _ in blocks] == [slice(0, 12), slice(12, 24), slice(24, 36), slice(36, 48)]


@pytest.mark.parametrize("brightness_norm", [True, False])
@pytest.mark.parametrize("band_shift", [0, 2, -3])
def test_compiled_spectral_input_equals_the_matrix_product(brightness_norm, band_shift):
    torch.manual_seed(10)
    model = DGCModel(301, ModelConfig(brightness_norm=brightness_norm))
    model.set_normalization(torch.rand(301), torch.rand(301) + 0.5, brightness_floor=0.05)
    raw = torch.rand(200, 301) + 0.1
    raw[:3] = 0.0  # dark pixels: the brightness floor applies
    expected = model.spectral_input(raw, band_shift)  # grad mode: one matrix product (training)
    with torch.inference_mode():
        compiled = model.spectral_input(raw, band_shift)
    torch.testing.assert_close(compiled, expected, rtol=1e-5, atol=1e-5)


def test_bin_windows_product_handles_any_matrix():
    from napari_dgc.model.cpu_kernels import bin_windows, spectral_input_cpu

    rng = np.random.default_rng(11)
    raw = rng.random((40, 37), dtype=np.float32)
    matrix = np.zeros((37, 6), np.float32)
    for column, (first, stop) in enumerate([(0, 9), (3, 5), (20, 37), (30, 37), (0, 0), (10, 28)]):
        matrix[first:stop, column] = rng.standard_normal(stop - first)
    matrix[14:17, 5] = 0.0  # zeros inside a column's run
    windows = bin_windows(matrix)
    assert windows[1].shape == (6, 32)  # longest run 18 -> two 16-band steps
    offset = rng.standard_normal(6).astype(np.float32)
    product = raw.astype(np.float64) @ matrix
    np.testing.assert_allclose(
        spectral_input_cpu(raw, windows, offset, 1e-6, False), product - offset, rtol=1e-5, atol=1e-5
    )
    brightness = raw.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(
        spectral_input_cpu(raw, windows, offset, 1e-6, True),
        product / brightness - offset,
        rtol=1e-5,
        atol=1e-5,
    )
    assert bin_windows(matrix[:12, :1]) is None  # a 16-band window does not fit in 12 rows
