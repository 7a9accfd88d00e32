"""Every setting of a training run, in one place, without torch.

A :class:`TrainConfig` nests one dataclass per concern: ``model`` (the network),
``data`` (crop pairs and normalisation), ``optim`` (the optimiser), ``losses`` (loss weights
and their schedules), ``centroids`` (the centroid update) and ``starts`` (several starts and
the selection), plus the run's ``steps``, ``checkpoint_every``, ``seed`` and ``device``.

Each field carries its own description, bounds and, where it has one, its command-line flag
and panel label (:func:`setting`), so the CLI's options and help, the train panel's form
(:func:`settings_of`) and the checks (:meth:`TrainConfig.validate`) all come from here and no
default is written twice. Settings are addressed by dotted keys (``"optim.learning_rate"``,
``"model.n_clusters"``, ``"steps"``): :meth:`TrainConfig.with_settings` applies them and
:func:`parse_setting` reads ``KEY=VALUE`` text. :func:`resumed_config` is the one rule of what
a resumed run may change. Run folders store :meth:`TrainConfig.to_dict` as JSON.

Longer than the ~500 lines a module usually gets, on purpose: every setting with its bounds and
help is in this one file, so none is defined twice.
"""

from __future__ import annotations

import enum
import json
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from napari_dgc.errors import ConfigError

#: The most clusters a model may have: far more than a person can name and merge by hand, and
#: more than unit vectors in the default 32-d space keep apart.
MAX_CLUSTERS = 64

#: Why the settings of :data:`RETIRED_SETTINGS` went (docs/training.md: the tenth and twelfth
#: passes).
_ANCHOR_DOES_THEIR_WORK = "the spectral anchor (losses.weight_anchor) does their work"
_NO_RESEEDING = (
    "dead clusters are no longer re-seeded: it emptied other clusters when K exceeds the materials"
)

#: Settings earlier versions had, each with why it went. The spectral anchor
#: (``losses.weight_anchor``) made the balance, uniform-assignment and spectral-fidelity terms
#: redundant, and every start now begins from the spectra (tenth pass); re-seeding dead clusters
#: went in the twelfth pass. A run folder that still names one opens and resumes without it
#: (:func:`drop_retired_settings`); giving one anew is an error that says why.
RETIRED_SETTINGS: dict[str, str] = {
    **{
        f"losses.{name}": _ANCHOR_DOES_THEIR_WORK
        for name in (
            "weight_balance",
            "balance_sign",
            "balance_schedule",
            "balance_final_fraction",
            "weight_uniform",
            "uniform_schedule",
            "uniform_final_fraction",
            "uniform_target",
            "uniform_floor",
            "usage_ema_decay",
            "weight_fidelity",
            "fidelity_pixels",
        )
    },
    **{f"centroids.{name}": _ANCHOR_DOES_THEIR_WORK for name in ("init", "fit_step", "dead_policy", "kick")},
    "centroids.dead_threshold": _NO_RESEEDING,
}

#: Settings a resumed run may change; everything else is the run's own (:func:`resumed_config`).
RESUMABLE_SETTINGS = ("steps", "checkpoint_every", "device")


class Choice(str, enum.Enum):
    """A setting with named choices; compares equal to its value (``SpatialInit.IDENTITY == "identity"``)."""

    def __str__(self) -> str:
        return str(self.value)


class SpatialInit(Choice):
    """Initial 3x3 spatial kernels."""

    IDENTITY = "identity"
    DEFAULT = "default"


def setting(
    default: Any,
    help: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    odd: bool = False,
    flag: str | None = None,
    label: str | None = None,
    basic: bool = False,
) -> Any:
    """A dataclass field with what the CLI, the panel and the checks need to know about it.

    Parameters
    ----------
    default : object
        Default value (a dataclass type for a nested group).
    help : str
        One sentence a user reads in ``--help`` and the panel's tooltip.
    minimum, maximum : float, optional
        Inclusive bounds.
    above, below : float, optional
        Exclusive bounds.
    odd : bool
        The value must be odd (kernel and window sizes).
    flag : str, optional
        A named command-line option of ``napari-dgc train`` (``"--lr"``); every other setting
        is reached with ``--set KEY=VALUE``.
    label : str, optional
        The setting's label in the train panel (a field of the panel's form when given).
    basic : bool
        Shown in the panel's main form rather than under its advanced options.
    """
    metadata = {
        "help": help,
        "minimum": minimum,
        "maximum": maximum,
        "above": above,
        "below": below,
        "odd": odd,
        "flag": flag,
        "label": label,
        "basic": basic,
    }
    if is_dataclass(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def _check_field(value: Any, kind: Any, metadata: Mapping, key: str) -> tuple[Any, str | None]:
    """Return ``(value converted to the field's type, None)`` or ``(value, error message)``."""
    optional = False
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(kind) if member is not type(None)]
        optional, kind = True, members[0]
    if value is None:
        return (None, None) if optional else (value, f"{key} must be given, got null")
    if isinstance(kind, type) and issubclass(kind, Choice):
        try:
            return kind(value), None
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            return value, f"{key} must be one of {allowed}, got {value!r}"
    if kind is bool:
        if not isinstance(value, bool):
            return value, f"{key} must be true or false, got {value!r}"
        return value, None
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                return value, f"{key} must be a whole number, got {value!r}"
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value, f"{key} must be a number, got {value!r}"
        value = float(value)
        if not math.isfinite(value):
            return value, f"{key} must be a finite number, got {value!r}"
    elif kind is str:
        if not isinstance(value, str):
            return value, f"{key} must be text, got {value!r}"
        return value, None
    low, high = metadata.get("minimum"), metadata.get("maximum")
    if low is not None and high is not None and not low <= value <= high:
        return value, f"{key} must be between {low:g} and {high:g}, got {value!r}"
    bounds = [
        ("minimum", lambda v, b: v >= b, "at least"),
        ("maximum", lambda v, b: v <= b, "at most"),
        ("above", lambda v, b: v > b, "above"),
        ("below", lambda v, b: v < b, "below"),
    ]
    for bound, holds, words in bounds:
        limit = metadata.get(bound)
        if limit is not None and not holds(value, limit):
            return value, f"{key} must be {words} {limit:g}, got {value!r}"
    if metadata.get("odd") and value % 2 == 0:
        return value, f"{key} must be odd, got {value!r}"
    return value, None


class _Settings:
    """Validation, JSON round trip and dotted keys shared by every settings group."""

    _key: str = ""  # the group's key in TrainConfig ("" for the top level)

    def __post_init__(self) -> None:
        errors = self._collect_errors()
        if errors:
            raise ConfigError("; ".join(errors))

    def _collect_errors(self) -> list[str]:
        """Convert every field to its type and return one message per invalid field."""
        hints = typing.get_type_hints(type(self))
        prefix = f"{self._key}." if self._key else ""
        errors = []
        for item in fields(self):
            value = getattr(self, item.name)
            if is_dataclass(hints[item.name]):
                continue  # a nested group validated itself when it was built
            value, error = _check_field(value, hints[item.name], item.metadata, prefix + item.name)
            if error:
                errors.append(error)
            else:
                object.__setattr__(self, item.name, value)
        return errors + (self._cross_field_errors() if not errors else [])

    def _cross_field_errors(self) -> list[str]:
        """Rules that involve several fields (none by default)."""
        return []

    def validate(self) -> None:
        """Raise :class:`~napari_dgc.errors.ConfigError` naming every invalid setting."""
        self.__post_init__()

    def to_dict(self) -> dict:
        """Return the settings as a JSON-serialisable dict (groups nested, choices as text)."""
        return json.loads(json.dumps(asdict(self), default=str))

    @classmethod
    def from_dict(cls, data: Any, key: str = ""):
        """Build settings from :meth:`to_dict` output; missing keys take their defaults.

        Raises
        ------
        ConfigError
            An unknown key, a group given as a plain value, or an invalid value.
        """
        key = key or cls._key
        where = key or "training"
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} settings must be a JSON object of KEY: VALUE, got {data!r}")
        known = {item.name: item for item in fields(cls)}
        unknown = sorted(set(data) - set(known))
        retired = [name for name in unknown if f"{key}.{name}" in RETIRED_SETTINGS]
        if retired:
            reasons = {f"{key}.{name}": RETIRED_SETTINGS[f"{key}.{name}"] for name in retired}
            raise ConfigError(
                "; ".join(f"{name}: retired, {reason}" for name, reason in reasons.items())
                + " (docs/training.md)"
            )
        if unknown:
            raise ConfigError(
                f"unknown {where} settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in data.items():
            group = hints[name]
            if is_dataclass(group) and not isinstance(value, group):
                values[name] = group.from_dict(value, f"{key}.{name}" if key else name)
            else:
                values[name] = value
        return cls(**values)


def _group(cls: type) -> type:
    """Make ``cls`` a settings group: a dataclass whose key in :class:`TrainConfig` is its name."""
    return dataclass(cls)


@_group
class ModelConfig(_Settings):
    """Architecture of a DGC model; defaults are the papers' values except where noted.

    Every field's meaning is in its ``help``; docs/training.md explains each deviation from the
    papers (bandwidth 0.25, spectral resampling to 32 bins, brightness normalisation, identity
    spatial initialisation).
    """

    _key = "model"

    n_clusters: int = setting(
        4,
        "number of clusters K the model learns",
        minimum=2,
        maximum=MAX_CLUSTERS,
        flag="--clusters",
        label="Clusters (K)",
        basic=True,
    )
    embed_dim: int = setting(32, "embedding size D", minimum=1)
    spectral_kernel: int = setting(9, "kernel size of the 1D convolutions along the bands", minimum=1)
    spectral_layers: int = setting(3, "number of 1D convolutions along the bands", minimum=1)
    spatial_kernel: int = setting(3, "kernel size of the 2D convolutions", minimum=1, odd=True)
    spatial_layers: int = setting(2, "number of 2D convolutions", minimum=1)
    meanshift_iters: int = setting(5, "unrolled mean-shift iterations", minimum=0)
    meanshift_window: int = setting(5, "mean-shift window size in pixels", minimum=1, odd=True)
    bandwidth_init: float = setting(
        0.25, "initial mean-shift bandwidth (deviation: 1.0 in the papers)", above=0
    )
    temperature: float = setting(0.05, "softmax temperature of the soft assignment", above=0)
    spectral_bands: int | None = setting(
        32,
        "box-resample the band axis to this many bins before the 1D convolutions (null: keep "
        "every band; deviation: bounds the cost whatever the camera)",
        minimum=1,
    )
    spectral_channels: int = setting(
        16, "channels of the hidden 1D convolutions (32 in the papers)", minimum=1
    )
    spectral_stride: int = setting(2, "stride of each 1D convolution along the bands", minimum=1)
    brightness_norm: bool = setting(
        True,
        "divide each pixel by its mean over the bands before the "
        "per-band normalisation (deviation: removes illumination gain)",
    )
    spatial_init: SpatialInit = setting(
        SpatialInit.IDENTITY,
        "initial 2D kernels: identity (a Dirac kernel plus a tenth of the random initialisation) or default",
    )

    @property
    def receptive_radius(self) -> int:
        """Pixels of context each output pixel of such a model depends on."""
        return self.spatial_layers * (self.spatial_kernel // 2) + self.meanshift_iters * (
            self.meanshift_window // 2
        )


@_group
class DataConfig(_Settings):
    """How crop pairs are drawn from the cubes and how the dataset is normalised."""

    _key = "data"

    crop_size: int = setting(
        64, "crop side in pixels", minimum=8, flag="--crop-size", label="Crop size (px)", basic=True
    )
    batch_size: int = setting(
        4, "crop pairs per step", minimum=1, flag="--batch-size", label="Batch size (crop pairs)"
    )
    overlap_min: float = setting(0.2, "smallest overlap fraction of a crop pair", above=0, below=1)
    overlap_max: float = setting(0.8, "largest overlap fraction of a crop pair", above=0, below=1)
    pairs_per_cube: int = setting(10, "crop pairs drawn from a cube before the next one is read", minimum=1)
    augment: bool = setting(True, "random affine and spectral-shift augmentation")
    max_spectral_shift: int = setting(2, "largest random band shift of the augmentation", minimum=0)
    normalization_pixels: int = setting(
        50_000,
        "pixel budget of the dataset-level sample behind the normalisation statistics and the "
        "spectral start's k-means",
        minimum=100,
    )

    def _cross_field_errors(self) -> list[str]:
        if self.overlap_min > self.overlap_max:
            return [
                f"data.overlap_min ({self.overlap_min}) must not exceed data.overlap_max ({self.overlap_max})"
            ]
        return []


@_group
class OptimConfig(_Settings):
    """The AdamW optimiser."""

    _key = "optim"

    learning_rate: float = setting(
        3e-4,
        "AdamW learning rate (deviation: 1e-4 in the papers)",
        above=0,
        flag="--lr",
        label="Learning rate",
        basic=True,
    )
    weight_decay: float = setting(0.01, "AdamW weight decay", minimum=0)
    grad_clip: float = setting(1.0, "gradient norm clipping", minimum=0)
    average_decay: float = setting(
        0.99,
        "decay of the running average of the weights and centroids that checkpoints store "
        "(0: the raw weights of the last step)",
        minimum=0,
        below=1,
    )


@_group
class LossConfig(_Settings):
    """Weights of the loss terms and the anchor's schedule (docs/training.md explains each)."""

    _key = "losses"

    weight_compact: float = setting(
        1.0, "weight of the compactness term", minimum=0, label="Weight: compactness"
    )
    weight_orth: float = setting(
        0.001, "weight of the centroid orthogonality term", minimum=0, label="Weight: orthogonality"
    )
    weight_consistency: float = setting(
        1.0, "weight of the overlap consistency term", minimum=0, label="Weight: consistency"
    )
    weight_anchor: float = setting(
        10.0,
        "weight of the anchor term: cross-entropy of the assignments against the clusters of the "
        "start (a cosine k-means of the raw spectra of a sample of every cube; deviation; 0: off)",
        minimum=0,
        label="Weight: spectral anchor",
    )
    anchor_final_fraction: float = setting(
        0.2,
        "anchor weight after its cosine decay over schedule_steps, as a fraction",
        minimum=0,
        maximum=1,
    )
    schedule_steps: int | None = setting(
        100, "steps over which the anchor weight decays (null: the whole run)", minimum=1
    )


@_group
class CentroidConfig(_Settings):
    """The centroid update after each gradient step (phase II of the papers)."""

    _key = "centroids"

    ema_decay: float = setting(0.99, "EMA decay of the centroids", minimum=0, below=1)
    fit_inits: int = setting(
        8, "k-means++ seedings tried by the start's cosine k-means of the raw spectra", minimum=1
    )


@_group
class StartsConfig(_Settings):
    """Several starts of a new run and the selection of the one that continues."""

    _key = "starts"

    count: int = setting(
        1,
        "starts a new run trains before the best-separated one continues (1: no selection)",
        minimum=1,
        flag="--starts",
        label="Starts",
        basic=True,
    )
    steps: int = setting(
        200, "steps each start trains before the selection", minimum=1, label="Steps per start"
    )
    selection_windows: int = setting(8, "windows of the cubes whose pixels score the starts", minimum=1)


class ReferenceAveraging(Choice):
    """How the rows of a white or dark reference become the reference (``prep.reference``)."""

    COLUMNS = "columns"
    SPECTRUM = "spectrum"


def parse_span(text: str, key: str, *, integer: bool) -> tuple[float, float]:
    """Read ``"START:STOP"`` (``"450:950"``; whole numbers when ``integer``) of the setting ``key``.

    Raises
    ------
    ConfigError
        Text that is not two numbers around a colon, or STOP not above START.
    """
    start_text, colon, stop_text = text.partition(":")
    kind = int if integer else float
    try:
        start, stop = kind(start_text.strip()), kind(stop_text.strip())
    except ValueError:
        start = stop = None
    what = "whole numbers" if integer else "numbers"
    if not colon or start is None or not (math.isfinite(start) and math.isfinite(stop)):
        raise ConfigError(f"{key} must look like START:STOP ({what}), got {text!r}")
    if stop <= start or (integer and start < 0):
        raise ConfigError(f"{key} must be START:STOP with 0 <= START < STOP, got {text!r}")
    return start, stop


@_group
class PrepConfig(_Settings):
    """Calibration and preparation of every cube: band crop, then white/dark reference
    correction, then spatial binning (docs/user-guide.md, "Calibration and preparation").
    """

    _key = "prep"

    white: str | None = setting(
        None,
        "white reference cube file: reflectance = (raw - dark) / (white - dark) (null: no correction)",
        flag="--white",
        label="White reference (file)",
    )
    white_rows: str | None = setting(
        None,
        "rows START:STOP (0-based, STOP excluded) of the white reference file averaged into the "
        "reference (null: all its rows)",
        label="White reference rows",
    )
    dark: str | None = setting(
        None,
        "dark reference cube file, subtracted from the cube and the white reference (null: none)",
        flag="--dark",
        label="Dark reference (file)",
    )
    dark_rows: str | None = setting(
        None,
        "rows START:STOP of the dark reference file averaged into it (null: all)",
        label="Dark reference rows",
    )
    reference: ReferenceAveraging = setting(
        ReferenceAveraging.COLUMNS,
        "columns: one reference spectrum per column (push-broom cameras; the reference is as "
        "wide as the cubes); spectrum: one spectrum, the mean of all its pixels",
        label="Reference averaging",
    )
    bands: str | None = setting(
        None,
        "keep only the bands whose wavelength lies in LOW:HIGH nm, e.g. 450:950 (null: all bands)",
        flag="--bands",
        label="Band range (nm)",
    )
    band_indices: str | None = setting(
        None,
        "keep only bands FIRST:STOP by index (0-based, STOP excluded), for cubes without "
        "wavelengths (null: all bands)",
        label="Band range (indices)",
    )
    binning: int = setting(
        1,
        "average blocks of N x N pixels into one (1: no binning; partial blocks at the "
        "bottom and right edges are dropped)",
        minimum=1,
        flag="--binning",
        label="Spatial binning",
    )

    def _cross_field_errors(self) -> list[str]:
        errors = []
        spans = [("bands", False), ("band_indices", True), ("white_rows", True), ("dark_rows", True)]
        for name, integer in spans:
            text = getattr(self, name)
            if text is not None:
                try:
                    parse_span(text, f"prep.{name}", integer=integer)
                except ConfigError as error:
                    errors.append(str(error))
        if self.bands is not None and self.band_indices is not None:
            errors.append("give prep.bands (nm) or prep.band_indices, not both")
        for reference in ("white", "dark"):
            if getattr(self, f"{reference}_rows") is not None and getattr(self, reference) is None:
                errors.append(
                    f"prep.{reference}_rows is given without a {reference} reference (prep.{reference})"
                )
        return errors


@_group
class TrainConfig(_Settings):
    """All settings of a training run: the groups above and the run's own length, seed and device."""

    model: ModelConfig = setting(ModelConfig, "the network")
    data: DataConfig = setting(DataConfig, "crop pairs and normalisation")
    optim: OptimConfig = setting(OptimConfig, "the optimiser")
    losses: LossConfig = setting(LossConfig, "loss weights and schedules")
    centroids: CentroidConfig = setting(CentroidConfig, "the centroid update")
    starts: StartsConfig = setting(StartsConfig, "several starts and the selection")
    prep: PrepConfig = setting(PrepConfig, "calibration and preparation of the cubes")
    steps: int = setting(
        2000,
        "total steps of the run (of the selected start)",
        minimum=1,
        flag="--steps",
        label="Steps",
        basic=True,
    )
    checkpoint_every: int = setting(
        100,
        "steps between checkpoints",
        minimum=1,
        flag="--checkpoint-every",
        label="Checkpoint every",
        basic=True,
    )
    seed: int = setting(0, "random seed", minimum=0, flag="--seed", label="Seed")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N", flag="--device", label="Device", basic=True)

    def _cross_field_errors(self) -> list[str]:
        errors = []
        minimum_crop = 2 * (self.model.meanshift_window // 2) + 1
        if self.data.crop_size < minimum_crop:
            errors.append(
                f"data.crop_size must be at least {minimum_crop} (the mean-shift window), "
                f"got {self.data.crop_size}"
            )
        if self.device != "auto" and not self.device.startswith(("cpu", "cuda", "mps")):
            errors.append(f"device must be auto, cpu or cuda, got {self.device!r}")
        return errors

    def with_settings(self, changes: Mapping[str, Any]) -> TrainConfig:
        """Return a copy with ``changes`` applied: dotted keys (``"optim.learning_rate"``) to values.

        Raises
        ------
        ConfigError
            An unknown key, a group given a plain value, or an invalid value.
        """
        data = self.to_dict()
        for key, value in changes.items():
            *groups, name = key.split(".")
            target = data
            for depth, group in enumerate(groups):
                if not isinstance(target.get(group), dict):
                    raise ConfigError(
                        f"unknown setting {key!r}: {'.'.join(groups[: depth + 1])} is not a group of settings"
                    )
                target = target[group]
            if isinstance(target.get(name), dict):
                raise ConfigError(f"{key} is a group of settings: set {key}.KEY=VALUE, got {value!r}")
            target[name] = value.value if isinstance(value, Choice) else value
        return TrainConfig.from_dict(data)


def drop_retired_settings(data: Any) -> Any:
    """A stored :meth:`TrainConfig.to_dict` without the :data:`RETIRED_SETTINGS` it names, so a
    run folder written by an earlier version still opens; anything else in ``data`` is left for
    :meth:`TrainConfig.from_dict` to check.
    """
    if not isinstance(data, Mapping):
        return data
    return {
        group: (
            {name: item for name, item in value.items() if f"{group}.{name}" not in RETIRED_SETTINGS}
            if isinstance(value, Mapping)
            else value
        )
        for group, value in data.items()
    }


@dataclass(frozen=True)
class StartPlan:
    """Where the steps of a run's starts lie on its timeline (``TrainConfig.starts``).

    Starts ``0 .. starts - 1`` each train ``selection_step`` steps in turn, then the selected
    one continues to ``steps``.
    """

    starts: int
    selection_step: int
    steps: int

    @classmethod
    def for_run(cls, created: TrainConfig, steps: int | None = None) -> StartPlan:
        """The plan of a run created with ``created``, trained to ``steps`` (default
        ``created.steps``; a resumed run may be extended, its selection step stays).
        """
        return cls(
            created.starts.count,
            min(created.starts.steps, created.steps),
            created.steps if steps is None else steps,
        )

    @property
    def total_run_steps(self) -> int:
        """Steps of all starts together."""
        return self.steps + (self.starts - 1) * self.selection_step

    def run_step_offset(self, start: int, selecting: bool) -> int:
        """Run steps before step 1 of ``start``: the earlier starts' steps while it trains to
        the selection (``selecting``), all but the winner's after it.
        """
        return (start if selecting else self.starts - 1) * self.selection_step


@dataclass(frozen=True)
class SettingInfo:
    """What the CLI and the panel need to know of one setting (from :func:`settings_of`).

    Attributes
    ----------
    key : str
        Dotted key, e.g. ``"optim.learning_rate"``.
    kind : type
        ``int``, ``float``, ``bool``, ``str`` or a :class:`Choice` subclass.
    default : object
        Default value.
    optional : bool
        ``None`` is allowed.
    help : str
        One sentence.
    minimum, maximum : float or None
        Bounds (exclusive bounds are given as inclusive ones for integers and as given for floats).
    flag, label : str or None
        Command-line flag and panel label, where the setting has them.
    basic : bool
        In the panel's main form.
    """

    key: str
    kind: type
    default: Any
    optional: bool
    help: str
    minimum: float | None
    maximum: float | None
    flag: str | None
    label: str | None
    basic: bool


def settings_of(config_class: type = TrainConfig, prefix: str = "") -> Iterator[SettingInfo]:
    """Yield a :class:`SettingInfo` for every setting of ``config_class``, groups flattened."""
    hints = typing.get_type_hints(config_class)
    for item in fields(config_class):
        kind = hints[item.name]
        key = prefix + item.name
        if is_dataclass(kind):
            yield from settings_of(kind, key + ".")
            continue
        optional = typing.get_origin(kind) is not None and type(None) in typing.get_args(kind)
        if optional:
            kind = next(member for member in typing.get_args(kind) if member is not type(None))
        meta = item.metadata
        minimum = meta["minimum"] if meta["minimum"] is not None else meta["above"]
        maximum = meta["maximum"] if meta["maximum"] is not None else meta["below"]
        default = item.default if item.default is not MISSING else item.default_factory()
        yield SettingInfo(
            key,
            kind,
            default,
            optional,
            meta["help"],
            minimum,
            maximum,
            meta["flag"],
            meta["label"],
            meta["basic"],
        )


def get_setting(config: TrainConfig, key: str) -> Any:
    """The value of the dotted ``key`` in ``config``."""
    value: Any = config
    for name in key.split("."):
        value = getattr(value, name)
    return value


def parse_setting(text: str) -> tuple[str, Any]:
    """Split ``KEY=VALUE`` into the key and a value parsed as JSON, else kept as text.

    ``1e-4``, ``false``, ``null`` and ``"cosine"`` are JSON; ``cosine`` stays text. Whether the
    key exists and the value fits is checked by :meth:`TrainConfig.with_settings`.

    Raises
    ------
    ConfigError
        Text without ``=`` or with an empty key.
    """
    key, separator, value_text = text.partition("=")
    if not separator or not key.strip():
        raise ConfigError(f"a setting must look like KEY=VALUE, got {text!r}")
    try:
        value = json.loads(value_text)
    except json.JSONDecodeError:
        value = value_text
    return key.strip(), value


def differing_settings(first: TrainConfig, second: TrainConfig) -> list[str]:
    """Dotted keys whose values differ between ``first`` and ``second``."""
    return [
        info.key for info in settings_of() if get_setting(first, info.key) != get_setting(second, info.key)
    ]


def resumed_config(created: TrainConfig, changes: Mapping[str, Any] | None = None) -> TrainConfig:
    """The settings a resumed run trains with: the run's own, with ``changes`` to the settings a
    resume may change (:data:`RESUMABLE_SETTINGS`: more steps extend a finished run).

    Raises
    ------
    ConfigError
        A change to any other setting, naming it.
    """
    changes = dict(changes or {})
    refused = sorted(key for key in changes if key not in RESUMABLE_SETTINGS)
    if refused:
        raise ConfigError(
            f"a resumed run keeps its own settings; only {', '.join(RESUMABLE_SETTINGS)} may "
            f"change, not {', '.join(refused)}"
        )
    return created.with_settings(changes) if changes else replace(created)
