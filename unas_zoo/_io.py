"""Safe file handling shared by every writer and reader of the package.

* Atomic writes: every output (genotype, checkpoint, cache, plot, drawing) appears whole or not at all; a crash,
  an error or Ctrl-C mid-write leaves the previous file intact. Temporary files of dead processes are removed by
  the next run in the same folder (:func:`remove_stale_temps`).
* An exclusive lock on a run's output folder (:func:`output_lock`): a second run on the same folder is refused with
  the owner's pid while the first is alive; the lock of a killed run is taken over.
* OS errors (read-only folder, full disk, permissions) become one line naming the path and the cause
  (:func:`os_error_line`), which the command-line tools print with exit code 2.
* YAML without aliases (:func:`safe_load_yaml`): ``yaml.safe_load`` expands anchors/aliases, so a small
  "billion laughs" file can exhaust memory; user files are read without them and with a nesting limit.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

__all__ = ['atomic_path', 'atomic_write_text', 'remove_stale_temps', 'output_lock', 'OutputLockedError',
           'os_error_line', 'safe_load_yaml', 'YAML_MAX_DEPTH', 'LOCK_FILE']

LOCK_FILE = '.lock'
YAML_MAX_DEPTH = 64
# Our temporary names: '.{stem}.tmp{pid}{suffix}' (see atomic_path).
_TEMP_NAME = re.compile(r'^\..+\.tmp(?P<pid>\d+)(\.[^.]*)?$')


def _temp_name(path: Path) -> Path:
    return path.with_name(f'.{path.stem}.tmp{os.getpid()}{path.suffix}')


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; it replaces ``path`` only if the block succeeds.

    The temporary name keeps the suffix, so writers that pick their format from it (matplotlib) still work. An OS
    error names ``path`` itself (not the temporary file), so messages point at what the user asked for; it is also
    found behind writers that wrap it (torch.save into a Python file raises RuntimeError from the ENOSPC OSError).
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        cause = _os_error_behind(e)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _os_error_behind(error: BaseException | None) -> OSError | None:
    """``error`` itself if it is an OSError, else the first OSError it was raised from or while handling."""
    for _ in range(8):
        if error is None or isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding='utf-8')
    return Path(path)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OverflowError:
        return False
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed processes left in ``folder`` and its sub-folders one level down
    (ours only: the name matches ``atomic_path``'s and its pid is dead)."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for path in [*folder.glob('.*.tmp*'), *folder.glob('*/.*.tmp*')]:
        match = _TEMP_NAME.match(path.name)
        if match and path.is_file() and not _pid_alive(int(match['pid'])):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


class OutputLockedError(RuntimeError):
    """Another live process holds the output folder."""


def _read_owner(path: Path) -> str:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text(encoding='utf-8').strip() or '?'
    return '?'


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold ``folder`` exclusively for this process: a second run on it is refused while this one is alive.

    The lock is ``folder/.lock`` holding the owner's pid, locked with ``flock``: the kernel releases it when the
    owner dies (even by SIGKILL), so the lock of a killed run is free again and is simply taken over. The folder is
    created if needed (and the folders created for it are removed at release if still empty); stale temporary files
    of dead processes in it are removed once the lock is held.
    """
    import fcntl

    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLockedError(
                f'{folder} is in use by process {_read_owner(path)} (lock {path}); wait for it to end or choose '
                f'another output folder') from None
        # The previous owner may have removed the file between our open and our flock: lock the file in place.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f'{os.getpid()}\n'.encode())
        remove_stale_temps(folder)
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        for path in created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when nothing was written


def os_error_line(error: OSError) -> str:
    """``'PATH: Read-only file system'``: the path and the cause of an OS error, on one line."""
    cause = ' '.join((error.strerror or str(error) or type(error).__name__).split())
    return f'{error.filename}: {cause}' if error.filename is not None else cause


class _NoAliasLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases (``*name``, ``<<: *name``) and nesting deeper than ``YAML_MAX_DEPTH``."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f'alias *{event.anchor} refused (anchors and aliases are not allowed in this file)',
                event.start_mark)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f'nested deeper than {YAML_MAX_DEPTH} levels', self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load_yaml(text: str) -> Any:
    """``yaml.safe_load`` without aliases and with a nesting limit (raises ``yaml.YAMLError``)."""
    loader = _NoAliasLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
