"""train.py's checkpoints: reading them (tensors only, with what is wrong with a file that does not load), atomic
replacement of ``last.pth.tar``, and resume checks.

timm's ``CheckpointSaver`` deletes ``last.pth.tar`` before renaming the new one into place, so a kill between the
two leaves no checkpoint to resume from. :class:`AtomicCheckpointSaver` keeps timm's bookkeeping (ranked history,
best, resume of the history) and replaces files only by atomic renames. :func:`resume_changes` lists the settings
of a ``--resume`` that differ from the run's, with old and new values.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import torch.nn as nn
from timm.models import load_state_dict
from timm.utils import CheckpointSaver
from timm.utils.checkpoint_saver import load_checkpoint_metadata

from ._io import atomic_path
from .train_args import TrainingError

__all__ = ['load_weights', 'read_checkpoint_args', 'AtomicCheckpointSaver', 'RESUME_MUTABLE', 'resume_changes']

# Settings that may differ on --resume: where and how the run executes, not what it computes.
RESUME_MUTABLE = ('config', 'resume', 'output', 'experiment', 'data_dir', 'download', 'workers', 'device',
                  'log_interval', 'checkpoint_hist', 'validation_batch_size', 'distributed', 'world_size', 'rank')


def _unreadable_checkpoint(path: Path, error: Exception) -> TrainingError:
    """What is wrong with a checkpoint file that does not load: pickled objects refused, truncated, not torch."""
    text = ' '.join(str(error).split())
    if 'weights_only' in text:
        detail = text.partition('Unsupported globals:')[2].partition(' No automatic')[0].strip(' .')
        return TrainingError(
            f'checkpoint {path} refused: it holds pickled Python objects ({detail or "besides tensors"}) and '
            f'only tensors are loaded (torch.load weights_only=True); re-save its state_dict or use safetensors')
    if 'central directory' in text or 'failed finding' in text or isinstance(error, EOFError):
        return TrainingError(f'checkpoint {path}: truncated or damaged ({path.stat().st_size} bytes; {text}); '
                             f'use an earlier checkpoint of the run')
    return TrainingError(f'checkpoint {path}: cannot be read as a torch or safetensors file '
                         f'({type(error).__name__}: {text})')


def _is_aux_key(key: str) -> bool:
    return 'aux' in key.split('.')[0]


def load_weights(model: nn.Module, checkpoint: str | os.PathLike, use_ema: bool = False) -> None:
    """Load a checkpoint's weights (tensors only: ``weights_only=True`` / safetensors) into ``model``.

    An auxiliary head in the checkpoint is dropped when ``model`` has none (it is training-only). Any other mismatch
    is refused with the missing, unexpected and mis-shaped keys named.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise TrainingError(f'checkpoint {path}: no such file')
    try:
        state = load_state_dict(str(path), use_ema=use_ema)
    except Exception as e:  # noqa: BLE001 -- refused pickles, truncated or foreign files
        raise _unreadable_checkpoint(path, e) from e
    expected = model.state_dict()
    state = {k: v for k, v in state.items() if k in expected or not _is_aux_key(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or shapes:
        def some(keys):
            return f'{len(keys)} ({", ".join(keys[:6])}{", ..." if len(keys) > 6 else ""})'
        raise TrainingError(
            f'checkpoint {path} does not fit this model ({type(model).__name__}): missing keys {some(missing)}, '
            f'unexpected keys {some(unexpected)}, different shapes {some(shapes)}; '
            f'was it trained with another --model / --model-kwargs / --num-classes?')
    model.load_state_dict(state)


def read_checkpoint_args(checkpoint: str | os.PathLike) -> dict:
    """The training arguments stored in a train.py checkpoint ({} for plain state dicts or safetensors).

    A file that cannot be loaded is refused here, with what is wrong with it.
    """
    if str(checkpoint).endswith('.safetensors') or not Path(checkpoint).is_file():
        return {}
    try:
        meta = load_checkpoint_metadata(str(checkpoint))
    except Exception as e:  # noqa: BLE001 -- refused pickles, truncated or foreign files
        raise _unreadable_checkpoint(Path(checkpoint), e) from e
    args = meta.get('args') if isinstance(meta, dict) else None
    return dict(vars(args)) if isinstance(args, argparse.Namespace) else {}


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
