"""The manifest of a batch segmentation: what was done to which cube, written after every cube.

``DIR/segment-manifest.json`` (and its CSV twin) lists one entry per finished cube: its status
(``done`` now, ``skipped`` because verified outputs of an earlier run were kept, ``failed`` with
the reason), its output files with SHA-256, time, pixel count and cluster (and class) areas.
A shard of a cluster job writes ``segment-manifest.shard-I-of-N.json`` instead, so shards never
write the same file; a later run without ``--shard`` reads every part and writes the combined
manifest. Every file is written atomically, so a ``kill -9`` leaves the last complete version.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from napari_dgc.atomic import atomic_write_json, atomic_write_text, file_sha256
from napari_dgc.errors import DGCError
from napari_dgc.safe_json import read_json

MANIFEST_NAME = "segment-manifest.json"
CLASS_AREAS_NAME = "class-areas.csv"
MANIFEST_KIND = "napari-dgc segment manifest"
MANIFEST_VERSION = 1
#: Manifests of hundreds of cubes with a few dozen clusters stay far below this.
MAX_MANIFEST_BYTES = 256 * 2**20


def shard_suffix(shard: tuple[int, int] | None) -> str:
    """``""`` for a whole run, ``".shard-I-of-N"`` for shard ``I`` of ``N``."""
    return "" if shard is None else f".shard-{shard[0]}-of-{shard[1]}"


def manifest_path(out_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    """Where the manifest (or one shard's part of it) goes."""
    return out_dir / f"segment-manifest{shard_suffix(shard)}.json"


def read_entries(out_dir: Path) -> dict[str, dict]:
    """Every cube entry recorded in ``out_dir``'s manifest and its shard parts, by cube name.

    When a cube appears in several files (the combined manifest and a part written later), the
    entry finished last wins. Unreadable or foreign manifests are ignored rather than trusted:
    their cubes are simply done again.
    """
    entries: dict[str, dict] = {}
    files = [manifest_path(out_dir), *sorted(out_dir.glob("segment-manifest.shard-*-of-*.json"))]
    for file in files:
        if not file.is_file():
            continue
        try:
            document = read_json(file, max_bytes=MAX_MANIFEST_BYTES)
        except (DGCError, OSError):
            continue
        if not isinstance(document, dict) or document.get("kind") != MANIFEST_KIND:
            continue
        for entry in document.get("cubes", []):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                continue
            known = entries.get(entry["name"])
            if known is None or str(entry.get("finished", "")) >= str(known.get("finished", "")):
                entries[entry["name"]] = entry
    return entries


def input_signature(cube: str) -> dict[str, int] | None:
    """Size and modification time of a cube's file (or folder): a cheap "same input" check."""
    try:
        stat = os.stat(cube)
    except OSError:
        return None
    return {"bytes": int(stat.st_size), "mtime_ns": int(stat.st_mtime_ns)}


def outputs_verified(entry: Mapping[str, Any], out_dir: Path) -> bool:
    """True if every output file an entry lists exists with the recorded SHA-256."""
    outputs = entry.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    for output in outputs.values():
        if not isinstance(output, dict) or not isinstance(output.get("file"), str):
            return False
        path = out_dir / output["file"]
        # Only plain names inside the output folder count: a manifest cannot point elsewhere.
        if Path(output["file"]).name != output["file"] or not path.is_file():
            return False
        try:
            if file_sha256(path) != output.get("sha256"):
                return False
        except OSError:
            return False
    return True


def is_reusable(entry: Mapping[str, Any] | None, cube: str, out_dir: Path, identity: Mapping) -> bool:
    """True if a recorded entry proves a cube done with this model and these options.

    ``identity`` holds the model fingerprint and the output options; the entry must carry the
    same, the cube file must look unchanged (size, modification time) and every output must
    match its checksum.
    """
    if entry is None or entry.get("status") not in ("done", "skipped"):
        return False
    if entry.get("identity") != dict(identity) or entry.get("cube") != cube:
        return False
    if entry.get("input") != input_signature(cube):
        return False
    return outputs_verified(entry, out_dir)


def area_table(counts: Iterable[int], names: list[str] | None = None) -> list[dict]:
    """Pixels and percent of all pixels per value (``names[i]`` names value ``i``)."""
    counts = [int(count) for count in counts]
    total = sum(counts)
    rows = []
    for value, count in enumerate(counts):
        row: dict[str, Any] = {"value": value}
        if names is not None:
            row["name"] = names[value]
        row["pixels"] = count
        row["percent"] = round(100.0 * count / total, 4) if total else 0.0
        rows.append(row)
    return rows


def write_manifest(
    out_dir: Path,
    shard: tuple[int, int] | None,
    header: Mapping[str, Any],
    entries: Mapping[str, dict],
) -> None:
    """Write the manifest JSON, its CSV twin and (with classes) the class-area table, atomically."""
    ordered = [entries[name] for name in sorted(entries)]
    path = manifest_path(out_dir, shard)
    document = {"kind": MANIFEST_KIND, "version": MANIFEST_VERSION, **header, "cubes": ordered}
    atomic_write_json(path, document)
    atomic_write_text(path.with_suffix(".csv"), _manifest_csv(ordered))
    if any(entry.get("class_areas") for entry in ordered):
        atomic_write_text(out_dir / f"class-areas{shard_suffix(shard)}.csv", _class_area_csv(ordered))


def _csv_text(header: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _manifest_csv(entries: list[dict]) -> str:
    roles = sorted({role for entry in entries for role in (entry.get("outputs") or {})})
    n_clusters = max((len(entry.get("cluster_areas") or []) for entry in entries), default=0)
    header = ["name", "cube", "status", "seconds", "rows", "cols", "pixels", "finished", "error"]
    header += [f"{role}_{part}" for role in roles for part in ("file", "sha256")]
    header += [f"cluster_{k}_{part}" for k in range(n_clusters) for part in ("pixels", "percent")]
    rows = []
    for entry in entries:
        row = {key: entry.get(key) for key in header[:9]}
        for role, output in (entry.get("outputs") or {}).items():
            row[f"{role}_file"], row[f"{role}_sha256"] = output.get("file"), output.get("sha256")
        for area in entry.get("cluster_areas") or []:
            row[f"cluster_{area['value']}_pixels"] = area["pixels"]
            row[f"cluster_{area['value']}_percent"] = area["percent"]
        rows.append(row)
    return _csv_text(header, rows)


def _class_area_csv(entries: list[dict]) -> str:
    """One row per cube with classes: pixels and percent of the cube per class."""
    names: list[str] = []
    for entry in entries:
        for area in entry.get("class_areas") or []:
            if area["name"] not in names:
                names.append(area["name"])
    header = ["name", "cube", "status", "pixels"]
    header += [f"{name} {part}" for name in names for part in ("pixels", "%")]
    rows = []
    for entry in entries:
        if not entry.get("class_areas"):
            continue
        row = {key: entry.get(key) for key in header[:4]}
        for area in entry["class_areas"]:
            row[f"{area['name']} pixels"], row[f"{area['name']} %"] = area["pixels"], area["percent"]
        rows.append(row)
    return _csv_text(header, rows)
