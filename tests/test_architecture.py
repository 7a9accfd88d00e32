"""The dependency rule: the import-linter contracts in pyproject.toml hold.

Layers from the GUI and CLI down to the configuration, the engine importing no Qt, napari or
magicgui, and no import cycles (docs/architecture.md). import-linter reads every import
statement, including those inside functions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout
