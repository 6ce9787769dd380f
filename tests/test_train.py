"""train.py: the demo recipe on real digits, a searched-genotype model, exact resume, configs, bad input.

Training runs in-process (``train(parse_train_args(...))``); the CLI runs as a subprocess only where its exit code and
one-line message are the point.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from unas_zoo.data import DatasetError
from unas_zoo.genotypes import load as load_genotype
from unas_zoo.training import (
    AuxClassificationTask, Cutout, TrainingError, create_model, parse_train_args, read_checkpoint_args,
    set_drop_path, train,
)
from unas_zoo.validation import validate, validate_parser

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / 'hparams' / 'train_demo.yaml')
# A searched-style network small enough for CPU tests: 4 channels, 3 cells (reductions at cells 1 and 2).
SMALL = ['init_channels=4', 'layers=3']



def run_train(*argv):
    return train(parse_train_args([str(a) for a in argv]))


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The demo config exactly as shipped: the UNAS CIFAR-10 cell (C=8, 5 cells) on digits."""
    out = tmp_path_factory.mktemp('train')
    return run_train('-c', DEMO, '--output', out, '--experiment', 'demo')


@pytest.fixture
def searched_genotype(tmp_path):
    """A genotype YAML as search.py writes one: a darts genotype with provenance, outside the zoo."""
    data = load_genotype('darts_v2').to_dict()
    data.update(name='my_search', provenance={'estimator': 'rebar', 'dataset': 'digits', 'seed': 3})
    path = tmp_path / 'searched.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_demo_trains_a_zoo_model_far_above_chance(demo):
    out = Path(demo['output_dir'])
    assert demo['eval']['top1'] > 70.0  # chance is 10%
    rows = (out / 'summary.csv').read_text().strip().splitlines()
    assert len(rows) == 1 + 4  # header + one line per epoch
    stored = read_checkpoint_args(demo['checkpoint'])
    assert stored['model'] == 'darts_cell_cifar' and stored['num_classes'] == 10
    assert stored['model_kwargs']['genotype']['name'] == 'unas_cifar10'  # the genotype itself, not a name or path
    assert stored['aux_weight'] == 0.4


def test_validate_cli_reads_the_checkpoint_back(demo, tmp_path):
    results_file = tmp_path / 'results.json'
    proc = subprocess.run(
        [sys.executable, 'validate.py', '--checkpoint', demo['checkpoint'], '--dataset', 'digits', '--workers', '0',
         '--device', 'cpu', '--results-file', str(results_file)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(results_file.read_text())
    assert results['top1'] == pytest.approx(demo['eval']['top1'], abs=1e-9)
    assert results['loss'] == pytest.approx(demo['eval']['loss'], abs=1e-4)
    assert results['num_images'] == 359 and results['mobile_setting'] is True
    assert 'top-1' in proc.stdout and 'MACs' in proc.stdout


def test_searched_genotype_trains_and_resumes_exactly(tmp_path, searched_genotype):
    common = ['-c', DEMO, '--model-kwargs', f'genotype={searched_genotype}', *SMALL, '--epochs', 2,
              '--output', tmp_path]
    full = run_train(*common, '--experiment', 'full')
    # Resume from the end of the first epoch, in a fresh folder, and finish the second epoch.
    resumed_dir = tmp_path / 'resumed'
    resumed_dir.mkdir()
    shutil.copyfile(Path(full['output_dir']) / 'checkpoint-0.pth.tar', resumed_dir / 'last.pth.tar')
    resumed = run_train(*common, '--resume', resumed_dir / 'last.pth.tar')
    assert resumed['output_dir'] == str(resumed_dir)
    a = torch.load(full['checkpoint'], weights_only=False)
    b = torch.load(resumed['checkpoint'], weights_only=False)
    assert a['epoch'] == b['epoch'] == 1
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key in a['state_dict']:
        assert torch.equal(a['state_dict'][key], b['state_dict'][key]), key
    assert resumed['eval'] == full['eval']

    # The checkpoint carries the genotype: validation needs neither the YAML file nor --model.
    searched_genotype.unlink()
    args = validate_parser().parse_args(
        ['--checkpoint', resumed['checkpoint'], '--dataset', 'digits', '--workers', '0', '--device', 'cpu'])
    results = validate(args)
    assert results['model'] == 'darts_cell_cifar'
    assert results['top1'] == pytest.approx(full['eval']['top1'], abs=1e-9)


REFERENCE = {  # shared/reference/architectures.md, "Evaluation (retraining) settings"
    'train_cifar10.yaml': dict(model='unas_cifar10', dataset='cifar10', epochs=600, opt='sgd', momentum=0.9, lr=0.05,
                               sched='cosine', min_lr=0.0, weight_decay=3e-4, batch_size=128, cutout=16,
                               drop_path=0.2, aux_weight=0.4, clip_grad=5.0),
    'train_cifar100.yaml': dict(model='unas_cifar100', dataset='cifar100', epochs=600, opt='sgd', momentum=0.9,
                                lr=0.05, sched='cosine', min_lr=0.0, weight_decay=3e-4, batch_size=128, cutout=16,
                                drop_path=0.3, aux_weight=0.4, clip_grad=5.0),
    'train_imagenet_darts.yaml': dict(model='unas_imagenet', dataset='imagefolder', epochs=250, warmup_epochs=5,
                                      opt='sgd', momentum=0.9, lr=None, lr_base=0.1, lr_base_size=128,
                                      weight_decay=3e-5, smoothing=0.1, aux_weight=0.4, color_jitter=0.4),
    'train_imagenet_mbconv.yaml': dict(model='unas_mbconv_gpu', dataset='imagefolder', epochs=300, warmup_epochs=5,
                                       opt='sgd', momentum=0.9, lr=None, lr_base=0.2, lr_base_size=512,
                                       weight_decay=5e-5, smoothing=0.1, aux_weight=0.0),
}


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_paper_recipes_match_the_reference(name):
    args = parse_train_args(['-c', str(REPO / 'hparams' / name)])
    for key, value in REFERENCE[name].items():
        assert getattr(args, key) == value, key
    # The recipe's model accepts what the recipe asks of it (auxiliary head, drop-path).
    model = create_model(args.model, aux_logits=args.aux_weight > 0, drop_path_rate=args.drop_path)
    if args.aux_weight > 0:
        assert model.aux_head is not None


def test_command_line_overrides_config_and_merges_model_kwargs():
    args = parse_train_args(['-c', DEMO, '--epochs', '1', '--model-kwargs', 'layers=3'])
    assert args.epochs == 1 and args.dataset == 'digits'
    assert args.model_kwargs == {'genotype': 'unas_cifar10', 'init_channels': 8, 'layers': 3}


def test_unknown_config_key_lists_valid_keys(tmp_path):
    config = tmp_path / 'bad.yaml'
    config.write_text('model: unas_cifar10\nlearning_rate: 0.1\n')
    with pytest.raises(TrainingError) as info:
        parse_train_args(['-c', str(config)])
    assert 'learning_rate' in str(info.value) and 'weight_decay' in str(info.value)
    config.write_text('model: unas_cifar10\nepochs: many\n')
    with pytest.raises(TrainingError, match='epochs'):
        parse_train_args(['-c', str(config)])


def test_cli_bad_input_is_one_line_and_exit_code_2(tmp_path):
    config = tmp_path / 'bad.yaml'
    config.write_text('model: unas_cifar10\ndrop_path_prob: 0.2\n')
    proc = subprocess.run([sys.executable, 'train.py', '-c', str(config), '--output', str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count('\n') == 1 and 'drop_path_prob' in proc.stderr and 'Traceback' not in proc.stderr
    assert list(tmp_path.iterdir()) == [config]


def test_unknown_model_suggests_close_names(tmp_path):
    with pytest.raises(TrainingError, match='did you mean.*unas_cifar10'):
        run_train('-c', DEMO, '--model', 'unas_cifar_10', '--output', tmp_path)
    assert not any(tmp_path.iterdir())


def test_missing_dataset_and_model_without_aux_head(tmp_path):
    with pytest.raises(DatasetError, match='--download'):
        run_train('-c', DEMO, '--dataset', 'cifar10', '--data-dir', tmp_path / 'nothing', '--output', tmp_path)
    with pytest.raises(TrainingError, match='auxiliary head'):
        create_model('unas_mbconv_gpu', aux_logits=True)
    assert not (tmp_path / 'nothing').exists()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'last.pth.tar').write_bytes(b'earlier run')
    with pytest.raises(TrainingError, match='--resume'):
        run_train('-c', DEMO, '--output', tmp_path, '--experiment', 'run')
    assert (run / 'last.pth.tar').read_bytes() == b'earlier run'


def test_resume_from_another_architecture_names_the_keys(tmp_path, searched_genotype):
    model = create_model('darts_cell_cifar', num_classes=10, model_kwargs={'genotype': str(searched_genotype),
                                                                           'init_channels': 4, 'layers': 3})
    checkpoint = tmp_path / 'other.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 0}, checkpoint)
    with pytest.raises(TrainingError, match='missing keys .*unexpected keys'):
        run_train('-c', DEMO, '--resume', checkpoint)


def test_cutout_zeroes_one_square():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    out = Cutout(16)(img)
    zero = (out == 0).all(0)
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert 0 < zero.sum() <= 16 * 16 and zero.sum() == len(rows) * len(cols)
    assert img.eq(1).all()  # the input is left alone


def test_aux_task_adds_weighted_aux_loss_and_drop_path_ramps():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.aux = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
            self.drop_path_rate = 0.0

        def forward(self, x):
            return (self.fc(x), self.aux(x)) if self.training else self.fc(x)

    model = TwoHeads()
    task = AuxClassificationTask(model, aux_weight=0.4, verbose=False)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    result = task(x, y)
    ce = torch.nn.functional.cross_entropy
    assert torch.allclose(result['loss'], ce(model.fc(x), y) + 0.4 * ce(model.aux(x), y))
    assert [set_drop_path(model, 0.2, e, 4) for e in range(4)] == [0.0, 0.05, 0.1, 0.15000000000000002]
    assert set_drop_path(torch.nn.Linear(2, 2), 0.2, 1, 4) is None  # models without the attribute are left alone

