"""The recommended checkpoint of a run, chosen from internal signals only (no ground truth).

At every checkpoint the loop records two signals on the run's fixed selection windows
(:func:`~napari_dgc.training.starts.selection_windows`):

* ``selection_score``: how well the checkpoint's hard labels separate the spectra
  (Calinski–Harabasz on the normalised spectral inputs; the k-means criterion);
* ``agreement``: the normalised mutual information between its labels and those of the
  previous checkpoint of the same start (1: the same partition).

:func:`recommend` picks among the checkpoints of the start that continues. docs/training.md
("Recommended checkpoint") gives the rule's measurements against the truth.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_dgc.run_folder.manifest import CheckpointInfo, Recommendation

#: a checkpoint whose labels agree this well with the previous one's is on a plateau
STABLE_AGREEMENT = 0.9
#: separations within this fraction of the best count as equally good
SEPARATION_TOLERANCE = 0.02


def recommend(checkpoints: Sequence[CheckpointInfo]) -> Recommendation | None:
    """The checkpoint to use when nobody chose one, or ``None`` if none has the signals.

    Among the checkpoints that carry a ``selection_score``, the stable ones (``agreement`` with
    the previous checkpoint at least :data:`STABLE_AGREEMENT`) are preferred; of those whose
    score is within :data:`SEPARATION_TOLERANCE` of the best, the latest wins (later
    checkpoints have seen more data; the tolerance keeps a rounding-level gain from sending a
    person back to an early checkpoint).
    """
    scored = [info for info in checkpoints if isinstance(info.stats.get("selection_score"), (int, float))]
    if not scored:
        return None
    stable = [info for info in scored if float(info.stats.get("agreement", 0.0)) >= STABLE_AGREEMENT]
    pool = stable or scored
    best = max(float(info.stats["selection_score"]) for info in pool)
    good = [
        info for info in pool if float(info.stats["selection_score"]) >= (1 - SEPARATION_TOLERANCE) * best
    ]
    chosen = good[-1]
    # No index value here: it is computed on the run's selection windows, not on the cubes the
    # timeline plots its "spectral separation" for, so a number would seem to disagree with it.
    reason = (
        "the latest checkpoint whose separation of the spectra (on the run's selection windows) "
        f"is within {SEPARATION_TOLERANCE:.0%} of the best"
    )
    if stable:
        agreement = float(chosen.stats["agreement"])
        reason += f", with labels that agree with the previous checkpoint's (NMI {agreement:.2f})"
    else:
        reason += f" (no checkpoint's labels agree with the previous one's at NMI >= {STABLE_AGREEMENT} yet)"
    return Recommendation(chosen.checkpoint_id, reason)
