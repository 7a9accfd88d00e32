"""Run folders: the configuration, data provenance and checkpoints of one training run.

Layout::

    RUN/run.json                                  manifest (see below), replaced atomically
    RUN/checkpoints/step-000100/model.safetensors model weights and buffers
    RUN/checkpoints/step-000100/optimizer.safetensors  optimizer tensors (flattened)
    RUN/checkpoints/step-000100/state.json        step, stats, optimizer structure, training state
    RUN/checkpoints/step-000100/training.safetensors   tensors of the training state (if any)
    RUN/checkpoints/start1-step-000100/...        the same for start 1 of a run with several starts

``run.json`` holds the training configuration, band count, wavelengths, dataset files with
their sizes, seed, package versions, creation time, the chosen checkpoint, the checkpoint
training recommends and why (``recommended_checkpoint``), the selected start
(runs with several starts, ``TrainConfig.starts.count``) and the list of checkpoints in training
order with the SHA-256 of each of their files. A checkpoint is added to that list only

after all its files are on disk, and ``run.json`` is replaced atomically, so a process killed at
any moment (or a full disk) leaves every listed checkpoint loadable, and a reader (the GUI
timeline) sees either the old or the new list, never a partial file.

One writer at a time: training (new or resumed) holds the run lock ``RUN/.run.lock`` for its
whole lifetime, released by the kernel if the process dies; another writer is refused with
"run RUN is busy: trained by pid ... on host ... since ...", and a GUI can ask first with
:meth:`RunDirectory.holder` / :meth:`RunDirectory.is_busy`. Read-modify-write updates of
``run.json`` (a new checkpoint, the chosen checkpoint, chosen while training runs) hold the brief
``RUN/.manifest.lock`` (see :mod:`napari_dgc.run_folder.lock`). A damaged checkpoint entry
costs only that checkpoint (:meth:`RunDirectory.rejected_checkpoints`); every checkpoint, for
segmenting or resuming, is checked the same way (:mod:`napari_dgc.run_folder.validation`); no
path read from ``run.json`` or written by training leaves the folder
(:mod:`napari_dgc.run_folder.paths`).

Nothing here unpickles: tensors are read with safetensors, everything else is JSON.
"""

from napari_dgc.run_folder.directory import RunDirectory
from napari_dgc.run_folder.manifest import CheckpointInfo, Recommendation, checkpoint_id_for

__all__ = ["CheckpointInfo", "Recommendation", "RunDirectory", "checkpoint_id_for"]
