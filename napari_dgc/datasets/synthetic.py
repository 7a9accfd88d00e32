"""Deterministic synthetic close-range leaf scenes with ground truth.

A scene imitates a pushbroom camera looking down at leaves on a black conveyor belt, the setting
of the DGC leaf dataset (brown-blight lesions, 400-1000 nm):

* **background**: black rubber belt (3-6 % reflectance, slight upward slope), stripes along the
  transport direction, grain, a few bright dust specks, and soft shadows cast by the leaves;
* **healthy tissue**: tea-like serrated leaves with a petiole, midrib and lateral veins; their
  spectra have low blue, a green peak near 550 nm, chlorophyll absorption near 670 nm, a red
  edge near 710 nm, an NIR plateau near 0.5 and a water band near 970 nm; chlorophyll, leaf
  structure and surface curvature vary smoothly inside each leaf, and some leaves show specular
  glare;
* **lesions**: brown necrotic spots with a chlorotic halo; some sit on the leaf margin and are
  nearly black, spectrally close to the belt.

Every pixel is a linear mix of a few endmember spectra weighted by abundance maps: leaf and
lesion outlines are supersampled, so edge pixels are true mixtures, and a small optical blur
mixes neighbours. A per-scene illumination (gain, spatial tilt, cross-track vignetting, spectral
slope) and band-dependent, signal-dependent noise (higher at both ends of the range, where the
sensor's quantum efficiency falls) are applied last. Ground-truth labels are the majority class
of each pixel's area.

The same arguments always give the same bytes. Only numpy and scipy are used, and the cube is
assembled in blocks of rows, so large scenes need no temporaries of the cube's size.

Longer than the ~500 lines a module usually gets: the spectra, the leaf and lesion geometry and
the rendering are one model of a scene, tuned together against the baselines' scores
(tests/test_synthetic.py); split, each part would only make sense next to the others.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_dgc.atomic import atomic_open, atomic_write_json
from napari_dgc.errors import ConfigError

CLASS_NAMES: tuple[str, ...] = ("background", "tissue", "lesion")
BACKGROUND, TISSUE, LESION = 0, 1, 2

# Endmember order of the abundance stack (see `_endmember_spectra`).
_ENDMEMBERS = (
    "belt",
    "leaf",
    "leaf_chlorophyll",
    "leaf_structure",
    "lesion_brown",
    "lesion_dark",
    "specular",
)
_SUPERSAMPLE = 3  # 3x3 sub-pixels per pixel: odd, so the majority class never ties in one leaf
_BLOCK_ELEMENTS = 1 << 22  # cube values assembled per block of rows (16 MiB of float32)
_HALO_REACH = 6.0  # halo widths beyond the outline where the halo (exp(-6) = 0.25 %) is cut off


@dataclass(frozen=True)
class Illumination:
    """Lighting of one capture.

    Parameters
    ----------
    gain : float
        Overall brightness factor (exposure, lamp power).
    tilt : float
        Relative brightness change from the scene centre to its corner along ``tilt_angle_deg``.
    tilt_angle_deg : float
        Direction of the brightness gradient in the image plane (0 = towards +columns).
    vignetting : float
        Relative darkening at the left and right ends of the scan line (cross-track falloff).
    spectral_slope : float
        Relative change of the lamp's colour: radiance is scaled by
        ``1 + spectral_slope * (wavelength - 700) / 300``.
    """

    gain: float = 1.0
    tilt: float = 0.0
    tilt_angle_deg: float = 0.0
    vignetting: float = 0.0
    spectral_slope: float = 0.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Illumination:
        """Draw the lighting of one capture, varying as it does between real captures."""
        return cls(
            gain=float(rng.uniform(0.7, 1.3)),
            tilt=float(rng.uniform(0.05, 0.25)),
            tilt_angle_deg=float(rng.uniform(0.0, 360.0)),
            vignetting=float(rng.uniform(0.03, 0.12)),
            spectral_slope=float(rng.uniform(-0.1, 0.1)),
        )


@dataclass
class SyntheticScene:
    """A synthetic cube with its ground truth.

    Attributes
    ----------
    cube : numpy.ndarray
        ``(rows, cols, bands)`` float32 reflectance-like radiance.
    labels : numpy.ndarray
        ``(rows, cols)`` uint8: 0 background, 1 healthy tissue, 2 lesion.
    wavelengths : numpy.ndarray
        ``(bands,)`` float64 band centres in nm.
    illumination : Illumination
        The lighting the scene was rendered with.
    class_names : tuple of str
        Name of each label value.
    """

    cube: np.ndarray
    labels: np.ndarray
    wavelengths: np.ndarray
    illumination: Illumination
    class_names: tuple[str, ...] = CLASS_NAMES


# --------------------------------------------------------------------------- spectra


def _gauss(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((wl - centre) / width) ** 2)


def _sigmoid(wl: np.ndarray, centre: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(wl - centre) / width))


def healthy_leaf_reflectance(
    wavelengths: np.ndarray, chlorophyll: float = 1.0, structure: float = 1.0
) -> np.ndarray:
    """Reflectance of green leaf tissue, a smooth physically plausible curve.

    Parameters
    ----------
    wavelengths : numpy.ndarray
        Wavelengths in nm.
    chlorophyll : float
        Relative chlorophyll content (1 = typical). More chlorophyll lowers the green peak,
        deepens the 670 nm absorption and moves the red edge to longer wavelengths.
    structure : float
        Relative mesophyll scattering (1 = typical): scales the NIR plateau.

    Returns
    -------
    numpy.ndarray
        Reflectance (0-1), float64, same shape as ``wavelengths``.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    pigment_scale = chlorophyll**-0.6
    visible = (
        0.042
        + 0.075 * pigment_scale * _gauss(wl, 553.0, 30.0)  # green peak
        + 0.02 * pigment_scale * _gauss(wl, 610.0, 35.0)  # yellow-orange shoulder
        - 0.022 * chlorophyll**0.3 * _gauss(wl, 675.0, 17.0)  # chlorophyll a absorption
    )
    edge = _sigmoid(wl, 710.0 + 10.0 * (chlorophyll - 1.0), 11.0)
    plateau = 0.52 * structure * (1.0 - 0.05 * (wl - 780.0) / 220.0)
    water = 1.0 - 0.08 * _gauss(wl, 975.0, 28.0) - 0.02 * _gauss(wl, 840.0, 30.0)
    return visible * (1.0 - edge) + plateau * water * edge


def lesion_reflectance(wavelengths: np.ndarray, dark: bool = False) -> np.ndarray:
    """Reflectance of necrotic (brown-blight) tissue: no red edge, lower NIR.

    Parameters
    ----------
    wavelengths : numpy.ndarray
        Wavelengths in nm.
    dark : bool
        The nearly black, dried-out form found on old lesions and leaf margins, spectrally
        close to the conveyor belt.

    Returns
    -------
    numpy.ndarray
        Reflectance (0-1), float64.
    """
    wl = np.asarray(wavelengths, dtype=np.float64)
    if dark:
        return 0.028 + 0.012 * _sigmoid(wl, 620.0, 70.0) + 0.032 * _sigmoid(wl, 760.0, 80.0)
    dried_water = 1.0 - 0.03 * _gauss(wl, 975.0, 30.0)
    return (0.035 + 0.055 * _sigmoid(wl, 600.0, 40.0) + 0.19 * _sigmoid(wl, 720.0, 55.0)) * dried_water


def belt_reflectance(wavelengths: np.ndarray) -> np.ndarray:
    """Reflectance of a black rubber conveyor belt: 3-5 %, rising slightly towards the NIR."""
    wl = np.asarray(wavelengths, dtype=np.float64)
    return 0.032 + 0.018 * (wl - 400.0) / 600.0


def _endmember_spectra(wavelengths: np.ndarray) -> np.ndarray:
    """Spectra matching `_ENDMEMBERS`, ``(n_endmembers, bands)`` float32.

    ``leaf_chlorophyll`` and ``leaf_structure`` are derivatives of the leaf spectrum: a pixel's
    coefficient on them shifts its chlorophyll content (about +-0.3 per unit) and its NIR level.
    """
    leaf = healthy_leaf_reflectance(wavelengths)
    d_chlorophyll = (
        healthy_leaf_reflectance(wavelengths, chlorophyll=1.3)
        - healthy_leaf_reflectance(wavelengths, chlorophyll=0.7)
    ) / 2.0
    d_structure = (
        healthy_leaf_reflectance(wavelengths, structure=1.2)
        - healthy_leaf_reflectance(wavelengths, structure=0.8)
    ) / 2.0
    return np.stack(
        [
            belt_reflectance(wavelengths),
            leaf,
            d_chlorophyll,
            d_structure,
            lesion_reflectance(wavelengths),
            lesion_reflectance(wavelengths, dark=True),
            np.ones_like(leaf),  # specular glare is the lamp's own colour
        ]
    ).astype(np.float32)


# --------------------------------------------------------------------------- geometry


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Zero-mean, unit-std random field with features about ``scale`` pixels wide (float32).

    Drawn on a coarse grid and interpolated, so its cost does not grow with ``scale``.
    """
    coarse_shape = tuple(int(math.ceil(n / scale)) + 4 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.7, mode="wrap")
    zoom = [(c - 3) / n for c, n in zip(coarse_shape, shape)]
    rows = np.arange(shape[0]) * zoom[0] + 1.5
    cols = np.arange(shape[1]) * zoom[1] + 1.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    field = ndimage.map_coordinates(coarse, grid, order=3, mode="nearest")
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


@dataclass
class _Leaf:
    """Shape, appearance and lesions of one leaf (lengths in pixels unless noted)."""

    centre: tuple[float, float]  # (row, col)
    angle: float  # direction base -> tip, radians
    half_length: float  # px
    half_width: float  # px, widest point
    base_power: float
    tip_power: float
    bend: float  # midrib curvature as a fraction of the half width
    teeth: float  # serration teeth per half length
    tooth_depth: float  # px
    wobble: tuple[float, float, float, float]  # (amp +side, phase +side, amp -side, phase -side)
    petiole_length: float  # in units of the half length
    petiole_width: float  # px
    chlorophyll: float  # leaf's mean chlorophyll coefficient
    structure: float  # leaf's mean structure coefficient
    brightness: float  # leaf's orientation towards the lamp
    curl: float  # darkening of the margins (curled-down edges)
    glare: float  # specular amplitude, 0 for matte leaves
    lesions: list[_Lesion] = dataclasses.field(default_factory=list)

    def local(self, rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Leaf coordinates: ``u`` along the midrib (-1 base .. 1 tip), ``q`` across it in px."""
        dr, dc = rr - self.centre[0], cc - self.centre[1]
        along = dc * math.cos(self.angle) + dr * math.sin(self.angle)
        across = -dc * math.sin(self.angle) + dr * math.cos(self.angle)
        u = along / self.half_length
        return u, across - self.bend * self.half_width * (u**2 - 1.0)

    def profile(self, u: np.ndarray) -> np.ndarray:
        """Half width (px) of the blade without serration at ``u``; 0 outside the blade."""
        a, b = self.base_power, self.tip_power
        peak = (a - b) / (a + b)
        norm = (1 + peak) ** a * (1 - peak) ** b
        uc = np.clip(u, -1.0, 1.0)
        return self.half_width * (1 + uc) ** a * (1 - uc) ** b / norm

    def inside(self, rr: np.ndarray, cc: np.ndarray) -> np.ndarray:
        """Whether points lie on the leaf (blade or petiole)."""
        u, q = self.local(rr, cc)
        side = q >= 0
        amp = np.where(side, self.wobble[0], self.wobble[2])
        phase = np.where(side, self.wobble[1], self.wobble[3])
        half = self.profile(u) * (1.0 + amp * np.sin(2.5 * math.pi * u + phase))
        tooth = np.mod(u * self.teeth + phase, 1.0)  # saw teeth pointing to the tip
        half = half - self.tooth_depth * tooth * (half > 2 * self.tooth_depth)
        blade = (np.abs(u) <= 1.0) & (np.abs(q) <= half)
        petiole = (u < -0.9) & (u >= -1.0 - self.petiole_length) & (np.abs(q) <= self.petiole_width / 2)
        return blade | petiole

    def bounding_box(self, shape: tuple[int, int]) -> tuple[slice, slice] | None:
        """Pixel window holding the whole leaf, clipped to the image; None if it lies outside."""
        along = self.half_length * (1.0 + self.petiole_length)
        across = self.half_width * (1.0 + abs(self.bend)) * (1.0 + max(self.wobble[0], self.wobble[2]))
        cos, sin = abs(math.cos(self.angle)), abs(math.sin(self.angle))
        reach_rows = sin * along + cos * across + 2
        reach_cols = cos * along + sin * across + 2
        r0 = max(int(self.centre[0] - reach_rows), 0)
        r1 = min(int(self.centre[0] + reach_rows) + 2, shape[0])
        c0 = max(int(self.centre[1] - reach_cols), 0)
        c1 = min(int(self.centre[1] + reach_cols) + 2, shape[1])
        if r0 >= r1 or c0 >= c1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def point(self, u: float, q_fraction: float) -> tuple[float, float]:
        """Image position (row, col) at ``u`` along and ``q_fraction`` of the half width across."""
        q = q_fraction * float(self.profile(np.asarray(u))) + self.bend * self.half_width * (u**2 - 1.0)
        along = u * self.half_length
        row = self.centre[0] + along * math.sin(self.angle) + q * math.cos(self.angle)
        col = self.centre[1] + along * math.cos(self.angle) - q * math.sin(self.angle)
        return row, col

    def area(self) -> float:
        """Blade area in px (without serration), from the mean width over the length."""
        u = np.linspace(-1.0, 1.0, 401)
        return float(np.mean(2 * self.profile(u)) * 2 * self.half_length)


@dataclass
class _Lesion:
    """One brown-blight spot: an irregular disc with a chlorotic halo."""

    centre: tuple[float, float]
    radius: float  # px
    harmonics: np.ndarray  # (3, 2): amplitude, phase of the 2nd-4th outline harmonics
    darkness: float  # 0 brown .. 1 black
    halo: float  # chlorotic halo width in px


def _draw_leaves(
    rng: np.random.Generator, shape: tuple[int, int], n_leaves: int, lesion_fraction: float
) -> list[_Leaf]:
    rows, cols = shape
    size = min(rows, cols)
    crowding = math.sqrt(4.0 / max(n_leaves, 1))
    leaves: list[_Leaf] = []
    for _ in range(n_leaves):
        half_length = 0.5 * size * rng.uniform(0.45, 0.65) * min(crowding, 1.6)
        # Spread the leaves out: keep the candidate farthest from those already placed.
        candidates = rng.uniform([0.15 * rows, 0.15 * cols], [0.85 * rows, 0.85 * cols], size=(12, 2))
        if leaves:
            placed = np.array([leaf.centre for leaf in leaves])
            gaps = np.linalg.norm(candidates[:, None, :] - placed[None], axis=2).min(axis=1)
            centre = candidates[int(np.argmax(gaps))]
        else:
            centre = candidates[0]
        half_width = half_length * rng.uniform(0.32, 0.45)
        leaves.append(
            _Leaf(
                centre=(float(centre[0]), float(centre[1])),
                angle=float(rng.uniform(0, 2 * math.pi)),
                half_length=float(half_length),
                half_width=float(half_width),
                base_power=float(rng.uniform(0.55, 0.8)),
                tip_power=float(rng.uniform(0.9, 1.3)),
                bend=float(rng.uniform(-0.25, 0.25)),
                teeth=float(rng.uniform(8, 14)),
                tooth_depth=float(max(0.4, 0.04 * half_width) * rng.uniform(0.7, 1.3)),
                wobble=(
                    float(rng.uniform(0, 0.08)),
                    float(rng.uniform(0, 2 * math.pi)),
                    float(rng.uniform(0, 0.08)),
                    float(rng.uniform(0, 2 * math.pi)),
                ),
                petiole_length=float(rng.uniform(0.06, 0.14)),
                petiole_width=float(max(1.2, 0.06 * half_width)),
                chlorophyll=float(rng.normal(0.0, 0.35)),
                structure=float(rng.normal(0.0, 0.25)),
                brightness=float(rng.uniform(0.85, 1.05)),
                curl=float(rng.uniform(0.15, 0.45)),
                glare=float(rng.uniform(0.03, 0.1)) if rng.random() < 0.5 else 0.0,
            )
        )
    if not leaves or lesion_fraction <= 0:
        return leaves
    areas = np.array([leaf.area() for leaf in leaves])
    target = lesion_fraction * areas.sum()
    covered = 0.0
    while covered < target:
        leaf = leaves[int(rng.choice(len(leaves), p=areas / areas.sum()))]
        on_margin = rng.random() < 0.35
        if on_margin:
            centre = leaf.point(float(rng.uniform(-0.7, 0.8)), float(rng.choice([-1.0, 1.0])))
            darkness = rng.uniform(0.7, 1.0)
        else:
            centre = leaf.point(float(rng.uniform(-0.7, 0.7)), float(rng.uniform(-0.6, 0.6)))
            darkness = rng.uniform(0.1, 0.8)
        radius = leaf.half_length * rng.uniform(0.07, 0.2)
        leaf.lesions.append(
            _Lesion(
                centre=centre,
                radius=float(radius),
                harmonics=np.stack([rng.uniform(0, 0.15, 3), rng.uniform(0, 2 * math.pi, 3)], axis=1),
                darkness=float(darkness),
                halo=float(radius * rng.uniform(0.2, 0.5)),
            )
        )
        covered += math.pi * radius**2 * (0.6 if on_margin else 1.0)
    return leaves


def _subpixel_grid(box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres of a box, ``(h*s, w*s)`` each, pixel ``(r, c)`` covering ``r +- 0.5``."""
    s = _SUPERSAMPLE
    offsets = (np.arange(s) + 0.5) / s - 0.5
    rr = (np.arange(box[0].start, box[0].stop)[:, None] + offsets[None, :]).ravel()
    cc = (np.arange(box[1].start, box[1].stop)[:, None] + offsets[None, :]).ravel()
    return np.meshgrid(rr.astype(np.float32), cc.astype(np.float32), indexing="ij")


def _pixel_fraction(mask: np.ndarray) -> np.ndarray:
    """Fraction of each pixel's sub-pixels that are set."""
    s = _SUPERSAMPLE
    h, w = mask.shape[0] // s, mask.shape[1] // s
    return mask.reshape(h, s, w, s).mean(axis=(1, 3), dtype=np.float32)


def _lesion_outline(lesion: _Lesion, rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance of points ``rr, cc`` from the lesion centre and the outline radius there."""
    dr, dc = rr - lesion.centre[0], cc - lesion.centre[1]
    phi = np.arctan2(dr, dc)
    outline = np.ones_like(dr)
    for k, (amp, phase) in enumerate(lesion.harmonics, start=2):
        outline += amp * np.cos(k * phi + phase)
    return np.hypot(dr, dc), outline * lesion.radius


def _lesion_window(lesion: _Lesion, box: tuple[slice, slice]) -> tuple[slice, slice] | None:
    """Pixels of ``box`` (relative to it) that the lesion or its halo can touch; None if none."""
    reach = lesion.radius * (1.0 + lesion.harmonics[:, 0].sum()) + _HALO_REACH * lesion.halo + 1.0
    window = []
    for centre, span in zip(lesion.centre, box):
        start = max(int(math.floor(centre - reach)), span.start) - span.start
        stop = min(int(math.ceil(centre + reach)) + 1, span.stop) - span.start
        if start >= stop:
            return None
        window.append(slice(start, stop))
    return window[0], window[1]


def _lesion_appearance(lesion: _Lesion, rr: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Darkness inside (0 outside) and chlorotic halo strength around one lesion."""
    rho, outline = _lesion_outline(lesion, rr, cc)
    relative = rho / outline
    # Darker centre and faint concentric rings, as on brown-blight spots.
    darkness = np.clip(
        lesion.darkness + 0.25 * (1.0 - relative) + 0.1 * np.cos(2 * math.pi * 2.5 * relative), 0.0, 1.0
    )
    inside = relative <= 1.0
    halo = np.exp(-np.maximum(rho - outline, 0.0) / lesion.halo) * ~inside
    return np.where(inside, darkness, 0.0), halo


def _render_abundances(
    leaves: list[_Leaf], shape: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Composite the leaves over the belt.

    Returns
    -------
    abundances : numpy.ndarray
        ``(len(_ENDMEMBERS) - 1, rows, cols)`` float32 leaf abundance maps (every endmember but
        the belt), premultiplied by coverage.
    leaf_cover, lesion_cover : numpy.ndarray
        ``(rows, cols)`` float32 fraction of each pixel covered by leaf (lesions included) and
        by lesion.
    """
    rows, cols = shape
    size = min(rows, cols)
    chlorophyll_field = _smooth_field(rng, shape, max(size / 12.0, 2.0))
    structure_field = _smooth_field(rng, shape, max(size / 10.0, 2.0))
    glare_field = _smooth_field(rng, shape, max(size / 25.0, 2.0))
    abundances = np.zeros((len(_ENDMEMBERS) - 1, rows, cols), dtype=np.float32)
    leaf_cover = np.zeros(shape, dtype=np.float32)
    lesion_cover = np.zeros(shape, dtype=np.float32)
    for leaf in leaves:
        box = leaf.bounding_box(shape)
        if box is None:
            continue
        sub_rr, sub_cc = _subpixel_grid(box)
        on_leaf = leaf.inside(sub_rr, sub_cc)
        cover = _pixel_fraction(on_leaf)
        if not cover.any():
            continue
        lesion_sub = np.zeros_like(on_leaf)
        rr, cc = np.meshgrid(
            np.arange(box[0].start, box[0].stop, dtype=np.float32),
            np.arange(box[1].start, box[1].stop, dtype=np.float32),
            indexing="ij",
        )
        darkness = np.zeros(cover.shape, dtype=np.float32)
        halo = np.zeros(cover.shape, dtype=np.float32)
        for lesion in leaf.lesions:
            window = _lesion_window(lesion, box)
            if window is None:
                continue
            sub_window = tuple(slice(w.start * _SUPERSAMPLE, w.stop * _SUPERSAMPLE) for w in window)
            rho, outline = _lesion_outline(lesion, sub_rr[sub_window], sub_cc[sub_window])
            lesion_sub[sub_window] |= rho <= outline
            lesion_darkness, lesion_halo = _lesion_appearance(lesion, rr[window], cc[window])
            np.maximum(darkness[window], lesion_darkness, out=darkness[window])
            np.maximum(halo[window], lesion_halo, out=halo[window])
        lesion_frac = _pixel_fraction(lesion_sub & on_leaf)
        healthy_frac = cover - lesion_frac

        u, q = leaf.local(rr, cc)
        across = np.clip(np.abs(q) / np.maximum(leaf.profile(u), 1.0), 0.0, 1.0)
        midrib = np.exp(-0.5 * (q / max(0.6, 0.012 * leaf.half_length)) ** 2) * (np.abs(u) < 1)
        spacing = max(3.0, leaf.half_length / 7.0)
        phase = (u * leaf.half_length - 0.8 * np.abs(q)) / spacing
        lateral = np.exp(
            -0.5 * ((phase - np.round(phase)) * spacing / max(0.5, 0.006 * leaf.half_length)) ** 2
        )
        lateral *= (across < 0.85) * (np.abs(u) < 0.95)
        chlorophyll = (
            leaf.chlorophyll + 0.3 * chlorophyll_field[box] - 1.2 * midrib - 0.6 * lateral - 1.5 * halo
        )
        structure = leaf.structure + 0.15 * structure_field[box] - 0.2 * midrib
        shade = leaf.brightness * (1.0 - leaf.curl * across**3)
        glare = leaf.glare * np.clip((glare_field[box] - 1.2) / 0.6, 0.0, 1.0) * (1 - across**2)

        healthy = healthy_frac * shade
        lesion = lesion_frac * shade
        own = np.stack(
            [
                healthy,
                healthy * chlorophyll,
                healthy * structure,
                lesion * (1.0 - darkness),
                lesion * darkness,
                cover * glare,
            ]
        ).astype(np.float32)
        # "Over" compositing with premultiplied coverage: the new leaf hides what lies below.
        below = 1.0 - cover
        abundances[:, box[0], box[1]] = own + below * abundances[:, box[0], box[1]]
        leaf_cover[box] = cover + below * leaf_cover[box]
        lesion_cover[box] = lesion_frac + below * lesion_cover[box]
    return abundances, leaf_cover, lesion_cover


def _belt_abundance(rng: np.random.Generator, leaf_cover: np.ndarray, light_angle: float) -> np.ndarray:
    """Belt abundance: uncovered fraction x texture x leaf shadows."""
    rows, cols = leaf_cover.shape
    size = min(rows, cols)
    period = rng.uniform(5.0, 11.0)
    stripes = 1.0 + 0.06 * np.sin(2 * math.pi * np.arange(cols) / period + rng.uniform(0, 2 * math.pi))
    grain = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), 0.8).astype(np.float32)
    texture = stripes[None, :].astype(np.float32) * (1.0 + 0.25 * grain)
    # Dust specks: small bright spots that belong to the background.
    n_specks = rng.poisson(rows * cols / 4000.0)
    speck_map = np.zeros((rows, cols), dtype=np.float32)
    speck_map[rng.integers(0, rows, n_specks), rng.integers(0, cols, n_specks)] = rng.uniform(
        1.5, 4.0, n_specks
    )
    texture += ndimage.gaussian_filter(speck_map, 0.7)
    # Leaves lie a little above the belt: their shadow is the leaf shifted away from the lamp.
    offset = max(1.0, 0.03 * size) * rng.uniform(0.7, 1.3)
    shadow = ndimage.shift(
        leaf_cover, (offset * math.sin(light_angle), offset * math.cos(light_angle)), order=1, mode="constant"
    )
    shadow = ndimage.gaussian_filter(shadow, max(0.8, 0.01 * size))
    depth = rng.uniform(0.45, 0.65)
    return (1.0 - leaf_cover) * texture * (1.0 - depth * np.clip(shadow, 0.0, 1.0))


def _illumination_map(illumination: Illumination, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    r = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / max(rows / 2, 1)
    c = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2) / max(cols / 2, 1)
    angle = math.radians(illumination.tilt_angle_deg)
    ramp = (c[None, :] * math.cos(angle) + r[:, None] * math.sin(angle)) / math.sqrt(2.0)
    vignette = 1.0 - illumination.vignetting * c[None, :] ** 2
    return (illumination.gain * (1.0 + illumination.tilt * ramp) * vignette).astype(np.float32)


def _noise_scale(wavelengths: np.ndarray) -> np.ndarray:
    """1 / quantum efficiency of a silicon sensor: lowest near 650 nm, high at 400 and 1000 nm."""
    efficiency = 0.25 + 0.75 * _gauss(wavelengths, 650.0, 180.0)
    return (1.0 / efficiency).astype(np.float32)


# --------------------------------------------------------------------------- public API


def _check_arguments(
    rows: int,
    cols: int,
    n_bands: int,
    wl_range: tuple[float, float],
    n_leaves: int | None,
    lesion_fraction: float,
    noise: float,
) -> None:
    if int(rows) != rows or int(cols) != cols or rows < 4 or cols < 4:
        raise ConfigError(f"Synthetic scene size must be at least 4 x 4 pixels, got {rows} x {cols}.")
    if int(n_bands) != n_bands or n_bands < 1:
        raise ConfigError(f"Synthetic scene needs at least one band, got n_bands={n_bands}.")
    low, high = wl_range
    if not (0 < low < high) or not math.isfinite(high):
        raise ConfigError(f"Wavelength range must be increasing and positive (nm), got {wl_range}.")
    if n_leaves is not None and (int(n_leaves) != n_leaves or n_leaves < 0):
        raise ConfigError(f"n_leaves must be a non-negative integer, got {n_leaves}.")
    if not 0.0 <= lesion_fraction <= 0.9:
        raise ConfigError(f"lesion_fraction must lie in [0, 0.9], got {lesion_fraction}.")
    if not (noise >= 0.0 and math.isfinite(noise)):
        raise ConfigError(f"noise must be a finite non-negative scale, got {noise}.")


def make_leaf_scene(
    rows: int = 256,
    cols: int = 256,
    n_bands: int = 301,
    wl_range: tuple[float, float] = (400.0, 1000.0),
    *,
    seed: int = 0,
    n_leaves: int | None = None,
    lesion_fraction: float = 0.12,
    illumination: Illumination | None = None,
    noise: float = 1.0,
) -> SyntheticScene:
    """Render a synthetic close-range leaf scene with ground-truth labels.

    Parameters
    ----------
    rows, cols : int
        Image size in pixels (at least 4 each). Leaves scale with ``min(rows, cols)``.
    n_bands : int
        Number of bands, evenly spaced over ``wl_range``.
    wl_range : tuple of float
        First and last band centre in nm.
    seed : int
        Seed of everything random; the same arguments always give identical arrays.
    n_leaves : int, optional
        Number of leaves; 3 to 5, drawn from the seed, if omitted. More leaves are smaller.
    lesion_fraction : float
        Approximate fraction of the leaf area covered by lesions (0 for healthy leaves).
    illumination : Illumination, optional
        Lighting of the capture; drawn from the seed if omitted. The layout does not depend on
        it, so one seed rendered under two illuminations shows the same leaves.
    noise : float
        Scale of the sensor noise (0 gives a noise-free cube).

    Returns
    -------
    SyntheticScene
        Cube ``(rows, cols, n_bands)`` float32, labels ``(rows, cols)`` uint8, wavelengths.

    Raises
    ------
    ConfigError
        If a size, range or scale is out of its valid range.
    """
    _check_arguments(rows, cols, n_bands, wl_range, n_leaves, lesion_fraction, noise)
    rows, cols, n_bands = int(rows), int(cols), int(n_bands)
    shape = (rows, cols)
    layout_seq, belt_seq, light_seq, noise_seq = np.random.SeedSequence(seed).spawn(4)
    layout_rng = np.random.default_rng(layout_seq)
    if n_leaves is None:
        n_leaves = int(layout_rng.integers(3, 6))
    light_rng = np.random.default_rng(light_seq)
    # Drawn even when given, so the shadow direction drawn next does not depend on it.
    drawn_illumination = Illumination.random(light_rng)
    illumination = illumination if illumination is not None else drawn_illumination
    wavelengths = np.linspace(float(wl_range[0]), float(wl_range[1]), n_bands)

    leaves = _draw_leaves(layout_rng, shape, int(n_leaves), float(lesion_fraction))
    leaf_abundances, leaf_cover, lesion_cover = _render_abundances(leaves, shape, layout_rng)
    belt = _belt_abundance(
        np.random.default_rng(belt_seq), leaf_cover, light_angle=float(light_rng.uniform(0, 2 * math.pi))
    )
    abundances = np.concatenate([belt[None], leaf_abundances])
    # Optical blur of the lens: neighbouring materials bleed into edge pixels.
    abundances = ndimage.gaussian_filter(abundances, sigma=(0, 0.5, 0.5), mode="nearest")

    fractions = np.stack([1.0 - leaf_cover, leaf_cover - lesion_cover, lesion_cover])
    labels = np.argmax(fractions, axis=0).astype(np.uint8)

    endmembers = _endmember_spectra(wavelengths)
    lamp = (1.0 + illumination.spectral_slope * (wavelengths - 700.0) / 300.0).astype(np.float32)
    light = _illumination_map(illumination, shape)
    noise_rng = np.random.default_rng(noise_seq)
    noise_per_band = _noise_scale(wavelengths) * np.float32(noise)
    column_gain = 1.0 + np.float32(0.004 * noise) * noise_rng.standard_normal(
        (cols, n_bands), dtype=np.float32
    )

    # Pixels x endmembers, so each block of rows is one sum of products per value.
    abundances = np.ascontiguousarray(np.moveaxis(abundances, 0, -1))
    cube = np.empty((rows, cols, n_bands), dtype=np.float32)
    block_rows = max(1, _BLOCK_ELEMENTS // (cols * n_bands))
    sigma_buffer = np.empty((block_rows, cols, n_bands), dtype=np.float32)
    noise_buffer = np.empty_like(sigma_buffer)
    for start in range(0, rows, block_rows):
        block = slice(start, min(start + block_rows, rows))
        values = cube[block]
        # optimize=False keeps numpy's own loop (no BLAS), so the bytes never depend on threads.
        np.einsum("hwk,kb->hwb", abundances[block], endmembers, out=values, optimize=False)
        values *= light[block, :, None]
        values *= lamp
        if noise > 0:
            # Read noise plus shot noise, divided by the band's quantum efficiency.
            sigma = sigma_buffer[: values.shape[0]]
            np.maximum(values, 0.0, out=sigma)
            sigma *= np.float32(4e-4)
            sigma += np.float32(2e-5)
            np.sqrt(sigma, out=sigma)
            sigma *= noise_per_band
            values *= column_gain
            draws = noise_buffer[: values.shape[0]]
            noise_rng.standard_normal(out=draws, dtype=np.float32)
            draws *= sigma
            values += draws
    return SyntheticScene(cube=cube, labels=labels, wavelengths=wavelengths, illumination=illumination)


def make_leaf_dataset(
    n_scenes: int,
    rows: int = 256,
    cols: int = 256,
    n_bands: int = 301,
    wl_range: tuple[float, float] = (400.0, 1000.0),
    *,
    seed: int = 0,
    **scene_options,
) -> list[SyntheticScene]:
    """Render several independent scenes, each with its own layout and illumination.

    Parameters
    ----------
    n_scenes : int
        Number of scenes (at least 1).
    rows, cols, n_bands, wl_range
        As in :func:`make_leaf_scene`.
    seed : int
        Seed of the dataset; scene ``i`` uses a seed derived from it.
    **scene_options
        Further keyword arguments of :func:`make_leaf_scene` (``n_leaves``,
        ``lesion_fraction``, ``noise``); an explicit ``illumination`` would apply to all scenes.

    Returns
    -------
    list of SyntheticScene
    """
    if int(n_scenes) != n_scenes or n_scenes < 1:
        raise ConfigError(f"A synthetic dataset needs at least one scene, got n_scenes={n_scenes}.")
    scene_seeds = np.random.SeedSequence(seed).generate_state(int(n_scenes))
    return [
        make_leaf_scene(rows, cols, n_bands, wl_range, seed=int(scene_seed), **scene_options)
        for scene_seed in scene_seeds
    ]


def save_scene_npy(scene: SyntheticScene, folder: str | Path, stem: str = "cube") -> dict[str, Path]:
    """Write a scene as ``.npy`` cube, ``.npy`` labels and a JSON sidecar, each atomically.

    Parameters
    ----------
    scene : SyntheticScene
        The scene to save.
    folder : str or Path
        Destination folder; created if missing. Existing files of the same names are replaced.
    stem : str
        File-name stem: writes ``<stem>.npy`` (band-last float32 cube), ``<stem>_labels.npy``
        (uint8, found as the cube's mask by :func:`napari_dgc.analysis.masks.match_masks`) and
        ``<stem>.json``.

    Returns
    -------
    dict of str to Path
        ``{"cube": ..., "labels": ..., "metadata": ...}``.

    Notes
    -----
    The JSON sidecar holds ``{"wavelengths": [...], "wavelength_units": "nm", "class_names":
    [...], "illumination": {...}}``.
    """
    if not stem or Path(stem).name != stem:
        raise ConfigError(f"File-name stem must be a plain file name, got {stem!r}.")
    folder = Path(folder)
    paths = {
        "cube": folder / f"{stem}.npy",
        "labels": folder / f"{stem}_labels.npy",
        "metadata": folder / f"{stem}.json",
    }
    for key, array in (("cube", scene.cube), ("labels", scene.labels)):
        with atomic_open(paths[key], "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_json(
        paths["metadata"],
        {
            "wavelengths": [float(w) for w in scene.wavelengths],
            "wavelength_units": "nm",
            "class_names": list(scene.class_names),
            "illumination": dataclasses.asdict(scene.illumination),
        },
    )
    return paths
