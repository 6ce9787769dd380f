"""validate.py: complexity without data, accuracy with data, results files, and refusals of bad input."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unas_zoo.complexity import complexity
from unas_zoo.training import TrainingError, create_model, load_weights
from unas_zoo.validation import validate_main, write_results

REPO = Path(__file__).resolve().parents[1]
SMALL = {'genotype': 'unas_cifar10', 'init_channels': 4, 'layers': 3}



@pytest.fixture
def small_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model('darts_cell_cifar', num_classes=10, model_kwargs=SMALL)
    path = tmp_path / 'small.pth'
    torch.save(model.state_dict(), path)
    return path, model


def test_complexity_only_without_a_dataset(tmp_path, capsys):
    results_file = tmp_path / 'unas_cifar10.csv'
    assert validate_main(['--model', 'unas_cifar10', '--results-file', str(results_file)]) == 0
    out = capsys.readouterr().out
    assert 'mobile setting (< 600M MACs): yes' in out and 'top-1' not in out
    with results_file.open(newline='') as f:
        (values,) = list(csv.DictReader(f))
    counts = complexity(create_model('unas_cifar10'))
    assert int(values['params']) == counts['params'] and int(values['macs']) == counts['macs']
    assert int(values['fvcore_total']) == counts['fvcore_total'] and values['mobile_setting'] == 'True'


def test_accuracy_on_a_split_matches_a_manual_evaluation(tmp_path, small_checkpoint):
    path, model = small_checkpoint
    results_file = tmp_path / 'r.json'
    argv = ['--model', 'darts_cell_cifar', '--model-kwargs', *[f'{k}={v}' for k, v in SMALL.items()],
            '--checkpoint', str(path), '--dataset', 'digits', '--workers', '0', '--device', 'cpu',
            '--results-file', str(results_file)]
    assert validate_main(argv) == 0
    results = json.loads(results_file.read_text())

    from unas_zoo.data import create_dataset, dataset_info
    from torchvision import transforms as T
    info = dataset_info('digits')
    data = create_dataset('digits', split='test', transform=T.Compose([T.ToTensor(), T.Normalize(info['mean'],
                                                                                                  info['std'])]))
    images = torch.stack([img for img, _ in data])
    labels = torch.tensor(data.targets)
    with torch.no_grad():
        logits = model.eval()(images)
    assert results['num_images'] == len(data)
    assert results['top1'] == pytest.approx(100.0 * (logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    top5 = logits.topk(5, 1).indices.eq(labels[:, None]).any(1).float().mean().item()
    assert results['top5'] == pytest.approx(100.0 * top5, abs=1e-6)
    assert results['loss'] == pytest.approx(torch.nn.functional.cross_entropy(logits, labels).item(), rel=1e-4)


def test_checkpoint_of_another_architecture_names_the_keys(small_checkpoint):
    path, _ = small_checkpoint
    other = create_model('darts_cell_cifar', num_classes=10, model_kwargs={**SMALL, 'genotype': 'darts_v2'})
    with pytest.raises(TrainingError) as info:
        load_weights(other, path)
    message = str(info.value)
    assert str(path) in message and 'missing keys' in message and 'unexpected keys' in message
    assert 'cells.0.' in message  # names actual keys


class _Marker:
    """Unpickling this would run code (touch a file): weights_only loading must refuse before that."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


def test_checkpoint_with_pickled_code_is_refused(tmp_path, small_checkpoint):
    _, model = small_checkpoint
    marker = tmp_path / 'code_ran'
    evil = tmp_path / 'evil.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'payload': _Marker(marker)}, evil)
    with pytest.raises(TrainingError, match='refused.*weights_only'):
        load_weights(model, evil)
    assert not marker.exists()


def _cli(*argv):
    return subprocess.run([sys.executable, 'validate.py', *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})


def test_cli_unknown_model_and_untouched_results_file(tmp_path):
    results_file = tmp_path / 'results.json'
    results_file.write_text('{"earlier": true}')
    proc = _cli('--model', 'unas_cifar1O', '--results-file', results_file)
    assert proc.returncode == 2
    assert 'did you mean' in proc.stderr and 'unas_cifar10' in proc.stderr and 'Traceback' not in proc.stderr
    assert results_file.read_text() == '{"earlier": true}'


def test_bad_inputs_exit_2_with_one_line(tmp_path, small_checkpoint, capsys):
    path, _ = small_checkpoint
    cases = [
        (['--model', 'unas_cifar10', '--dataset', 'imagefolder', '--data-dir', str(tmp_path / 'none')], 'val'),
        (['--model', 'unas_cifar10', '--dataset', 'svhn'], 'allowed: digits'),
        (['--model', 'darts_cell_cifar', '--checkpoint', str(tmp_path / 'missing.pth')], 'no such file'),
        (['--model', 'unas_cifar10', '--results-file', str(tmp_path / 'r.txt')], '.json or .csv'),
        (['--checkpoint', str(path)], 'no model given'),
        (['--model', 'local-dir:' + str(tmp_path)], 'config.json'),
    ]
    for argv, expected in cases:
        assert validate_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith('error: ') and err.count('\n') == 1 and expected in err, (argv, err)
    assert not (tmp_path / 'r.txt').exists()


def test_write_results_is_atomic_and_checks_the_suffix(tmp_path):
    target = tmp_path / 'r.json'
    write_results({'top1': 1.5, 'input_size': [3, 32, 32]}, target)
    assert json.loads(target.read_text()) == {'top1': 1.5, 'input_size': [3, 32, 32]}
    with pytest.raises(TrainingError):
        write_results({'top1': 2.0}, tmp_path / 'r.yaml')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['r.json']


def test_latency_is_reported_when_asked(tmp_path):
    results_file = tmp_path / 'latency.json'
    argv = ['--model', 'darts_cell_cifar', '--model-kwargs', 'init_channels=4', 'layers=3', '--num-classes', '10',
            '--img-size', '32', '--latency', '--latency-batch-size', '2', '--latency-repeats', '3', '--device', 'cpu',
            '--results-file', str(results_file)]
    assert validate_main(argv) == 0
    results = json.loads(results_file.read_text())
    assert results['latency_ms'] > 0 and results['latency_iqr_ms'] >= 0
    assert results['latency_batch_size'] == 2 and results['latency_device'].startswith('cpu')
    assert results['latency_runtime'] == 'torch'


def test_onnxruntime_latency_is_reported_when_asked(tmp_path, capsys):
    results_file = tmp_path / 'latency.json'
    argv = ['--model', 'darts_cell_cifar', '--model-kwargs', 'init_channels=4', 'layers=3', '--num-classes', '10',
            '--img-size', '32', '--latency', 'onnxruntime', '--latency-batch-size', '2', '--latency-repeats', '3',
            '--device', 'cpu', '--results-file', str(results_file)]
    assert validate_main(argv) == 0
    results = json.loads(results_file.read_text())
    assert results['latency_runtime'] == 'onnxruntime' and results['latency_ms'] > 0
    assert 'onnxruntime latency at batch 2 on cpu' in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # argparse names the allowed runtimes
        validate_main(['--model', 'darts_cell_cifar', '--latency', 'tvm'])
    assert exit_info.value.code == 2 and "choose from 'torch', 'onnxruntime'" in capsys.readouterr().err
