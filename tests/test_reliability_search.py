"""search.py under faults: divergence in the w and φ steps, two runs on one folder, OS errors on outputs, resume as
users type it, damaged checkpoints, non-finite settings, YAML aliases, stale temp files (issues 11 and 13).

Searches are the tiny ones of test_search.py (8x8 digits, C=4, 3 cells, 7 steps per epoch), in-process; a
subprocess only where two processes are the point.
"""
import dataclasses
import math
import os
import shutil
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
import yaml

import unas_zoo.search.loop as loop
from unas_zoo._finite import NonFiniteError
from unas_zoo._io import LOCK_FILE, OutputLockedError
from unas_zoo.search.checkpoint import CHECKPOINT, FORMAT
from unas_zoo.search.config import SearchConfig, SearchConfigError, config_from_dict, load_config
from unas_zoo.search.loop import FINAL_GENOTYPE, run_search

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import search as search_cli  # noqa: E402
from _faults import disk_full  # noqa: E402

TINY_ARGS = ['--image-size', '8', '--init-channels', '4', '--layers', '3', '--batch-size', '96', '--val-fraction',
             '0.5', '--epochs', '2', '--warmup-epochs', '1', '--sampling', 'per_example', '--device', 'cpu',
             '--log-every', '1000', '--threads', '1']
STEPS_PER_EPOCH = 7


def tiny(out: Path, **overrides) -> SearchConfig:
    args = search_cli.build_parser().parse_args([*TINY_ARGS, '--output', str(out)])
    return dataclasses.replace(search_cli.resolve_config(args), **overrides)


def cli(capsys, *argv) -> tuple[int, str]:
    code = search_cli.main([*map(str, argv)])
    return code, capsys.readouterr().err


def finite_state(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    for part in ('supernet', 'dist'):
        assert all(torch.isfinite(t).all() for t in state[part].values() if t.is_floating_point())
    return state


@pytest.fixture(scope='module')
def stopped_run(tmp_path_factory) -> Path:
    """A run stopped after 3 steps with the command line a user types (kept read-only: tests copy it)."""
    out = tmp_path_factory.mktemp('search') / 'stopped'
    assert search_cli.main([*TINY_ARGS, '--output', str(out), '--stop-after-steps', '3']) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / 'copy'))


# ------------------------------------------------------------------------------------------------------ divergence

def _poison(monkeypatch, name: str, key: str, at_call: int) -> None:
    """Make the ``at_call``-th call of loop.<name> (w_step / phi_step) report a NaN ``key``."""
    real, calls = getattr(loop, name), []

    def poisoned(*args, **kwargs):
        stats = real(*args, **kwargs)
        calls.append(1)
        return {**stats, key: float('nan')} if len(calls) == at_call else stats
    monkeypatch.setattr(loop, name, poisoned)


@pytest.mark.parametrize('name,key,at_call,expected,kept', [
    ('w_step', 'w_loss', 5, 'w step 5: the w loss is nan', (0, 3)),
    ('w_step', 'w_grad_norm', 9, 'w step 9: the w gradient norm is nan', (1, 0)),
    ('phi_step', 'phi_loss', 2, 'φ step 2: the φ loss is nan', (1, 0)),   # global step 9
    ('phi_step', 'phi_grad_norm', 6, 'φ step 6: the φ gradient norm is nan', (1, 5)),   # global step 13
])
def test_non_finite_step_stops_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, name, key, at_call, expected,
                                                             kept):
    """Checkpoints at global steps 3, 6, 7 (epoch end), 9, 12: the one before the poisoned step is kept."""
    _poison(monkeypatch, name, key, at_call)
    out = tmp_path / 'run'
    with pytest.raises(NonFiniteError) as info:
        run_search(tiny(out, checkpoint_every=3), progress=False)
    message = str(info.value)
    assert message.startswith(expected) and '\n' not in message
    assert f'last good checkpoint {out / CHECKPOINT} (kept)' in message
    state = finite_state(out / CHECKPOINT)
    assert (state['epoch'], state['step_in_epoch']) == kept
    assert not (out / FINAL_GENOTYPE).exists() and not (out / LOCK_FILE).exists()


def test_diverging_w_lr_exits_nonzero_without_a_genotype(tmp_path, capsys):
    out = tmp_path / 'run'
    code, err = cli(capsys, *TINY_ARGS, '--output', out, '--w-lr', '1e30')
    assert code == 2 and err.count('\n') == 1
    assert err.startswith('search.py: error: w step ') and ' is nan' in err and 'no checkpoint written yet' in err
    assert not (out / FINAL_GENOTYPE).exists() and not (out / CHECKPOINT).exists() and not (out / 'epochs').exists()


# --------------------------------------------------------------------------------------------------------- the lock

def test_second_run_on_the_same_folder_is_refused_while_the_first_finishes(tmp_path, capsys):
    out = tmp_path / 'run'
    # Three epochs: the first run is still busy when the second one tries, after its first checkpoint.
    first = subprocess.Popen([sys.executable, 'search.py', *TINY_ARGS, '--epochs', '3', '--output', str(out)],
                             cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    refusal = (f'search.py: error: {out} is in use by process {first.pid} (lock {out / LOCK_FILE}); wait for it to '
               f'end or choose another output folder\n')

    def wait_for(path: Path) -> None:
        deadline = time.time() + 300
        while not path.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.02)
    try:
        wait_for(out / LOCK_FILE)
        assert cli(capsys, *TINY_ARGS, '--epochs', '3', '--output', out) == (2, refusal)
        wait_for(out / CHECKPOINT)
        assert cli(capsys, '--output', out, '--resume') == (2, refusal)
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr
    assert (out / FINAL_GENOTYPE).is_file() and not (out / LOCK_FILE).exists()


def test_killed_run_resumed_with_the_same_command_finishes_and_cleans_up(stopped_run, tmp_path):
    """The run's own command plus --resume continues it (was refused although no value changed), its
    --stop-after-steps 3 does not stop the resumed run again, and the killed owner's lock and temp files go."""
    out = copy_of(stopped_run, tmp_path)
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    pid = int(dead.stdout)
    (out / LOCK_FILE).write_text(f'{pid}\n')                        # a killed owner's lock
    (out / f'.checkpoint.tmp{pid}.pt').write_bytes(b'\0' * 341)     # and its partial checkpoint
    (out / 'epochs').mkdir(exist_ok=True)
    (out / 'epochs' / f'.genotype_epoch001.tmp{pid}.yaml').write_text('space: da')   # and an epoch output
    (out / f'.probabilities.tmp{os.getppid()}.json').write_text('{')  # a live process's temp file stays
    assert search_cli.main([*TINY_ARGS, '--output', str(out), '--resume']) == 0
    assert (out / FINAL_GENOTYPE).is_file()
    assert sorted(p.name for p in out.glob('.*')) == [f'.probabilities.tmp{os.getppid()}.json']
    assert not list((out / 'epochs').glob('.*'))


# ------------------------------------------------------------------------------------------------------- OS errors

def test_read_only_output_folder_is_one_line(read_only_dir, capsys):
    read_only = read_only_dir
    code, err = cli(capsys, *TINY_ARGS, '--output', read_only / 'run')
    assert code == 2 and err == f'search.py: error: {read_only / "run"}: Read-only file system\n'


def test_full_disk_mid_run_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out, save, calls = tmp_path / 'run', torch.save, []

    def fill_disk(obj, f, *args, **kwargs):
        if Path(getattr(f, 'name', f)).suffix == '.pt':
            calls.append(f)
            if len(calls) == 2:
                f.write(b'\0' * 1000)
                disk_full()
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', fill_disk)
    code, err = cli(capsys, *TINY_ARGS, '--output', out, '--checkpoint-every', '2')
    assert code == 2 and err == f'search.py: error: {out / CHECKPOINT}: No space left on device\n'
    state = finite_state(out / CHECKPOINT)
    assert (state['epoch'], state['step_in_epoch']) == (0, 2)
    assert not [p.name for p in out.iterdir() if p.name.startswith('.')]


# --------------------------------------------------------------------------------------------------------- resume

def test_resume_keeps_the_run_settings_without_its_stop_after_steps(stopped_run, tmp_path):
    out = copy_of(stopped_run, tmp_path)
    args = search_cli.build_parser().parse_args(['--output', str(out), '--resume'])
    assert search_cli.resolve_config(args).stop_after_steps is None      # was 3, stored in config.yaml
    recipe = tmp_path / 'recipe.yaml'                                   # the run's settings as a --config file
    recipe.write_text(yaml.safe_dump({'image_size': 8, 'val_fraction': 0.5, 'layers': 3}))
    args = search_cli.build_parser().parse_args(['--config', str(recipe), *TINY_ARGS, '--output', str(out),
                                                 '--resume'])
    assert search_cli.resolve_config(args) == dataclasses.replace(tiny(out), stop_after_steps=None)


def test_resume_with_a_real_change_names_old_and_new(stopped_run, tmp_path, capsys):
    out = copy_of(stopped_run, tmp_path)
    code, err = cli(capsys, *TINY_ARGS, '--output', out, '--resume', '--w-lr', '0.1', '--layers', '5')
    assert code == 2 and err.count('\n') == 1
    assert f'--resume keeps the settings of {out / "config.yaml"}; these differ: --layers 3 -> 5; --w-lr 0.003 -> ' \
           f'0.1 (may change: --data-dir' in err


def _damage(state: dict, how: str):
    if how == 'garbage':
        return b'\x00\x01garbage' * 10
    if how == 'truncated':
        return None
    if how == 'other_format':
        state['format'] = 'unas_zoo.search/0'
    elif how == 'renamed_key':
        state['net'] = state.pop('supernet')
    elif how == 'renamed_tensor':
        state['supernet'] = {k.replace('cells', 'blocks'): v for k, v in state['supernet'].items()}
    elif how == 'shape_mismatch':
        key = next(k for k, v in state['supernet'].items() if v.dim() == 4)
        state['supernet'][key] = torch.zeros(1, 1, 1, 1)
    elif how == 'config_not_a_mapping':
        state['config'] = ['epochs', 2]
    elif how == 'epoch_beyond_epochs':
        state['epoch'] = 7
    return state


@pytest.mark.parametrize('how,expected', [
    ('garbage', 'cannot load the checkpoint to resume'),
    ('truncated', 'cannot load the checkpoint to resume'),
    ('other_format', "not a search checkpoint of this version (format 'unas_zoo.search/0', expected "
                     f"'{FORMAT}')"),
    ('renamed_key', "incomplete checkpoint, missing ['supernet']"),
    ('renamed_tensor', 'its state does not fit this search (RuntimeError: Error(s) in loading state_dict'),
    ('shape_mismatch', 'its state does not fit this search (RuntimeError: Error(s) in loading state_dict'),
    ('config_not_a_mapping', 'config is list, expected a mapping'),
    ('epoch_beyond_epochs', 'position epoch 7, step 3, finished False does not fit a run of 2 epochs x 7 steps'),
])
def test_damaged_checkpoint_is_refused_in_one_line(stopped_run, tmp_path, capsys, how, expected):
    out = copy_of(stopped_run, tmp_path)
    path = out / CHECKPOINT
    damaged = _damage(torch.load(path, weights_only=True), how)
    if damaged is None:
        path.write_bytes(path.read_bytes()[:-5000])
    elif isinstance(damaged, bytes):
        path.write_bytes(damaged)
    else:
        torch.save(damaged, path)
    before = path.read_bytes()
    code, err = cli(capsys, '--output', out, '--resume')
    assert code == 2 and err.count('\n') == 1 and 'Traceback' not in err
    assert err.startswith(f'search.py: error: {path}: {expected}'), err
    assert path.read_bytes() == before and not (out / FINAL_GENOTYPE).exists()


# ---------------------------------------------------------------------------------------------------------- values

FLOAT_KEYS = [f.name for f in dataclasses.fields(SearchConfig)
              if float in (typing.get_args(typing.get_type_hints(SearchConfig)[f.name]) or
                           (typing.get_type_hints(SearchConfig)[f.name],))]


def test_every_float_key_is_covered():
    assert {'w_lr', 'phi_lr', 'temperature', 'gen_lambda', 'arch_lambda', 'grad_clip', 'w_lr_min',
            'w_weight_decay', 'phi_weight_decay', 'zero_dropout', 'val_fraction'} <= set(FLOAT_KEYS)


@pytest.mark.parametrize('key', FLOAT_KEYS)
@pytest.mark.parametrize('value', [math.nan, math.inf, -math.inf])
def test_non_finite_float_settings_are_refused(key, value):
    with pytest.raises(SearchConfigError, match=rf'^<config>: {key}: expected a finite number, got {value}$'):
        config_from_dict({key: value})


def test_yaml_aliases_in_a_config_are_refused_quickly(tmp_path):
    levels = 'abcdefghi'
    path = tmp_path / 'laughs.yaml'
    path.write_text('a: &a [x, x, x, x, x, x, x, x, x]\n' + ''.join(
        f'{c}: &{c} [{", ".join([f"*{p}"] * 9)}]\n' for p, c in zip(levels, levels[1:])))
    start = time.perf_counter()
    with pytest.raises(SearchConfigError, match=r'not valid YAML .*alias \*a refused'):
        load_config(path)
    assert time.perf_counter() - start < 1.0


def test_lock_refusal_reaches_every_caller_as_output_locked_error(tmp_path):
    from unas_zoo._io import output_lock
    with output_lock(tmp_path / 'run'):
        with pytest.raises(OutputLockedError, match=f'in use by process {os.getpid()}'):
            run_search(tiny(tmp_path / 'run'), progress=False)


# --------------------------------------------------------------------------------------------------- exact resume

TINY_BACKBONE = dict(stem_width=8, first_block_width=8, stage_widths=[8, 8, 16, 16, 16, 16],
                     stage_depths=[2, 2, 1, 1, 1, 1], head_width=32)


def _assert_same_checkpoints(a: Path, b: Path) -> None:
    x, y = torch.load(a / CHECKPOINT, weights_only=True), torch.load(b / CHECKPOINT, weights_only=True)
    for part in ('supernet', 'dist'):
        different = [k for k in x[part] if not torch.equal(x[part][k], y[part][k])]
        assert not different, f'{len(different)} {part} tensors differ after resume, e.g. {different[:3]}'
    assert x['history'] == y['history']


def test_mbconv_search_with_zero_dropout_resumes_bit_for_bit(tmp_path):
    """iter(DataLoader) drew its base seed from the global RNG, which the zero-op dropout also uses: a resumed run
    created its iterators at other points and every later dropout mask moved (507 tensors differed)."""
    options = dict(space='mbconv', backbone=TINY_BACKBONE, sampling='per_batch', zero_dropout=0.1)
    assert run_search(tiny(tmp_path / 'straight', **options), progress=False)
    assert run_search(tiny(tmp_path / 'resumed', stop_after_steps=10, **options), progress=False) is None
    assert run_search(tiny(tmp_path / 'resumed', **options), resume=True, progress=False)
    _assert_same_checkpoints(tmp_path / 'straight', tmp_path / 'resumed')


def toy_cost(arch: dict) -> float:
    """A cheap cost of an architecture's indices, not linear in them: the surrogate's refits change it."""
    return float(sum((i + 1) ** 2 for i in arch.values()))


def test_search_with_a_refitting_cost_term_resumes_bit_for_bit(tmp_path):
    """The cost term's state (measured-architecture memo, refit counter, the surrogate's refitted weights and sample
    buffer) was not checkpointed: a resumed run refit on other samples (254 tensors differed; 262 with macs)."""
    cost = {'name': 'test_reliability_search:toy_cost', 'call_with': 'indices', 'target': 5.0, 'weight': 0.5,
            'anneal': 0.5, 'surrogate': {'samples': 12, 'refit_every': 2}}
    options = dict(space='mbconv', backbone=TINY_BACKBONE, sampling='per_batch', estimator='relax', cost=cost)
    assert run_search(tiny(tmp_path / 'straight', **options), progress=False)
    assert run_search(tiny(tmp_path / 'resumed', stop_after_steps=10, **options), progress=False) is None
    assert run_search(tiny(tmp_path / 'resumed', **options), resume=True, progress=False)
    _assert_same_checkpoints(tmp_path / 'straight', tmp_path / 'resumed')
    straight, resumed = (torch.load(p / CHECKPOINT, weights_only=True)['per_rank'][0]['cost']
                         for p in (tmp_path / 'straight', tmp_path / 'resumed'))
    assert straight['surrogate']['stats'] == resumed['surrogate']['stats'] and 'refit' in straight['surrogate']['stats']
    assert torch.equal(straight['memo_keys'], resumed['memo_keys'])
