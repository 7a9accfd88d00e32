"""Validation of what a run folder holds, shared by every reader of checkpoints.

One path checks a checkpoint whether it is loaded to segment, export, review or resume:

* :func:`entry_problem` — one ``run.json`` checkpoint entry (id, steps, start, statistics and the
  SHA-256 of every file the checkpoint must have, so emptying ``"files"`` cannot switch the
  checksums off); a bad entry makes only that checkpoint unusable;
* :func:`check_model_tensors` — names, shapes, dtypes and finiteness of the weights;
* :func:`check_optimizer_state` — parameter groups, their settings and per-parameter state
  shapes against the model's parameters;
* :func:`check_state_step` — the step recorded in ``state.json`` against the entry.

Everything is refused with :class:`~napari_dgc.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_dgc.errors import CheckpointError

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINING_TENSOR_FILE = "training.safetensors"
STATE_FILE = "state.json"
#: Files every checkpoint has (``training.safetensors`` only when its state holds tensors).
REQUIRED_FILES = frozenset({MODEL_FILE, OPTIMIZER_FILE, STATE_FILE})
KNOWN_FILES = REQUIRED_FILES | {TRAINING_TENSOR_FILE}
#: Largest step or start a checkpoint may record (ids are paths; a step is a count of work done).
MAX_STEP = 10**9
MAX_START = 10**6
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def checkpoint_id_for(step: int, start: int = 0) -> str:
    """Return the checkpoint id of ``step`` of start ``start`` (``step-000100``,
    ``start1-step-000100``).
    """
    prefix = f"start{int(start)}-" if start else ""
    return f"{prefix}step-{int(step):06d}"


def _count(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def entry_problem(entry: Any) -> str | None:
    """What is wrong with one ``run.json`` checkpoint entry, or ``None`` if it is usable."""
    if not isinstance(entry, dict):
        return "an entry is not an object"
    name = entry.get("id")
    if not isinstance(name, str):
        return "an entry has no id"
    if not _count(entry.get("step"), 1, MAX_STEP):
        return f"checkpoint {name!r}: step {entry.get('step')!r} is not a whole number in 1..{MAX_STEP}"
    if not _count(entry.get("start", 0), 0, MAX_START):
        return f"checkpoint {name!r}: start {entry.get('start')!r} is invalid"
    if not _count(entry.get("run_step", entry["step"]), entry["step"], MAX_STEP * (MAX_START + 1)):
        return f"checkpoint {name!r}: run step {entry.get('run_step')!r} is invalid"
    if name != checkpoint_id_for(entry["step"], entry.get("start", 0)):  # ids become paths
        return f"checkpoint {name!r}: the id does not match its step and start"
    if not isinstance(entry.get("stats"), dict):
        return f"checkpoint {name!r}: statistics missing"
    files = entry.get("files")
    if not isinstance(files, dict):
        return f"checkpoint {name!r}: file checksums missing"
    missing = sorted(REQUIRED_FILES - files.keys())
    if missing:
        return f"checkpoint {name!r}: no checksum for {', '.join(missing)}"
    unknown = sorted(files.keys() - KNOWN_FILES)
    if unknown:
        return f"checkpoint {name!r}: unknown files {', '.join(map(str, unknown))}"
    if not all(isinstance(digest, str) and _SHA256.match(digest) for digest in files.values()):
        return f"checkpoint {name!r}: a checksum is not a SHA-256"
    return None


def check_step(step: Any, start: Any = 0) -> None:
    """Refuse writing a checkpoint of an impossible step or start (e.g. restored from a bad file)."""
    if not _count(step, 1, MAX_STEP) or not _count(start, 0, MAX_START):
        raise CheckpointError(f"cannot write a checkpoint of step {step!r}, start {start!r}")


def check_model_tensors(
    file: Path, expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]
) -> None:
    """Refuse ``loaded`` tensors that differ from the model's ``expected`` ones.

    Names, shapes and dtypes must match and every floating-point value must be finite: NaN or
    infinite weights would segment "successfully" into nonsense.
    """
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
        if loaded[name].dtype != tensor.dtype:
            raise CheckpointError(
                f"{file}: tensor {name} is {loaded[name].dtype}, the model needs {tensor.dtype}"
            )
    check_finite(file, loaded)


def check_finite(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Refuse tensors holding NaN or infinite values."""
    import torch

    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{file}: tensor {name} holds NaN or infinite values")


def check_optimizer_state(file: Path, state: Any, parameters: list[torch.Tensor]) -> None:
    """Refuse an optimizer state that does not fit ``parameters`` (the model's, in order).

    Checks the parameter groups (a list of settings with parameter indices that together cover
    each parameter once), numeric settings (finite), and every per-parameter state tensor
    (``exp_avg`` ... of the parameter's shape, ``step`` a scalar), all finite.
    """
    import torch

    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list):
        raise CheckpointError(f"{file}: the optimizer state has no parameter groups")
    if not isinstance(state.get("state"), dict):
        raise CheckpointError(f"{file}: the optimizer state has no per-parameter state")
    indices: list = []
    for group in state["param_groups"]:
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise CheckpointError(f"{file}: an optimizer parameter group is invalid")
        indices += group["params"]
        for key, value in group.items():
            if key != "params" and not _plain_setting(value):
                raise CheckpointError(f"{file}: optimizer setting {key!r} = {value!r} is invalid")
    if not all(_count(i, 0, len(parameters) - 1) for i in indices) or sorted(indices) != list(
        range(len(parameters))
    ):
        raise CheckpointError(
            f"{file}: the optimizer covers parameters {sorted(map(repr, indices))}, the model has "
            f"{len(parameters)}"
        )
    for index, values in state["state"].items():
        if not _count(index, 0, len(parameters) - 1) or not isinstance(values, dict):
            raise CheckpointError(f"{file}: optimizer state of unknown parameter {index!r}")
        shape = tuple(parameters[index].shape)
        for key, value in values.items():
            if not isinstance(value, torch.Tensor):
                if not _plain_setting(value):
                    raise CheckpointError(f"{file}: optimizer state {key!r} of parameter {index} is invalid")
                continue
            wanted = () if key == "step" else shape
            if tuple(value.shape) != wanted or not value.is_floating_point():
                raise CheckpointError(
                    f"{file}: optimizer state {key!r} of parameter {index} has shape "
                    f"{tuple(value.shape)} ({value.dtype}), expected {wanted}"
                )
            check_finite(file, {f"{key} of parameter {index}": value})


def _plain_setting(value: Any) -> bool:
    """A JSON-like optimizer setting: None, bool, str, a finite number, or a list/tuple of them."""
    if value is None or isinstance(value, (bool, str)):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_plain_setting(item) for item in value)
    return False


def check_state_step(file: Path, state: dict, entry: dict) -> None:
    """Refuse a ``state.json`` whose step or start disagrees with its ``run.json`` entry."""
    if state.get("step") != entry["step"]:
        raise CheckpointError(
            f"{file}: step {state.get('step')!r} differs from the run's entry ({entry['step']})"
        )
    training = state.get("training")
    if isinstance(training, dict) and "step" in training and training["step"] != entry["step"]:
        raise CheckpointError(
            f"{file}: training step {training['step']!r} differs from the run's entry ({entry['step']})"
        )
    if isinstance(training, dict) and "start" in training and training["start"] != entry.get("start", 0):
        raise CheckpointError(
            f"{file}: start {training['start']!r} differs from the run's entry ({entry.get('start', 0)})"
        )
