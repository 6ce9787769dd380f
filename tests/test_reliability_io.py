"""The shared safety mechanisms of ``unas_zoo._io`` and the latency cache's messages (issues 11 and 13)."""
import errno
import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from unas_zoo._io import (
    LOCK_FILE, OutputLockedError, atomic_path, os_error_line, output_lock, remove_stale_temps, safe_load_yaml)
from unas_zoo.latency import LatencyCache, LatencyError


def dead_pid() -> int:
    return int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                              text=True).stdout)


def test_lock_is_exclusive_and_released(tmp_path):
    folder = tmp_path / 'a' / 'b'
    with output_lock(folder) as lock:
        assert lock.read_text() == f'{os.getpid()}\n'
        with pytest.raises(OutputLockedError, match=f'^{folder} is in use by process {os.getpid()} '):
            with output_lock(folder):
                pass
    assert not (tmp_path / 'a').exists(), 'folders created for the lock and left empty are removed'
    with output_lock(folder):
        (folder / 'result.txt').write_text('kept')
    assert sorted(p.name for p in folder.iterdir()) == ['result.txt']


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(f'{dead_pid()}\n')
    with output_lock(tmp_path) as lock:
        assert lock.read_text() == f'{os.getpid()}\n'


def test_only_our_temp_files_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    ours_dead = [tmp_path / f'.checkpoint.tmp{dead}.pt', tmp_path / f'.last.pth.tmp{dead}.tar',
                 tmp_path / f'.genotype.tmp{dead}.yaml']
    kept = [tmp_path / f'.checkpoint.tmp{alive}.pt', tmp_path / 'checkpoint.tmp1.pt', tmp_path / '.tmp123',
            tmp_path / f'.notes.tmp{dead}.txt.bak', tmp_path / 'genotype.yaml']
    for path in ours_dead + kept:
        path.write_bytes(b'')
    assert sorted(remove_stale_temps(tmp_path)) == sorted(ours_dead)
    assert all(p.exists() for p in kept)


def test_atomic_path_names_the_target_on_os_errors(tmp_path):
    target = tmp_path / 'out.json'
    target.write_text('old')
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            tmp.write_text('half')
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert info.value.filename == str(target) and os_error_line(info.value) == f'{target}: No space left on device'
    assert target.read_text() == 'old' and [p.name for p in tmp_path.iterdir()] == ['out.json']


def test_yaml_without_aliases_reads_plain_documents():
    assert safe_load_yaml('a: [1, {b: 2.5}]\nc: null\n') == {'a': [1, {'b': 2.5}], 'c': None}
    for text in ('a: &x 1\nb: *x\n', 'base: &b {x: 1}\nother: {<<: *b}\n'):
        with pytest.raises(yaml.YAMLError, match='alias'):
            safe_load_yaml(text)
    with pytest.raises(yaml.constructor.ConstructorError):
        safe_load_yaml('!!python/object/apply:os.system [true]')


# ------------------------------------------------------------------------------------------------- latency cache

GOOD = {'median_ms': 1.0, 'iqr_ms': 0.1, 'mean_ms': 1.0, 'min_ms': 0.9, 'repeats': 5}


def cache_file(tmp_path, entry) -> str:
    path = tmp_path / 'latency.json'
    path.write_text(json.dumps({'format': 'unas_zoo.latency_cache/1',
                                'contexts': {'ctx1': {'context': {'device': 'cpu'}, 'entries': {'arch7': entry}}}}))
    return path


@pytest.mark.parametrize('entry,fragment', [
    ({**GOOD, 'median_ms': 'fast'}, "entry arch7: median_ms is 'fast', expected a finite number >= 0"),
    ({**GOOD, 'mean_ms': math.nan}, 'entry arch7: mean_ms is nan, expected a finite number >= 0'),
    ({**GOOD, 'min_ms': -1.0}, 'entry arch7: min_ms is -1.0, expected a finite number >= 0'),
    ({'median_ms': 1.0}, "entry arch7: expected the fields ['iqr_ms', 'mean_ms', 'median_ms', 'min_ms', 'repeats']"),
    ([1, 2], 'entry arch7: expected the fields'),
])
def test_cache_with_bad_entries_names_the_file_and_the_entry(tmp_path, entry, fragment):
    path = cache_file(tmp_path, entry)
    with pytest.raises(LatencyError) as info:
        LatencyCache(path)
    assert str(info.value).startswith(f'{path}: latency cache context ctx1: {fragment}')


def test_cache_that_is_not_utf8_or_a_folder_names_the_file(tmp_path):
    path = tmp_path / 'latency.json'
    path.write_bytes(b'\xff\xfe{"contexts"')
    with pytest.raises(LatencyError, match=rf'^{path}: latency cache is not readable JSON'):
        LatencyCache(path)
    folder = tmp_path / 'cache_dir'
    folder.mkdir()
    with pytest.raises(LatencyError, match=rf'^{folder}: the latency cache path is not a file'):
        LatencyCache(folder)  # found at once, not after measuring


def test_good_cache_loads_and_its_stale_temps_are_removed(tmp_path):
    path = cache_file(tmp_path, GOOD)
    stale = tmp_path / f'.latency.tmp{dead_pid()}.json'
    stale.write_text('{"contexts": {')
    cache = LatencyCache(path)
    assert len(cache) == 1 and not stale.exists()
