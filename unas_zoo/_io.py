"""Atomic file writes: every output the package writes appears whole or not at all.

A crash, an error or Ctrl-C mid-write leaves the previous file (genotype, checkpoint, cache, plot, drawing) intact.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

__all__ = ['atomic_path', 'atomic_write_text']


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick their format from it (matplotlib) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.tmp{os.getpid()}{path.suffix}')
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding='utf-8')
    return Path(path)
