"""train.py's checkpoints: atomic replacement of ``last.pth.tar`` and resume checks.

timm's ``CheckpointSaver`` deletes ``last.pth.tar`` before renaming the new one into place, so a kill between the
two leaves no checkpoint to resume from. :class:`AtomicCheckpointSaver` keeps timm's bookkeeping (ranked history,
best, resume of the history) and replaces files only by atomic renames. :func:`resume_changes` lists the settings
of a ``--resume`` that differ from the run's, with old and new values.
"""
from __future__ import annotations

import argparse
import os
import shutil

from timm.utils import CheckpointSaver

from ._io import atomic_path

__all__ = ['AtomicCheckpointSaver', 'RESUME_MUTABLE', 'resume_changes']

# Settings that may differ on --resume: where and how the run executes, not what it computes.
RESUME_MUTABLE = ('config', 'resume', 'output', 'experiment', 'data_dir', 'download', 'workers', 'device',
                  'log_interval', 'checkpoint_hist', 'validation_batch_size', 'distributed', 'world_size', 'rank')


class AtomicCheckpointSaver(CheckpointSaver):
    """timm's saver whose file replacements are single atomic renames: ``last`` / ``model_best`` / the numbered
    checkpoints are at every moment either the previous complete file or the new complete one."""

    def _save(self, save_path: str, epoch: int, metric: float | None = None) -> None:
        # Atomic, and through a Python file: a full disk leaves no partial file and is reported as the OSError.
        with atomic_path(save_path) as tmp, open(tmp, 'wb') as f:
            super()._save(f, epoch, metric)

    def _replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)  # atomic, also over an existing file (POSIX rename, Windows MoveFileEx)

    def _duplicate(self, src: str, dst: str) -> None:
        with atomic_path(dst) as tmp:
            try:
                os.link(src, tmp)
            except OSError:  # no hard links on this file system
                shutil.copy2(src, tmp)


def resume_changes(stored: dict, args: argparse.Namespace) -> list[str]:
    """``'--lr 0.1 -> 5.0'`` for each setting of ``args`` that differs from the run's ``stored`` args.

    Only values are compared, so repeating the run's own command plus ``--resume`` shows no change. A plain state
    dict (no stored args) has nothing to compare with.
    """
    if not stored:
        return []
    current = vars(args)

    def show(value) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + '...'
    return [f'--{k.replace("_", "-")} {show(stored.get(k))} -> {show(current.get(k))}'
            for k in sorted(set(stored) | set(current)) if k not in RESUME_MUTABLE and stored.get(k) != current.get(k)]
