"""Checkpoint files: nested training state split into safetensors tensors and JSON structure.

An optimizer state or a training state is a nest of dicts, lists, tuples, numbers and tensors.
:func:`encode` moves the tensors into a flat ``{name: tensor}`` dict (written with safetensors)
and leaves JSON markers in their place; :func:`decode` restores the exact structure
(``optimizer.load_state_dict`` needs int keys and tuples back). Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dgc import atomic
from napari_dgc.errors import CheckpointError
from napari_dgc.run_folder.manifest import read_json, to_json
from napari_dgc.run_folder.paths import inside_run
from napari_dgc.run_folder.validation import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINING_TENSOR_FILE,
    check_finite,
    check_model_tensors,
    check_optimizer_state,
    check_state_step,
)

__all__ = ["check_model_tensors", "decode", "encode", "read_checkpoint_state", "write_checkpoint_files"]

if TYPE_CHECKING:
    import torch


def encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Turn a nested structure into JSON, moving tensors into ``tensors`` under path names.

    Tensors become ``{"__tensor__": name}``, tuples ``{"__tuple__": [...]}`` and dicts with
    non-string keys (optimizer states are keyed by int) ``{"__items__": [[key, value], ...]}``,
    so :func:`decode` restores the exact structure ``optimizer.load_state_dict`` expects.
    """
    import torch

    if isinstance(value, torch.Tensor):
        tensors[name] = value
        return {"__tensor__": name}
    if isinstance(value, dict):
        if all(isinstance(key, str) for key in value):
            return {key: encode(item, f"{name}.{key}", tensors) for key, item in value.items()}
        items = [
            [encode(key, f"{name}.key{index}", tensors), encode(item, f"{name}.{key}", tensors)]
            for index, (key, item) in enumerate(value.items())
        ]
        return {"__items__": items}
    if isinstance(value, tuple):
        items = [encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {"__tuple__": items}
    if isinstance(value, list):
        return [encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
    if isinstance(value, (np.generic, np.ndarray)):
        return to_json(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {name!r} in a checkpoint")


def decode(value: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    """Restore the structure :func:`encode` stored, its tensors taken from ``tensors``; ``source``
    names the file in errors.
    """
    if isinstance(value, list):
        return [decode(item, tensors, source) for item in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"__tensor__"}:
        try:
            return tensors[value["__tensor__"]]
        except KeyError:
            raise CheckpointError(
                f"{source}: tensor {value['__tensor__']!r} is missing; the checkpoint is corrupt"
            ) from None
    if set(value) == {"__tuple__"}:
        return tuple(decode(item, tensors, source) for item in value["__tuple__"])
    if set(value) == {"__items__"}:
        return {
            decode(key, tensors, source): decode(item, tensors, source) for key, item in value["__items__"]
        }
    return {key: decode(item, tensors, source) for key, item in value.items()}


def write_checkpoint_files(
    folder: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    training_state: dict,
    stats: dict,
    metadata: dict[str, str],
) -> tuple[dict, dict[str, str]]:
    """Write one checkpoint's files atomically into ``folder``.

    Returns the statistics as stored (plain JSON) and the SHA-256 of every file written, for
    the manifest entry. ``OSError`` (e.g. a full disk) propagates: the caller removes the folder.
    """
    optimizer_tensors: dict[str, torch.Tensor] = {}
    training_tensors: dict[str, torch.Tensor] = {}
    state = {
        "step": int(step),
        "stats": to_json(stats),
        "optimizer": encode(optimizer_state, "optimizer", optimizer_tensors),
        "training": encode(training_state, "training", training_tensors),
    }
    files = {MODEL_FILE: model_state, OPTIMIZER_FILE: optimizer_tensors}
    if training_tensors:
        files[TRAINING_TENSOR_FILE] = training_tensors
    for name, tensors in files.items():
        atomic.atomic_save_safetensors(folder / name, tensors, metadata if name == MODEL_FILE else None)
    atomic.atomic_write_json(folder / STATE_FILE, state)
    return state["stats"], {name: atomic.file_sha256(folder / name) for name in [*files, STATE_FILE]}


def verified_file(file: Path, expected_sha256: str | None, run_path: Path | None = None) -> Path:
    """``file`` if it exists, stays inside ``run_path`` and matches its recorded checksum.

    A checksum is required: a listing without one (``"files": {}`` in ``run.json``) must not
    switch the check off, so ``None`` is refused too.

    Raises
    ------
    CheckpointError
        Naming the file.
    """
    if run_path is not None:
        inside_run(run_path, file, "read")
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file is missing")
    if expected_sha256 is None:
        raise CheckpointError(f"{file}: the run lists no checksum for this file; refusing to trust it")
    if atomic.file_sha256(file) != expected_sha256:
        raise CheckpointError(f"{file}: checksum mismatch, the file is corrupt or truncated")
    return file


def load_tensors(file: Path) -> tuple[dict, dict[str, str]]:
    """The tensors and metadata of a safetensors file (no pickle); CheckpointError if unreadable."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(file, framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            return tensors, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{file}: not a readable safetensors file ({error})") from error


def meta_model_state(n_bands: int, model_config: Any, file: Path) -> tuple[dict, list]:
    """The state dict and parameters a model of ``model_config`` has, without allocating them.

    The model is built on torch's ``meta`` device (shapes and dtypes only), so a ``run.json``
    asking for an absurd size (``embed_dim`` = 10**7: petabytes) is compared with the stored
    weights, and refused, before anything of that size exists.
    """
    import torch

    from napari_dgc.model.network import DGCModel

    try:
        with torch.device("meta"):
            model = DGCModel(int(n_bands), model_config)
    except (ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{file}: the run's model settings cannot be built ({error})") from error
    return model.state_dict(), list(model.parameters())


def read_model_weights(
    folder: Path, entry: dict, run_path: Path, n_bands: int, model_config: Any
) -> tuple[dict, list]:
    """The verified weights of the checkpoint in ``folder`` and the model's parameters (meta).

    The one check of weights for segmenting, exporting, reviewing and resuming: checksum, inside
    the run folder, band count of the file's metadata, then :func:`check_model_tensors` against
    a model of ``n_bands`` and ``model_config`` built on the meta device.
    """
    file = verified_file(folder / MODEL_FILE, entry["files"].get(MODEL_FILE), run_path)
    model_state, metadata = load_tensors(file)
    if metadata.get("n_bands") not in (None, str(n_bands)):
        raise CheckpointError(f"{file}: weights for {metadata['n_bands']} bands, but the run has {n_bands}")
    expected, parameters = meta_model_state(n_bands, model_config, file)
    check_model_tensors(file, expected, model_state)
    return model_state, parameters


def read_checkpoint_state(
    folder: Path, entry: dict, run_path: Path, n_bands: int, model_config: Any
) -> tuple[dict, dict, dict]:
    """Model state, optimizer state and training state of the checkpoint in ``folder``.

    Every file is checked against the checksums of ``entry`` (its ``run.json`` entry) and must
    stay inside ``run_path``; the weights must fit a model of ``n_bands`` and ``model_config``
    (:func:`check_model_tensors`), the optimizer state its parameters
    (:func:`check_optimizer_state`), every tensor must be finite and ``state.json`` must record
    the entry's step (see :meth:`RunDirectory.load_checkpoint_state`).
    """
    digests = entry["files"]

    def tensors_of(name: str) -> tuple[Path, dict]:
        file = verified_file(folder / name, digests.get(name), run_path)
        return file, load_tensors(file)[0]

    model_state, parameters = read_model_weights(folder, entry, run_path, n_bands, model_config)
    optimizer_file, optimizer_tensors = tensors_of(OPTIMIZER_FILE)
    check_finite(optimizer_file, optimizer_tensors)
    training_tensors = {}
    if TRAINING_TENSOR_FILE in digests:
        training_file, training_tensors = tensors_of(TRAINING_TENSOR_FILE)
        check_finite(training_file, training_tensors)
    state_file = verified_file(folder / STATE_FILE, digests.get(STATE_FILE), run_path)
    state = read_json(state_file)
    if not isinstance(state, dict) or not {"optimizer", "training"} <= state.keys():
        raise CheckpointError(f"{state_file}: optimizer or training state is missing")
    check_state_step(state_file, state, entry)
    try:
        optimizer_state = decode(state["optimizer"], optimizer_tensors, state_file)
        training_state = decode(state["training"], training_tensors, state_file)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{state_file}: malformed state ({error!r})") from error
    check_optimizer_state(optimizer_file, optimizer_state, parameters)
    return model_state, optimizer_state, training_state
