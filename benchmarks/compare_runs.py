"""Compare two run folders checkpoint by checkpoint, bit for bit.

The check behind "the same seed gives bit-identical checkpoints" after a refactor: train the
same command with the old and the new tree, then::

    python benchmarks/compare_runs.py OLD_RUN NEW_RUN

It compares every tensor of ``model.safetensors`` and ``optimizer.safetensors`` with
``numpy.array_equal``, every ``state.json`` except the measured ``elapsed_s``, and the start
selection recorded in ``run.json`` (keys renamed since, :data:`RENAMED_KEYS`, by their new
names); it exits non-zero at the first difference.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
#: Keys renamed since a run may have been written (old name -> new): compared under the new name.
RENAMED_KEYS = {"separation": "selection_score", "start_separations": "start_scores"}


def _renamed(mapping: dict) -> dict:
    return {RENAMED_KEYS.get(key, key): value for key, value in mapping.items()}


def compare(first: Path, second: Path) -> str:
    """Raise AssertionError at the first difference; return a one-line summary."""
    ids = sorted(path.name for path in (first / "checkpoints").iterdir())
    other_ids = sorted(path.name for path in (second / "checkpoints").iterdir())
    assert ids == other_ids, f"checkpoint ids differ: {ids} vs {other_ids}"
    tensors = 0
    for checkpoint in ids:
        for name in TENSOR_FILES:
            a = load_file(first / "checkpoints" / checkpoint / name)
            b = load_file(second / "checkpoints" / checkpoint / name)
            assert a.keys() == b.keys(), f"{checkpoint}/{name}: tensor names differ"
            for key in a:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), (
                    f"{checkpoint}/{name}: {key}"
                )
                tensors += 1
        states = [
            json.loads((run / "checkpoints" / checkpoint / "state.json").read_text())
            for run in (first, second)
        ]
        for state in states:
            state["training"].pop("elapsed_s")
            state["stats"] = _renamed(state["stats"])
        assert states[0] == states[1], f"{checkpoint}/state.json differs"
    manifests = [_renamed(json.loads((run / "run.json").read_text())) for run in (first, second)]
    for key in ("selected_start", "start_scores"):
        assert manifests[0].get(key) == manifests[1].get(key), f"run.json: {key} differs"
    return f"{len(ids)} checkpoints, {tensors} tensors bit-identical, states and start selection equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args()
    print(compare(args.first, args.second))


if __name__ == "__main__":
    main()
