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
from napari_dgc.run_folder.manifest import (
    MODEL_FILE,
    OPTIMIZER_FILE,
    STATE_FILE,
    TRAINING_TENSOR_FILE,
    read_json,
    to_json,
)

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


def verified_file(file: Path, expected_sha256: str | None) -> Path:
    """``file`` if it exists and matches its recorded checksum; else CheckpointError."""
    if not file.is_file():
        raise CheckpointError(f"{file}: checkpoint file is missing")
    if expected_sha256 is not None and atomic.file_sha256(file) != expected_sha256:
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


def check_model_tensors(
    file: Path, expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]
) -> None:
    """Refuse ``loaded`` tensors whose names or shapes differ from the model's ``expected``."""
    missing = sorted(expected.keys() - loaded.keys())
    unexpected = sorted(loaded.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: tensors do not match the model (missing {missing}, unexpected {unexpected})"
        )
    for name, tensor in expected.items():
        if tuple(loaded[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{file}: tensor {name} has shape {tuple(loaded[name].shape)}, the "
                f"run's configuration needs {tuple(tensor.shape)}"
            )


def read_checkpoint_state(folder: Path, digests: dict[str, str]) -> tuple[dict, dict, dict]:
    """Model state, optimizer state and training state of the checkpoint in ``folder``, every
    file verified against ``digests`` first (see :meth:`RunDirectory.load_checkpoint_state`).
    """

    def tensors_of(name: str) -> dict:
        return load_tensors(verified_file(folder / name, digests.get(name)))[0]

    model_state = tensors_of(MODEL_FILE)
    optimizer_tensors = tensors_of(OPTIMIZER_FILE)
    training_tensors = tensors_of(TRAINING_TENSOR_FILE) if TRAINING_TENSOR_FILE in digests else {}
    state_file = verified_file(folder / STATE_FILE, digests.get(STATE_FILE))
    state = read_json(state_file)
    if not isinstance(state, dict) or not {"optimizer", "training"} <= state.keys():
        raise CheckpointError(f"{state_file}: optimizer or training state is missing")
    return (
        model_state,
        decode(state["optimizer"], optimizer_tensors, state_file),
        decode(state["training"], training_tensors, state_file),
    )
