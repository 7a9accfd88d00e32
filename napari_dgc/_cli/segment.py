"""``napari-dgc segment``: cluster (and class) maps of whole cubes or whole studies, tile by tile.

Two sources of the model::

    napari-dgc segment RUN CUBE... --out DIR [--checkpoint ID]     a training run folder
    napari-dgc segment --classes MODEL_FOLDER CUBE... --out DIR     an exported model folder

CUBE may be a quoted glob pattern (``'study/*.hdr'``), expanded here. For every cube it writes
``DIR/<name>_labels.<tif|png|npy>`` (cluster ids; PNG with a colour palette) with its
``.legend.json``; with ``--classes`` also ``DIR/<name>_classes.<ext>`` (class values, 0 =
unassigned); with ``--probabilities`` ``DIR/<name>_probabilities.<tif|npy>`` (float32
``K x rows x cols``; TIFF when the maps are PNG). Every file is written atomically, and after
every cube ``DIR/segment-manifest.json`` (+ ``.csv``, + ``class-areas.csv`` with classes) says
what was done (``inference.batch_manifest``). All inputs are opened and checked, and existing
outputs refused (unless ``--overwrite`` or ``--resume``), before the first cube is segmented.
Batch mechanics (workers, shards, resume, progress) live in ``inference.batch``; what one cube
becomes is :class:`MapSegmenter`, here because it writes through ``analysis.export``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_dgc.errors import ConfigError, DGCError

if TYPE_CHECKING:
    from napari_dgc.inference.batch import CubeResult


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``segment`` sub-command."""
    parser = subparsers.add_parser(
        "segment",
        usage=(
            "napari-dgc segment (RUN [--checkpoint ID] | --classes MODEL_FOLDER) CUBE... --out DIR [options]"
        ),
        help="write cluster (and class) maps of cubes with a trained model",
        description=(
            "Segment whole cubes of any size tile by tile with a checkpoint of a training run "
            "(default: the chosen checkpoint, else the recommended one, else the latest) or "
            "with an exported model folder (--classes, which also writes class maps), one map "
            "per cube. Quoted glob "
            "patterns ('study/*.hdr') are expanded; DIR/segment-manifest.json records every "
            "cube. Exit code 1 when --keep-going skipped failed cubes."
        ),
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="RUN CUBE",
        help="the run folder (unless --classes is given), then the cubes (any format; glob patterns)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    parser.add_argument("--checkpoint", metavar="ID", help="checkpoint id, e.g. step-000400")
    parser.add_argument(
        "--classes",
        metavar="MODEL_FOLDER",
        help="exported model folder (weights + class mapping): also write class maps and class-areas.csv",
    )
    parser.add_argument("--format", choices=("tif", "png", "npy"), default="tif", help="map file format")
    parser.add_argument(
        "--tile",
        type=_positive_int,
        default=256,
        metavar="N",
        help="tile side in pixels (memory vs. speed; the maps do not depend on it)",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        metavar="N",
        help="cubes segmented at once by N worker processes, each loading the model once (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        metavar="N",
        help="tiles of a cube segmented at once by each process (default: its share of the cores)",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="do every N-th cube from the I-th (default under torchrun: RANK/WORLD_SIZE)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep cubes whose outputs verify against the manifest"
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="report a failed cube in the manifest and go on"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress or per-cube lines")
    parser.add_argument(
        "--device", default="auto", help="auto, cpu or cuda (default auto: CUDA when available)"
    )
    parser.add_argument(
        "--probabilities", action="store_true", help="also write per-pixel cluster probabilities"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(handler=_run)


def _output_stem(cube_argument: str) -> str:
    path = Path(cube_argument)
    return path.name if path.is_dir() else path.stem


def _probability_bytes(probabilities: np.ndarray, file_format: str) -> bytes:
    buffer = io.BytesIO()
    if file_format == "npy":
        np.save(buffer, probabilities, allow_pickle=False)
    else:
        import tifffile

        tifffile.imwrite(buffer, probabilities)
    return buffer.getvalue()


def model_fingerprint(model: Any) -> str:
    """SHA-256 of a model's weights and buffers: the same checkpoint gives the same value."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class MapSegmenter:
    """Segments one cube into label (and class, probability) maps; picklable for workers.

    Only the model's source travels to a spawned worker (``__getstate__``); each process loads
    the model once in :meth:`prepare`.
    """

    def __init__(self, out_dir: Path, args: argparse.Namespace, run: str | None, checkpoint: str | None):
        self.out_dir = out_dir
        self.run, self.checkpoint, self.classes = run, checkpoint, args.classes
        self.device, self.tile, self.threads = args.device, args.tile, args.threads
        self.file_format, self.probabilities = args.format, args.probabilities
        self._model: Any = None
        self._mapping: Any = None
        self._fingerprint: str | None = None
        self._preparation: Any = None
        self._open_options: dict[str, dict] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_model": None, "_mapping": None, "_fingerprint": None, "_preparation": None}

    def prepare(self) -> None:
        """Load the model (and class mapping) on its device; a run's also its preparation
        (band crop, references, binning) and how it opened its training cubes (``--key``/``--shape``).
        """
        from napari_dgc.model.device import resolve_device

        device = str(resolve_device(self.device))
        if self.classes is not None:
            from napari_dgc.analysis.export import load_model_folder, model_folder_preparation

            self._model, self._mapping = load_model_folder(self.classes, device=device)
            self._preparation = model_folder_preparation(self.classes)
        else:
            from napari_dgc.run_folder import RunDirectory
            from napari_dgc.run_folder.preparation_file import run_preparation

            run = RunDirectory.open(self.run)
            self._model = run.load_model(self.checkpoint, device=device)
            self._preparation = run_preparation(run)
            self._open_options = {
                str(Path(file).resolve()): options
                for file, options in zip(run.dataset_files, run.dataset_open_options)
            }
        self._fingerprint = model_fingerprint(self._model)

    def identity(self) -> dict[str, Any]:
        """Model fingerprint, output options and any preparation (what a reusable output must
        have been made with).
        """
        identity = {
            "model": self._fingerprint,
            "format": self.file_format,
            "probabilities": self.probabilities,
            "classes": self.classes is not None,
        }
        if self._preparation is not None and not self._preparation.is_identity:
            identity["preparation"] = self._preparation.describe()
        return identity

    def class_names(self) -> list[str] | None:
        """``["unassigned", class 1, ...]`` with a model folder, else ``None``."""
        if self._mapping is None:
            return None
        return ["unassigned", *(cls.name for cls in self._mapping.classes)]

    def planned_outputs(self, name: str) -> dict[str, Path]:
        """Every file the cube ``name`` gets, legends included."""
        from napari_dgc.analysis.export import legend_path

        outputs = {"labels": self.out_dir / f"{name}_labels.{self.file_format}"}
        if self.classes is not None:
            outputs["classes"] = self.out_dir / f"{name}_classes.{self.file_format}"
        for role in list(outputs):
            outputs[f"{role}_legend"] = legend_path(outputs[role])
        if self.probabilities:
            suffix = "tif" if self.file_format == "png" else self.file_format
            outputs["probabilities"] = self.out_dir / f"{name}_probabilities.{suffix}"
        return outputs

    def _open(self, cube: str) -> Any:
        """Open ``cube`` as the run opened it if it is one of its training cubes, prepared as
        the run's cubes were.
        """
        from napari_dgc.io import open_cube

        opened = open_cube(cube, **self._open_options.get(str(Path(cube).resolve()), {}))
        return opened if self._preparation is None else self._preparation.apply(opened)

    def check(self, cube: str) -> tuple[int, int]:
        """Open ``cube`` (prepared) and check its band count against the model's."""
        opened = self._open(cube)
        if opened.n_bands != self._model.n_bands:
            raise ConfigError(
                f"{opened.path}: the cube has {opened.n_bands} bands, "
                f"the model was trained on {self._model.n_bands}"
            )
        return tuple(opened.shape_hw)

    def segment(self, cube: str, name: str) -> CubeResult:
        """Segment ``cube`` tile by tile and write its maps atomically."""
        from napari_dgc.analysis.export import cluster_legend, write_class_map, write_label_map
        from napari_dgc.atomic import atomic_write_bytes
        from napari_dgc.inference.batch import CubeResult
        from napari_dgc.inference.segmentation import segment_cube

        outputs = self.planned_outputs(name)
        n_clusters = self._model.config.n_clusters
        try:
            opened = self._open(cube)
            result = segment_cube(
                self._model,
                opened,
                tile=self.tile,
                workers=self.threads,
                return_probabilities=self.probabilities,
            )
            write_label_map(outputs["labels"], result.labels, cluster_legend(n_clusters), overwrite=True)
            class_pixels = None
            if self._mapping is not None:
                class_map = self._mapping.apply(result.labels)
                write_class_map(outputs["classes"], class_map, self._mapping, overwrite=True)
                class_pixels = np.bincount(class_map.ravel(), minlength=len(self._mapping.classes) + 1)
            if self.probabilities:
                file_format = outputs["probabilities"].suffix[1:]
                atomic_write_bytes(
                    outputs["probabilities"], _probability_bytes(result.probabilities, file_format)
                )
        except OSError as error:
            if isinstance(error, (FileNotFoundError, PermissionError)) or error.filename is None:
                raise
            raise DGCError(
                f"{error.filename}: could not write the output: {error.strerror or error}"
            ) from error
        rows, cols = result.labels.shape
        return CubeResult(
            rows,
            cols,
            outputs,
            np.bincount(result.labels.ravel(), minlength=n_clusters).tolist(),
            None if class_pixels is None else class_pixels.tolist(),
        )


def _sources(args: argparse.Namespace) -> tuple[str | None, str | None, str | None, list[str]]:
    """Return ``(run folder, checkpoint id, why that checkpoint, cube arguments)``; the reason is
    ``None`` when ``--checkpoint`` named it or a model folder is used.

    The checkpoint is resolved now, so every worker loads the same one even while the run
    trains on (shards started apart should name it: ``--checkpoint``).
    """
    if args.classes is not None:
        if args.checkpoint is not None:
            raise ConfigError("--checkpoint selects a run's checkpoint; it cannot go with --classes")
        return None, None, None, args.inputs
    if len(args.inputs) < 2:
        raise ConfigError("give a run folder and at least one cube (or --classes MODEL_FOLDER)")
    from napari_dgc.run_folder import RunDirectory

    run = RunDirectory.open(args.inputs[0])
    checkpoint, reason = args.checkpoint, None
    default = None if checkpoint is not None else run.default_checkpoint()
    if default is not None:
        checkpoint, reason = default[0].checkpoint_id, default[1]
        if run.is_busy():
            reason += " (the run is still being trained)"
    return args.inputs[0], checkpoint, reason, args.inputs[1:]


def _run(args: argparse.Namespace) -> int:
    from napari_dgc.inference import batch
    from napari_dgc.inference.batch_manifest import manifest_path, read_entries, shard_suffix

    run, checkpoint, reason, patterns = _sources(args)
    shard = batch.parse_shard(args.shard) if args.shard else batch.shard_from_environment()
    cubes = batch.shard_of(batch.expand_inputs(patterns), shard)
    stems = [_output_stem(name) for name in cubes]
    duplicates = sorted({stem for stem in stems if stems.count(stem) > 1})
    if duplicates:
        raise ConfigError(f"several cubes would write the same output name: {duplicates}")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a folder")
    segmenter = MapSegmenter(out_dir, args, run, checkpoint)
    segmenter.prepare()
    previous = read_entries(out_dir) if out_dir.is_dir() else {}
    jobs, known = batch.plan(
        segmenter,
        cubes,
        stems,
        out_dir,
        previous,
        resume=args.resume,
        overwrite=args.overwrite,
        keep_going=args.keep_going,
    )
    if reason is not None and not args.quiet:
        print(f"using checkpoint {checkpoint}, {reason}")
    # A shard's part lists only its own cubes; the whole manifest keeps other cubes' entries.
    kept = {} if shard is not None else {name: e for name, e in previous.items() if name not in stems}
    header = {
        "model": {"run": run, "checkpoint": checkpoint, "classes_folder": args.classes},
        "identity": segmenter.identity(),
        "shard": list(shard) if shard else None,
        "planned": len(cubes),
    }
    state = batch.BatchState(
        header,
        kept,
        out_dir,
        shard,
        len(cubes),
        sum(job.pixels for job in jobs) + sum(int(entry.get("pixels") or 0) for entry in known),
    )
    manifest = manifest_path(out_dir, shard)
    had_manifest = manifest.exists()
    created = [folder for folder in [out_dir, *out_dir.parents] if not folder.exists()]
    workers = min(args.workers, max(1, len(jobs)))
    threads = args.threads or (batch.default_threads(workers) if workers > 1 else None)
    segmenter.threads = threads
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for entry in known:
            state.record(entry)
            _report(entry, state, args)
        batch.run_jobs(
            segmenter,
            jobs,
            state,
            workers=workers,
            threads=threads or 1,
            keep_going=args.keep_going,
            on_entry=lambda entry: _report(entry, state, args),
        )
        state.save()  # also when there was nothing to do: the manifest lists every cube
    except BaseException:
        # Nothing done and the folder is ours: leave no manifest of nothing and no empty folder.
        if not had_manifest and not any(e["status"] == "done" for e in state.entries.values()):
            suffix = shard_suffix(shard)
            for name in (manifest.name, manifest.with_suffix(".csv").name, f"class-areas{suffix}.csv"):
                (out_dir / name).unlink(missing_ok=True)
            for folder in created:
                try:
                    folder.rmdir()  # only if empty: maps already written stay
                except OSError:
                    break
        raise
    if state.failed:
        print(
            f"napari-dgc segment: {state.failed} of {len(cubes)} cubes failed (see {manifest})",
            file=sys.stderr,
        )
        return 1
    return 0


def _report(entry: dict, state: Any, args: argparse.Namespace) -> None:
    """The per-cube line on stdout, a failed cube on stderr, then the progress line."""
    from napari_dgc.inference.batch import print_progress

    if entry["status"] == "failed":
        if not args.keep_going:
            return  # the batch stops with the usual one-line error, nothing else on stderr
        print(f"napari-dgc segment: skipped: {entry['error']}", file=sys.stderr)
    elif not args.quiet:
        files = ", ".join(output["file"] for output in entry["outputs"].values())
        verb = "kept (verified)" if entry["status"] == "skipped" else f"[{entry['seconds']:.1f} s]"
        print(f"{entry['cube']} ({entry['rows']}x{entry['cols']}) -> {files} {verb}", flush=True)
    if not args.quiet:
        print_progress(state)
