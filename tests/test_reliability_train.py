"""train.py under faults: divergence, a busy run folder, OS errors on outputs, killed checkpoint writes, resume with
other settings, out-of-range values, unreadable checkpoints (issues 11 and 13).

Runs are in-process on timm's ``test_efficientnet`` (0.1M params) and 16x16 digits (11 steps per epoch); a
subprocess only where a process boundary is the point (exit code, a lock held by another process).
"""
import os
import subprocess
import sys
import textwrap
import time
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from timm.utils import CheckpointSaver
from timm.utils.checkpoint_saver import load_checkpoint_metadata

import unas_zoo.training as training
from unas_zoo._finite import NonFiniteError
from unas_zoo._io import LOCK_FILE, OutputLockedError
from unas_zoo.train_checkpoints import AtomicCheckpointSaver
from unas_zoo.training import TrainingError, parse_train_args, read_checkpoint_args, train, train_main
from unas_zoo.validation import validate, validate_parser
from _faults import disk_full

REPO = Path(__file__).resolve().parents[1]
TINY = ['--model', 'test_efficientnet', '--dataset', 'digits', '--img-size', '16', '--batch-size', '128',
        '--workers', '0', '--device', 'cpu', '--log-interval', '0', '--lr', '0.05']
STEPS_PER_EPOCH = 1438 // 128


def tiny(tmp_path, *extra) -> list[str]:
    return [*TINY, '--output', str(tmp_path), *map(str, extra)]


def run(tmp_path, *extra) -> dict:
    return train(parse_train_args(tiny(tmp_path, *extra)))


def cli(argv, capsys) -> tuple[int, str]:
    code = train_main(argv)
    return code, capsys.readouterr().err


def all_finite(checkpoint: Path) -> bool:
    state = load_checkpoint_metadata(str(checkpoint))['state_dict']
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


@pytest.fixture(scope='module')
def one_epoch(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp('train'), '--epochs', 1, '--experiment', 'run')


# ------------------------------------------------------------------------------------------------------ divergence

def test_nan_in_the_second_epoch_stops_and_keeps_the_first_checkpoint(tmp_path, monkeypatch):
    forward = training.AuxClassificationTask.forward
    calls = []

    def poisoned(self, images, target):
        result = forward(self, images, target)
        calls.append(1)
        if len(calls) == STEPS_PER_EPOCH + 3:  # epoch 2, step 3
            result['loss'] = result['loss'] * float('nan')
        return result

    monkeypatch.setattr(training.AuxClassificationTask, 'forward', poisoned)
    with pytest.raises(NonFiniteError) as info:
        run(tmp_path, '--epochs', 2, '--experiment', 'nan')
    last = tmp_path / 'nan' / 'last.pth.tar'
    message = str(info.value)
    assert message.startswith('epoch 2 step 3: the training loss is nan') and '\n' not in message
    assert f'last good checkpoint {last} (kept)' in message
    assert load_checkpoint_metadata(str(last))['epoch'] == 0 and all_finite(last)
    assert len((tmp_path / 'nan' / 'summary.csv').read_text().splitlines()) == 2  # header + epoch 1 only
    assert not (tmp_path / 'nan' / LOCK_FILE).exists()


def test_diverging_lr_on_the_command_line_exits_nonzero_without_best(tmp_path):
    proc = subprocess.run([sys.executable, 'train.py', *tiny(tmp_path, '--epochs', 2, '--lr', '1e30',
                                                             '--experiment', 'boom')],
                          cwd=REPO, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith('error: epoch 1 step ') and 'training loss is nan' in error
    assert 'no checkpoint written yet' in error and 'Traceback' not in proc.stderr
    assert 'best' not in proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / 'boom').iterdir()) == ['args.yaml']


# --------------------------------------------------------------------------------------------------------- the lock

def test_run_folder_in_use_by_another_process_is_refused(tmp_path):
    folder = tmp_path / 'busy'
    holder = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f'''
        import sys, time
        from unas_zoo._io import output_lock
        with output_lock({str(folder)!r}):
            print('locked', flush=True)
            time.sleep(60)
        ''')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        with pytest.raises(OutputLockedError, match=rf'{folder} is in use by process {holder.pid} '):
            run(tmp_path, '--epochs', 1, '--experiment', 'busy')
        assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # Killed holder: its lock file stays behind, is stale, and the next run takes it over (and cleans up).
    assert (folder / LOCK_FILE).read_text().strip() == str(holder.pid)
    result = run(tmp_path, '--epochs', 1, '--experiment', 'busy')
    assert Path(result['checkpoint']).is_file() and not (folder / LOCK_FILE).exists()


def test_stale_temp_files_of_dead_processes_are_removed_at_the_next_start(one_epoch, tmp_path):
    folder = Path(one_epoch['output_dir'])
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    stale = folder / f'.last.pth.tmp{int(dead.stdout)}.tar'
    stale.write_bytes(b'partial')
    foreign = folder / '.notes.tmp12.txt.bak'  # not one of our temp names
    foreign.write_bytes(b'keep')
    train(parse_train_args(tiny(tmp_path, '--epochs', 1, '--resume', one_epoch['checkpoint'])))
    assert not stale.exists() and foreign.exists()


# ------------------------------------------------------------------------------------------------------- OS errors

def test_read_only_output_folder_at_start_is_one_line(read_only_dir, capsys):
    read_only = read_only_dir
    code, err = cli([*TINY, '--epochs', '1', '--output', str(read_only), '--experiment', 'x'], capsys)
    assert code == 2 and err == f'error: {read_only / "x"}: Read-only file system\n'


def test_output_under_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / 'file'
    blocker.write_text('not a folder')
    code, err = cli([*TINY, '--epochs', '1', '--output', str(blocker), '--experiment', 'x'], capsys)
    assert code == 2 and err.startswith(f'error: {blocker / "x"}: ') and err.count('\n') == 1


def test_full_disk_mid_run_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    save = torch.save
    calls = []

    def fill_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:  # the checkpoint of epoch 2
            f.write(b'\0' * 1000)
            disk_full()
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', fill_disk)
    code, err = cli([*TINY, '--epochs', '2', '--output', str(tmp_path), '--experiment', 'full'], capsys)
    folder = tmp_path / 'full'
    assert code == 2 and err == f'error: {folder / "tmp.pth.tar"}: No space left on device\n'
    assert load_checkpoint_metadata(str(folder / 'last.pth.tar'))['epoch'] == 0
    assert not [p.name for p in folder.iterdir() if p.name.startswith('.')], 'no partial temp file left'


# ---------------------------------------------------------------------------------------------- atomic checkpoints

class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (not even except-Exception handlers)."""


@pytest.mark.parametrize('saver_class', [AtomicCheckpointSaver, CheckpointSaver], ids=['ours', 'timm'])
def test_kill_at_any_file_operation_leaves_a_loadable_last_checkpoint(tmp_path, monkeypatch, saver_class):
    """Kill the saver at each rename/link/unlink of an update; ours always leaves a last.pth.tar, timm's does not."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for kill_at in range(8):
        folder = tmp_path / f'{saver_class.__name__}{kill_at}'
        folder.mkdir()
        saver = saver_class(model=model, optimizer=optimizer, args=Namespace(model='linear'),
                            checkpoint_dir=str(folder), recovery_dir=str(folder), max_history=2)
        saver.save_checkpoint(0, metric=1.0)
        operations = []

        def operation(real):
            def wrapped(*args, **kwargs):
                operations.append(real.__name__)
                if len(operations) == kill_at + 1:
                    raise _Killed
                return real(*args, **kwargs)
            return wrapped

        with monkeypatch.context() as patch:
            for name in ('replace', 'link', 'unlink', 'remove', 'rename'):
                patch.setattr(os, name, operation(getattr(os, name)))
            try:
                saver.save_checkpoint(1, metric=2.0)  # better: replaces last, adds checkpoint-1, updates best
            except _Killed:
                pass
        last = folder / 'last.pth.tar'
        if not last.is_file():
            losses.append(kill_at)
        else:
            assert load_checkpoint_metadata(str(last))['epoch'] in (0, 1)
    if saver_class is AtomicCheckpointSaver:
        assert losses == []
    else:
        assert losses, 'timm deletes last.pth.tar before renaming the new one (the fault the test must catch)'


# --------------------------------------------------------------------------------------------------------- resume

def test_resume_with_the_same_command_is_accepted(one_epoch, tmp_path):
    result = train(parse_train_args(tiny(tmp_path, '--epochs', 1, '--experiment', 'run', '--resume',
                                         one_epoch['checkpoint'])))
    assert result['checkpoint'] == one_epoch['checkpoint']


@pytest.mark.parametrize('change,shown', [
    (['--lr', '5'], '--lr 0.05 -> 5.0'),
    (['--opt', 'adamw'], "--opt 'sgd' -> 'adamw'"),  # was KeyError: 'step' from the optimizer state
    (['--epochs', '3'], '--epochs 1 -> 3'),
])
def test_resume_with_changed_settings_is_refused(one_epoch, tmp_path, change, shown):
    before = Path(one_epoch['checkpoint']).read_bytes()
    args_yaml = (Path(one_epoch['output_dir']) / 'args.yaml').read_text()
    with pytest.raises(TrainingError) as info:
        train(parse_train_args(tiny(tmp_path, '--epochs', 1, *change, '--resume', one_epoch['checkpoint'])))
    message = str(info.value)
    assert f'--resume {one_epoch["checkpoint"]}: the run was trained with other settings ({shown}' in message
    assert Path(one_epoch['checkpoint']).read_bytes() == before
    assert (Path(one_epoch['output_dir']) / 'args.yaml').read_text() == args_yaml


# ---------------------------------------------------------------------------------------------------------- values

@pytest.mark.parametrize('option,value,expected', [
    ('--lr', 'nan', '--lr: nan is not a finite number'),
    ('--lr', '-1', '--lr: -1.0 is out of range; allowed >= 0'),
    ('--aux-weight', 'inf', '--aux-weight: inf is not a finite number'),
    ('--clip-grad', 'nan', '--clip-grad: nan is not a finite number'),
    ('--drop-path', '5', '--drop-path: 5.0 is out of range; allowed 0..1'),
    ('--cutout', '-3', '--cutout: -3 is out of range; allowed >= 0'),
    ('--epochs', '0', '--epochs: 0 is out of range; allowed >= 1'),
    ('--batch-size', '0', '--batch-size: 0 is out of range; allowed >= 1'),
])
def test_bad_values_are_refused_in_one_line(option, value, expected):
    with pytest.raises(TrainingError) as info:
        parse_train_args([*TINY, option, value])
    assert str(info.value) == expected


# ------------------------------------------------------------------------------------------ unreadable checkpoints

@pytest.mark.parametrize('damage,expected', [
    (lambda data: data[:len(data) // 2], 'truncated or damaged'),
    (lambda data: b'not a checkpoint at all', 'cannot be read as a torch or safetensors file'),
])
def test_damaged_checkpoint_says_what_is_wrong(one_epoch, tmp_path, damage, expected):
    bad = tmp_path / 'bad.pth.tar'
    bad.write_bytes(damage(Path(one_epoch['checkpoint']).read_bytes()))
    with pytest.raises(TrainingError, match=rf'^checkpoint {bad}: {expected}'):
        read_checkpoint_args(bad)
    args = validate_parser().parse_args(['--checkpoint', str(bad), '--device', 'cpu'])
    with pytest.raises(TrainingError, match=expected):  # was: 'no model given'
        validate(args)


def test_checkpoint_with_pickled_objects_is_refused_by_validate(tmp_path):
    bad = tmp_path / 'pickled.pth.tar'
    torch.save({'state_dict': {}, 'args': time.struct_time((2020,) * 9)}, bad)
    args = validate_parser().parse_args(['--checkpoint', str(bad), '--device', 'cpu'])
    with pytest.raises(TrainingError, match=r'refused: it holds pickled Python objects .*struct_time'):
        validate(args)


def test_hub_push_without_network_is_one_line_without_the_token(monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    from unas_zoo import hub

    def offline(self, *args, **kwargs):
        raise HTTPError('[Errno -2] Name or service not known')

    monkeypatch.setenv('HF_TOKEN', 'hf_secret_token_123')
    monkeypatch.setattr(HfApi, 'create_repo', offline)
    code = hub.main(['push', '--model', 'test_efficientnet', '--repo-id', 'org/name'])
    out = capsys.readouterr()
    assert code == 2 and out.err == 'error: push to org/name failed (HTTPError: [Errno -2] Name or service not ' \
                                    'known)\n'
    assert 'hf_secret_token_123' not in out.out + out.err
