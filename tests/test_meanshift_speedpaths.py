"""Speed paths of the training step: unnormalised mean-shift weights, chunks on worker threads,
normalisation + band shift + resampling folded into one matrix, chunked spectral gradients."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from napari_dgc.config import ModelConfig
from napari_dgc.model import meanshift as _meanshift
from napari_dgc.model import network as model_module
from napari_dgc.model.meanshift import _neighbour_mask, _offsets, mean_shift
from napari_dgc.model.network import DGCModel

SMALL = ModelConfig(n_clusters=3, embed_dim=8, spectral_channels=4, spectral_bands=8, meanshift_iters=2)


def _reference_mean_shift(z, bandwidth, iterations, radius, valid=None):
    """The textbook formulation through plain autograd: softmax over the window's Gaussian
    logits, neighbours outside the image excluded, weighted mean re-normalised."""
    batch, _, height, width = z.shape
    if valid is None:
        valid = torch.ones(batch, height, width, dtype=z.dtype)
    ok = _neighbour_mask(valid.to(z.dtype), radius)
    for _ in range(iterations):
        padded = F.pad(z, (radius,) * 4)
        neighbours = torch.stack(
            [
                padded[:, :, radius + dy : radius + dy + height, radius + dx : radius + dx + width]
                for dy, dx in _offsets(radius)
            ]
        )
        centre = len(neighbours) // 2
        dots = (neighbours * z).sum(dim=2)
        dots = torch.cat([dots[:centre], torch.ones_like(dots[:1]), dots[centre + 1 :]])
        logits = ((dots - 1.0) / bandwidth**2).masked_fill(~ok, float("-inf"))
        weights = torch.softmax(logits, dim=0)
        z = F.normalize((weights.unsqueeze(2) * neighbours).sum(dim=0), dim=1)
    return z


@pytest.fixture
def two_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("masked", [False, True])
def test_mean_shift_equals_the_softmax_formulation_with_gradients(masked):
    torch.manual_seed(2)
    z = F.normalize(torch.randn(2, 5, 7, 6, dtype=torch.float64), dim=1)
    valid = (torch.rand(2, 7, 6) > 0.3).double() if masked else None
    bandwidth = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    results = []
    for function in (mean_shift, _reference_mean_shift):
        leaf = z.clone().requires_grad_()
        out = function(leaf, bandwidth, 3, 2, valid)
        grad_z, grad_bandwidth = torch.autograd.grad(out, (leaf, bandwidth), upstream)
        results.append((out, grad_z, grad_bandwidth))
    for fast, reference in zip(*results):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-10)


def test_worker_threads_give_the_serial_result_bit_for_bit(monkeypatch, two_threads):
    monkeypatch.setattr(_meanshift, "CHUNK_ELEMENTS", 6 * 6 * 4)  # one image per chunk
    torch.manual_seed(3)
    z = F.normalize(torch.randn(5, 4, 6, 6), dim=1)
    bandwidth = torch.tensor(0.5, requires_grad=True)
    upstream = torch.randn(5, 4, 6, 6)
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        leaf = z.clone().requires_grad_()
        out = mean_shift(leaf, bandwidth, 2, 2)
        results[threads] = (out, *torch.autograd.grad(out, (leaf, bandwidth), upstream))
    for serial, threaded in zip(results[1], results[2]):
        assert torch.equal(serial, threaded)


def test_gradient_is_exact_across_chunks_on_worker_threads(monkeypatch, two_threads):
    monkeypatch.setattr(_meanshift, "CHUNK_ELEMENTS", 2 * 6 * 5 * 4)  # chunks of 2, 2 and 1
    torch.manual_seed(4)
    z = F.normalize(torch.randn(5, 4, 6, 5, dtype=torch.float64), dim=1).requires_grad_()
    bandwidth = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(5, 6, 5, dtype=torch.float64)
    valid[3, :, :2] = 0
    assert torch.autograd.gradcheck(lambda a, b: mean_shift(a, b, 2, 1, valid), (z, bandwidth))


def test_worker_threads_leave_the_thread_settings_alone(two_threads):
    z = F.normalize(torch.randn(4, 4, 8, 8), dim=1).requires_grad_()
    mean_shift(z, torch.tensor(0.5), 1, 1).sum().backward()
    assert torch.get_num_threads() == 2
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert seen == [2]


@pytest.mark.parametrize("shift", [-2, 0, 3])
@pytest.mark.parametrize(
    "settings", [{"brightness_norm": True}, {"brightness_norm": False}, {"spectral_bands": None}]
)
def test_spectral_input_folds_normalisation_shift_and_resampling(shift, settings):
    torch.manual_seed(5)
    model = DGCModel(12, ModelConfig(**{**SMALL.to_dict(), **settings}))
    model.set_normalization(torch.rand(12), torch.rand(12) + 0.5, brightness_floor=0.01)
    raw = torch.rand(30, 12) + 0.2
    normalized = model.normalize_pixels(raw)
    shifted = normalized[:, (torch.arange(12) + shift).clamp(0, 11)]
    expected = shifted if model.resampling is None else shifted @ model.resampling
    torch.testing.assert_close(model.spectral_input(raw, shift), expected, rtol=1e-5, atol=1e-5)


def test_spectral_gradients_in_chunks_equal_one_piece(monkeypatch):
    torch.manual_seed(6)
    model = DGCModel(12, SMALL)
    sequences = torch.randn(50, 8)
    upstream = torch.randn(50, SMALL.embed_dim)
    results = []
    for chunk in (10**6, 7):
        monkeypatch.setattr(model_module, "SPECTRAL_GRAD_CHUNK_PIXELS", chunk)
        model.zero_grad()
        features = model.band_features(sequences)
        features.backward(upstream)
        results.append([features.detach()] + [p.grad.clone() for p in model.spectral_convs.parameters()])
    for whole, chunked in zip(*results):
        torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def _spectral_gradients(model, sequences, upstream):
    model.zero_grad()
    leaf = sequences.clone().requires_grad_()
    features = model.band_features(leaf)
    features.backward(upstream)
    return [features.detach(), leaf.grad] + [p.grad.clone() for p in model.spectral_convs.parameters()]


def test_banded_spectral_stack_gradients_equal_autograd_through_conv1d(monkeypatch):
    monkeypatch.setattr(model_module, "SPECTRAL_GRAD_CHUNK_PIXELS", 9)  # ragged last chunk
    torch.manual_seed(7)
    model = DGCModel(12, SMALL).double()
    sequences = torch.randn(40, 8, dtype=torch.float64)
    upstream = torch.randn(40, SMALL.embed_dim, dtype=torch.float64)
    fast = _spectral_gradients(model, sequences, upstream)
    model.zero_grad()
    leaf = sequences.clone().requires_grad_()
    reference = model.spectral_convs(leaf.unsqueeze(1)).mean(dim=-1)  # oneDNN conv1d + autograd
    reference.backward(upstream)
    expected = [reference.detach(), leaf.grad] + [p.grad for p in model.spectral_convs.parameters()]
    for got, want in zip(fast, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_banded_spectral_stack_on_worker_threads_equals_serial_bit_for_bit(monkeypatch, two_threads):
    monkeypatch.setattr(model_module, "SPECTRAL_GRAD_CHUNK_PIXELS", 11)
    torch.manual_seed(8)
    model = DGCModel(12, SMALL)
    sequences = torch.randn(50, 8)
    upstream = torch.randn(50, SMALL.embed_dim)
    results = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        results[threads] = _spectral_gradients(model, sequences, upstream)
    for serial, threaded in zip(results[1], results[2]):
        assert torch.equal(serial, threaded)


@pytest.mark.parametrize("iterations", [0, 2])
def test_normalising_inside_the_mean_shift_equals_f_normalize_first(monkeypatch, two_threads, iterations):
    monkeypatch.setattr(_meanshift, "CHUNK_ELEMENTS", 2 * 6 * 5 * 4)  # chunks of 2, 2 and 1
    torch.manual_seed(9)
    features = torch.randn(5, 4, 6, 5, dtype=torch.float64)
    features[1, :, 2, 3] = 0.0  # a zero vector: the norm is clamped, as in F.normalize
    bandwidth = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 4, 6, 5, dtype=torch.float64)
    results = []
    for normalize in (True, False):
        leaf = features.clone().requires_grad_()
        z = leaf if normalize else F.normalize(leaf, dim=1)
        out = mean_shift(z, bandwidth, iterations, 2, normalize=normalize)
        inputs = (leaf, bandwidth) if iterations else (leaf,)
        results.append((out, *torch.autograd.grad(out, inputs, upstream)))
    for fused, separate in zip(*results):
        torch.testing.assert_close(fused, separate, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(
            mean_shift(features, bandwidth, iterations, 2, normalize=True),
            results[1][0].detach(),
            rtol=1e-10,
            atol=1e-12,
        )
