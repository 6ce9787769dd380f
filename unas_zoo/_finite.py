"""Divergence guard shared by the search steps and train.py: stop at the first NaN/inf, never save it.

A run whose loss, gradient norm or parameters become non-finite stops with :class:`NonFiniteError`, a one-line
message naming the step, the value and the last good checkpoint, before anything from that state is written.
"""
from __future__ import annotations

import math
import os
from typing import Mapping

import torch

__all__ = ['NonFiniteError', 'check_finite', 'non_finite_keys']


class NonFiniteError(RuntimeError):
    """Training diverged (a loss, gradient or parameter is NaN or infinite); nothing was saved from that state."""


def _as_float(value: float | torch.Tensor) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def check_finite(values: Mapping[str, float | torch.Tensor], where: str,
                 last_checkpoint: str | os.PathLike | None) -> None:
    """Raise :class:`NonFiniteError` for the first non-finite entry of ``values`` (scalars or 0-d tensors)."""
    for name, value in values.items():
        value = _as_float(value)
        if not math.isfinite(value):
            kept = f'last good checkpoint {last_checkpoint} (kept)' if last_checkpoint else 'no checkpoint written yet'
            raise NonFiniteError(f'{where}: {name} is {value}; stopped without saving this state; {kept}; lower '
                                 f'the learning rate or clip gradients')


def non_finite_keys(values: Mapping[str, object]) -> list[str]:
    """Names of the float entries of ``values`` that are NaN or infinite (for validating user settings)."""
    return [k for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
