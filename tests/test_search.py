"""search.py and the search loop end to end, on tiny supernets over the embedded digits data (CPU, seconds).

Covers: outputs of a real search (genotype the zoo builds and draws, probabilities, plots, provenance), bit-exact
resume after a mid-epoch stop (also for rloo and adapted REBAR with a leave-one-out baseline), the φ step scoring K
architectures on one batch, the run's threads and global batch, two processes under torchrun (gloo) ending identical,
the MBConv space, and bad input.
"""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

import unas_zoo  # noqa: F401  (registers the zoo's timm models)
from unas_zoo.genotypes import DartsGenotype, MBConvGenotype, load
from unas_zoo.search import estimators
from unas_zoo.search.config import (
    ESTIMATOR_NAMES, SearchConfig, SearchConfigError, config_from_dict, config_to_dict, load_config, per_process_batch)
from unas_zoo.search.distributions import DartsCellDistribution
from unas_zoo.search.loop import CHECKPOINT, FINAL_GENOTYPE, RESUME_MUTABLE, phi_step, run_search
from unas_zoo.search.objectives import Objective
from unas_zoo.search.supernets import DartsSupernet

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import search as search_cli  # noqa: E402

# 8x8 digits (their native size), a 3-cell C=4 supernet, large batches: 7 steps per epoch, one warm-up epoch; the
# paper's estimator and sampling (REBAR, one architecture per example), so that its resume is checked bit for bit.
TINY = dict(image_size=8, init_channels=4, layers=3, batch_size=96, val_fraction=0.5, epochs=2, warmup_epochs=1,
            estimator='rebar', sampling='per_example', device='cpu', log_every=1000)
TINY_BACKBONE = dict(stem_width=8, first_block_width=8, stage_widths=[8, 8, 16, 16, 16, 16],
                     stage_depths=[2, 2, 1, 1, 1, 1], head_width=32)


def _tiny(tmp: Path, **overrides) -> SearchConfig:
    return config_from_dict({**TINY, 'output': str(tmp), **overrides})


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / CHECKPOINT, weights_only=True)


def _genotype_without_run_details(path: Path) -> dict:
    """The genotype file less what may differ between two runs of the same search (time, folder, run options)."""
    data = yaml.safe_load(path.read_text())
    del data['provenance']['date']
    del data['metrics']['search_seconds']
    for key in RESUME_MUTABLE:
        del data['provenance']['config'][key]
    return data


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory) -> Path:
    """One uninterrupted tiny search, shared by the output checks and as the resume reference."""
    out = tmp_path_factory.mktemp('search') / 'run'
    assert run_search(_tiny(out), progress=False) == out / FINAL_GENOTYPE
    return out


def test_search_writes_a_genotype_the_zoo_builds_and_draws(tiny_run, tmp_path):
    path = tiny_run / FINAL_GENOTYPE
    genotype = load(path)
    assert isinstance(genotype, DartsGenotype)
    state = _state(tiny_run)
    assert state['finished'] and state['epoch'] == 2
    dist = DartsCellDistribution()
    dist.load_state_dict(state['dist'])
    assert any(p.abs().sum() > 0 for p in dist.parameters())          # φ was trained (zero-initialised)
    argmax = dist.to_genotype()                                        # the argmax, no post-search heuristic
    assert (genotype.normal, genotype.reduce) == (argmax.normal, argmax.reduce)
    provenance = genotype.provenance
    assert provenance['dataset'] == 'digits' and provenance['seed'] == 0 and provenance['estimator'] == 'rebar'
    assert config_from_dict(provenance['config']) == _tiny(tiny_run)
    final_probs = {k: [round(float(p), 6) for p in v.detach()] for k, v in dist.probs().items()}
    assert {k: list(v.values()) for k, v in provenance['probabilities'].items()} == final_probs
    assert 0.0 <= genotype.metrics['val_acc'] <= 1.0

    model = timm.create_model('darts_cell_cifar', genotype=str(path), num_classes=10, init_channels=4, layers=3)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    from unas_zoo.draw import draw
    drawn = draw(str(path), tmp_path / 'cell.svg')
    assert [p.name for p in drawn] == ['cell_normal.svg', 'cell_reduce.svg'] and all(p.stat().st_size for p in drawn)


def test_search_logs_every_epoch(tiny_run):
    epochs = sorted(p.name for p in (tiny_run / 'epochs').iterdir())
    assert epochs == ['genotype_epoch001.yaml', 'genotype_epoch002.yaml']
    history = json.loads((tiny_run / 'probabilities.json').read_text())
    assert [h['epoch'] for h in history['history']] == [0, 1, 2]
    # φ is frozen during the warm-up epoch and moves during the search epoch.
    uniform = history['history'][0]['probabilities']
    assert history['history'][1]['probabilities'] == uniform
    assert history['history'][2]['probabilities'] != uniform
    rows = (tiny_run / 'probabilities.csv').read_text().splitlines()
    assert rows[0] == 'epoch,variable,choice,probability'
    assert len(rows) == 1 + 3 * sum(len(v) for v in history['choices'].values())
    summary = (tiny_run / 'summary.csv').read_text().splitlines()
    header = summary[0].split(',')
    assert len(summary) == 3 and {'phase', 'w_loss', 'phi_loss', 'val_acc', 'entropy', 'grad_variance'} <= set(header)
    assert [r.split(',')[header.index('phase')] for r in summary[1:]] == ['warmup', 'search']
    assert (tiny_run / 'probabilities.png').stat().st_size > 1000
    assert yaml.safe_load((tiny_run / 'config.yaml').read_text()) == config_to_dict(_tiny(tiny_run))


def _assert_resumed_like(reference_dir: Path, out: Path, stop_after: int, step_in_epoch: int, **overrides) -> None:
    """Stop a run of ``_tiny(**overrides)`` after ``stop_after`` steps, resume it, compare with ``reference_dir``."""
    assert run_search(_tiny(out, stop_after_steps=stop_after, **overrides), progress=False) is None
    stopped = _state(out)
    assert (stopped['step_in_epoch'], stopped['finished']) == (step_in_epoch, False)
    assert not (out / FINAL_GENOTYPE).exists()
    # Resume through the command line: it reads the run's own config.yaml (stop_after_steps may change).
    assert search_cli.main(['--output', str(out), '--resume', '--stop-after-steps', '1000']) == 0
    resumed, reference = _state(out), _state(reference_dir)
    for key in ('dist', 'supernet'):
        assert reference[key].keys() == resumed[key].keys()
        for name, tensor in reference[key].items():
            assert torch.equal(tensor, resumed[key][name]), f'{key}.{name} differs after resume'
    for key in ('w_optimizer', 'phi_optimizer'):
        for pid, pstate in reference[key]['state'].items():
            for name, value in pstate.items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed[key]['state'][pid][name]))
    assert reference['per_rank'][0]['baseline'] == resumed['per_rank'][0]['baseline']
    controls = reference['per_rank'][0]['control'], resumed['per_rank'][0]['control']
    assert (controls[0] is None) == (controls[1] is None)
    if controls[0] is not None:
        assert torch.equal(controls[0]['eta_param'], controls[1]['eta_param'])
        assert controls[0]['optimizer']['state'].keys() == controls[1]['optimizer']['state'].keys()
        for pid, pstate in controls[0]['optimizer']['state'].items():
            for name, value in pstate.items():
                resumed_value = controls[1]['optimizer']['state'][pid][name]
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(resumed_value))
    assert _genotype_without_run_details(out / FINAL_GENOTYPE) == \
        _genotype_without_run_details(reference_dir / FINAL_GENOTYPE)


def test_resume_after_a_mid_epoch_stop_ends_bit_for_bit_like_an_uninterrupted_run(tiny_run, tmp_path):
    steps_per_epoch = 7
    _assert_resumed_like(tiny_run, tmp_path / 'stopped', steps_per_epoch + 4, 4)        # mid search epoch
    assert _state(tmp_path / 'stopped')['per_rank'][0]['control'] is None              # the paper's REBAR


# One search epoch of 7 steps (no warm-up): enough to move φ, cheap enough to run twice per estimator.
SHORT = dict(epochs=1, warmup_epochs=0)


@pytest.mark.parametrize('overrides, steps', [
    # rloo, one architecture per example; the global batch sets the per-process batch (96 at world size 1).
    (dict(estimator='rloo', sampling='per_example', batch_size=8, global_batch_size=96), 7),
    # rloo, K = 3 architectures scored on the same batch, with the batch-level generalization gap.
    (dict(estimator='rloo', sampling='per_batch', arch_samples=3, gen_gap='batch'), 7),
    # REBAR with a leave-one-out baseline over K = 2 architectures per batch and η adapted online (its double
    # backward is the costly one: 2 larger steps).
    (dict(estimator='rebar', sampling='per_batch', arch_samples=2, rebar_baseline='loo', rebar_adapt='eta',
          batch_size=240), 2),
], ids=['rloo_per_example', 'rloo_per_batch', 'rebar_loo_adapt_eta'])
def test_new_estimators_search_and_resume_bit_for_bit(tmp_path, overrides, steps):
    reference = tmp_path / 'reference'
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert run_search(_tiny(reference, **SHORT, **overrides, threads=1), progress=False) is not None
        assert torch.get_num_threads() == 2                  # the run's thread setting does not leak
    finally:
        torch.set_num_threads(before)
    state = _state(reference)
    assert state['phi_optimizer']['state'][0]['step'] == steps   # 719 train images: 7 batches of 96, 2 of 240
    summary = (reference / 'summary.csv').read_text().splitlines()
    row = dict(zip(summary[0].split(','), summary[1].split(',')))
    assert row['threads'] == '1' and float(row['grad_variance']) > 0
    if overrides['estimator'] == 'rloo' and overrides['sampling'] == 'per_batch':
        assert 1 <= float(row['distinct_archs']) <= 3
    if overrides.get('rebar_adapt') == 'eta':
        assert float(state['per_rank'][0]['control']['eta_param']) != 1.0 and 'eta' in row
    _assert_resumed_like(reference, tmp_path / 'stopped', steps // 2, steps // 2, **SHORT, **overrides, threads=1)


def test_phi_step_scores_k_architectures_on_the_same_batch():
    torch.manual_seed(0)
    supernet = DartsSupernet(10, init_channels=4, layers=3)
    dist = DartsCellDistribution()
    seen = []
    supernet.register_forward_pre_hook(lambda module, args: seen.append((args[0], args[1])))
    train = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    val = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    optimizer = torch.optim.Adam(dist.parameters(), lr=0.1)
    stats = phi_step(supernet, dist, train, val, optimizer, estimator='rloo', objective=Objective(),
                     arch_samples=3, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 3                                             # one supernet call per architecture
    for images, weights in seen:
        assert torch.equal(images, torch.cat([train[0], val[0]]))     # each on the whole train + validation batch
        assert all(w.dim() == 1 for w in weights.values())            # one architecture for the call
    assert stats['grad_variance'] > 0 and any(p.abs().sum() > 0 for p in dist.parameters())
    with pytest.raises(ValueError, match='arch_samples applies to one-architecture-per-batch'):
        phi_step(supernet, dist, train, val, optimizer, estimator='rloo', per_example=True, arch_samples=3)


def test_two_processes_with_torchrun_end_identical(tmp_path):
    config = tmp_path / 'tiny.yaml'
    config.write_text(yaml.safe_dump({**TINY, 'sampling': 'per_batch', 'save_rank_state': True}))
    out = tmp_path / 'ddp'
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
         str(REPO / 'search.py'), '--config', str(config), '--output', str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '2 process(es)' in proc.stdout
    ranks = [torch.load(out / f'rank{r}_final.pt', weights_only=True) for r in (0, 1)]
    for key in ('dist', 'supernet'):
        for name, tensor in ranks[0][key].items():
            if tensor.is_floating_point() and 'running' not in name:
                assert torch.equal(tensor, ranks[1][key][name]), f'rank 1 {key}.{name} differs from rank 0'
    state = _state(out)
    assert state['world_size'] == 2 and len(state['per_rank']) == 2
    # Each rank drew its own architectures: different sampling generators.
    assert not torch.equal(state['per_rank'][0]['rng']['arch_generator'], state['per_rank'][1]['rng']['arch_generator'])
    assert isinstance(load(out / FINAL_GENOTYPE), DartsGenotype)


def test_mbconv_space_search_builds_with_timm(tmp_path):
    out = tmp_path / 'mbconv'
    cfg = _tiny(out, space='mbconv', backbone=TINY_BACKBONE, sampling='per_batch', zero_dropout=0.1)
    path = run_search(cfg, progress=False)
    genotype = load(path)
    assert isinstance(genotype, MBConvGenotype) and len(genotype.layers) == 8
    model = timm.create_model('mbconv_net', genotype=str(path), num_classes=10)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_mbconv_space_search_with_a_cost_term_relax(tmp_path):
    """The latency issue's path: a non-differentiable cost (parameters here, cheap) estimated with RELAX."""
    out = tmp_path / 'cost'
    cost = {'name': 'params', 'target': 0.01, 'weight': 0.5, 'anneal': 0.5, 'surrogate': {'samples': 12}}
    cfg = _tiny(out, space='mbconv', backbone=TINY_BACKBONE, sampling='per_example', estimator='relax', cost=cost)
    path = run_search(cfg, progress=False)
    summary = (out / 'summary.csv').read_text().splitlines()
    header, search_row = summary[0].split(','), summary[2].split(',')
    assert {'cost', 'cost_weight', 'cost_cv_correlation'} <= set(header)
    assert float(search_row[header.index('cost')]) > 0          # the tiny nets exceed 0.01 M parameters
    assert list(out.glob('params_surrogate*'))                   # the fitted surrogate is kept with the run
    genotype = load(path)                                        # the result's own cost is reported with it
    model = timm.create_model('mbconv_net', genotype=str(path), num_classes=10)
    assert genotype.metrics['params_M'] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert 'params of the searched architecture' in (out / 'cost_summary.txt').read_text()
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


# ------------------------------------------------------------------------------------------------------ configs

def test_demo_config_file_is_the_embedded_default():
    assert load_config(REPO / 'hparams' / 'search_demo.yaml') == SearchConfig()
    assert search_cli.resolve_config(search_cli.build_parser().parse_args([])) == SearchConfig()


@pytest.mark.parametrize('name, dataset, epochs, warmup, layers, sampling', [
    ('search_cifar10.yaml', 'cifar10', 100, 15, 8, 'per_example'),
    ('search_cifar100.yaml', 'cifar100', 100, 15, 8, 'per_example'),
    ('search_imagenet.yaml', 'imagefolder', 20, 5, 14, 'per_batch'),
])
def test_paper_configs_carry_the_paper_settings(name, dataset, epochs, warmup, layers, sampling):
    cfg = load_config(REPO / 'hparams' / name)
    assert (cfg.dataset, cfg.epochs, cfg.warmup_epochs, cfg.layers, cfg.sampling) == (
        dataset, epochs, warmup, layers, sampling)
    assert (cfg.init_channels, cfg.estimator, cfg.objective, cfg.temperature) == (16, 'rebar', 'gen', 0.4)
    assert (cfg.gen_lambda, cfg.arch_lambda, cfg.grad_clip) == (0.5, 0.2, 5.0)
    assert (cfg.w_weight_decay, cfg.phi_weight_decay) == (3e-4, 1e-6)
    assert len(cfg.ops) == (5 if dataset == 'imagefolder' else 7)
    assert (cfg.rebar_baseline, cfg.rebar_adapt, cfg.gen_gap) == ('none', 'none', 'pair')   # REBAR exactly as the paper
    if dataset != 'imagefolder':                              # App. A.2: batch 124 on 4 V100s, at any process count
        assert [per_process_batch(cfg, n) for n in (1, 2, 4)] == [124, 62, 31]


def test_global_batch_size_is_split_over_the_processes():
    cfg = config_from_dict({'batch_size': 8, 'global_batch_size': 124})
    assert per_process_batch(cfg, 4) == 31 and per_process_batch(cfg, 1) == 124
    assert per_process_batch(config_from_dict({'batch_size': 8}), 4) == 8      # null: batch_size per process
    with pytest.raises(SearchConfigError, match=r'global_batch_size: 124 is not divisible by the number of processes '
                                                r'\(3\); choose a multiple of 3'):
        per_process_batch(cfg, 3)
    with pytest.raises(SearchConfigError, match='gives 1 example'):
        per_process_batch(config_from_dict({'global_batch_size': 4}), 4)


def test_config_names_agree_with_the_estimators():
    assert ESTIMATOR_NAMES == estimators.ESTIMATORS


def test_command_line_overrides_config_file(tmp_path):
    args = search_cli.build_parser().parse_args(
        ['--config', str(REPO / 'hparams' / 'search_cifar10.yaml'), '--epochs', '3', '--warmup-epochs', '1',
         '--no-augment', '--ops', 'skip_connect', 'sep_conv_3x3', '--cost', '{name: macs, target: 5}',
         '--space', 'mbconv'])
    cfg = search_cli.resolve_config(args)
    assert (cfg.epochs, cfg.augment, cfg.ops, cfg.dataset) == (3, False, ['skip_connect', 'sep_conv_3x3'], 'cifar10')
    assert cfg.cost == {'name': 'macs', 'target': 5}


@pytest.mark.parametrize('data, message', [
    ({'epoch': 3}, "unknown key(s) ['epoch']; valid keys are ["),
    ({'epochs': 'many'}, "epochs: expected an integer, got str 'many'"),
    ({'estimator': 'snas'}, "estimator: unknown value 'snas'; allowed values are ['reinforce', 'rloo', 'gumbel',"),
    ({'estimator': 'darts', 'sampling': 'per_example'}, "the 'darts' estimator uses one deterministic softmax"),
    ({'cost': {'name': 'latency', 'target': 5.0}}, "'latency' is measured on the child network, and the darts space"),
    ({'cost': {'name': 'macs', 'target': 5.0}, 'space': 'mbconv', 'estimator': 'gumbel'}, 'needs an unbiased'),
    ({'warmup_epochs': 9, 'epochs': 4}, 'warmup_epochs: must lie in 0..epochs (4), got 9'),
    ({'backbone': {'width': 3}}, "backbone: unknown key(s) ['width']; allowed keys are ['act', 'bn_eps'"),
    ({'backbone': {'stage_depths': [1, 2]}}, 'backbone.stage_depths: has 2 entries but stage_widths has 6'),
    ({'ops': ['sep_conv_3x3', 'conv_9x9']}, 'ops: expected distinct names from'),
    ({'estimator': 'rloo', 'arch_samples': 1}, 'arch_samples: rloo with sampling: per_batch needs arch_samples >= 2'),
    ({'rebar_baseline': 'loo', 'estimator': 'rebar', 'arch_samples': 1},
     'arch_samples: rebar_baseline: loo with sampling: per_batch needs'),
    ({'arch_samples': 0}, 'arch_samples: must be >= 1, got 0'),
    ({'rebar_baseline': 'loo', 'estimator': 'reinforce'}, "rebar_baseline: 'loo' applies to the rebar and relax"),
    ({'rebar_adapt': 'eta', 'estimator': 'rloo'}, "rebar_adapt: 'eta' applies to the rebar and relax estimators"),
    ({'rebar_adapt': 'tau', 'estimator': 'rebar'},
     "rebar_adapt: unknown value 'tau'; allowed values are ['none', 'eta', 'eta_temperature']"),
    ({'rebar_baseline': 'mean', 'estimator': 'rebar'},
     "rebar_baseline: unknown value 'mean'; allowed values are ['none', 'loo']"),
    ({'gen_gap': 'batch', 'sampling': 'per_example'}, "gen_gap: 'batch' is the gap of one architecture's batch"),
    ({'gen_gap': 'mean'}, "gen_gap: unknown value 'mean'; allowed values are ['pair', 'batch']"),
    ({'threads': 0}, 'threads: must be >= 1 or null, got 0'),
    ({'global_batch_size': 0}, 'global_batch_size: must be >= 1 or null, got 0'),
])
def test_config_rejects_bad_values(data, message):
    with pytest.raises(SearchConfigError) as err:
        config_from_dict(data, 'my.yaml')
    assert str(err.value).startswith('my.yaml: ') and message in str(err.value)


# ---------------------------------------------------------------------------------------------------- bad input

def _cli(capsys, *argv) -> tuple[int, str]:
    code = search_cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize('argv, message', [
    (['--config', 'no/such.yaml'], 'no/such.yaml: cannot read the config file'),
    (['--dataset', 'cifar10', '--data-dir', 'no/such/dir'], 'cifar10: no folder no/such/dir/cifar-10-batches-py'),
    (['--dataset', 'cifar10'], "Dataset 'cifar10' needs a data folder (--data-dir)"),
    (['--estimator', 'darts', '--sampling', 'per_example'], 'sampling:'),
    (['--space', 'darts', '--cost', '{name: latency, target: 3}'], 'the darts space has no latency model'),
    (['--space', 'mbconv', '--cost', '{name: bogus, target: 3}'], "unknown cost 'bogus'"),
    (['--resume'], '--resume needs --output'),
])
def test_bad_input_exits_with_one_clear_message(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = _cli(capsys, *argv)
    assert code == 2
    assert err.startswith('search.py: error: ') and message in err and 'Traceback' not in err
    assert not (tmp_path / 'output').exists()          # nothing was written


def test_unreadable_and_invalid_config_files(capsys, tmp_path):
    bad_yaml = tmp_path / 'bad.yaml'
    bad_yaml.write_text('epochs: [1,\n')
    code, err = _cli(capsys, '--config', str(bad_yaml))
    assert code == 2 and 'not valid YAML' in err
    unknown = tmp_path / 'unknown.yaml'
    unknown.write_text('epochs: 2\nlearning_rate: 0.1\n')
    code, err = _cli(capsys, '--config', str(unknown))
    assert code == 2 and "unknown key(s) ['learning_rate']; valid keys are [" in err and "'w_lr'" in err


def test_finished_run_is_never_overwritten(capsys, tiny_run, tmp_path):
    before = {p.name: p.read_bytes() for p in (tiny_run / FINAL_GENOTYPE, tiny_run / CHECKPOINT)}
    code, err = _cli(capsys, '--output', str(tiny_run), '--image-size', '8')
    assert code == 2 and 'already holds a search' in err and '--resume' in err
    code, err = _cli(capsys, '--output', str(tiny_run), '--resume', '--epochs', '5')
    assert code == 2 and f'--resume keeps the settings of {tiny_run / "config.yaml"}; these differ: --epochs 2 -> 5' in err
    assert search_cli.main(['--output', str(tiny_run), '--resume']) == 0     # finished: nothing to do
    assert {p.name: p.read_bytes() for p in (tiny_run / FINAL_GENOTYPE, tiny_run / CHECKPOINT)} == before


def test_command_line_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / 'search.py'), '--config', str(tmp_path / 'missing.yaml')],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f'search.py: error: {tmp_path / "missing.yaml"}: cannot read the config file (No such file or directory)']


def test_search_config_is_a_plain_dataclass():
    cfg = SearchConfig()
    assert dataclasses.replace(cfg, epochs=1).search_epochs == 1 - cfg.warmup_epochs
