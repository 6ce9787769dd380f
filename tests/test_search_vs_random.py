"""The search-quality instrument (bench/search_vs_random.py) and its library pieces, on micro settings."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from unas_zoo.genotypes import CIFAR_SEARCH_OPS
from unas_zoo.search.distributions import DartsCellDistribution
from unas_zoo.search.evaluation import (
    DigitsTask, TrainProtocol, kendall_tau, mean_std, percentile, random_genotypes, train_and_test)

BENCH = Path(__file__).resolve().parents[1] / 'bench' / 'search_vs_random.py'


def _bench():
    spec = importlib.util.spec_from_file_location('search_vs_random', BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_random_genotypes_are_seeded_and_uniform():
    a, b = random_genotypes(5, seed=3), random_genotypes(5, seed=3)
    assert [g.to_dict()['normal'] for g in a] == [g.to_dict()['normal'] for g in b]
    assert a[0].to_dict()['normal'] != random_genotypes(1, seed=4)[0].to_dict()['normal']
    # Uniform: every op of every branch equally likely (chi-square over 400 cells x 16 branches, 7 ops).
    dist = DartsCellDistribution()
    counts = Counter()
    for genotype in random_genotypes(400, seed=0):
        counts.update(idx for name, idx in dist.encode(genotype).items() if '_op' in name)
    total = sum(counts.values())
    expected = total / len(CIFAR_SEARCH_OPS)
    chi2 = sum((counts[k] - expected) ** 2 / expected for k in range(len(CIFAR_SEARCH_OPS)))
    assert chi2 < 22.5, counts  # p = 0.001 at 6 degrees of freedom
    # Node 3 reads inputs 0..4 uniformly too.
    inputs = Counter(dist.encode(g)['normal_node3_input0'] for g in random_genotypes(500, seed=1))
    assert set(inputs) == set(range(5)) and min(inputs.values()) > 60


def test_percentile_and_kendall_tau_on_known_inputs():
    population = [10.0, 20.0, 30.0, 40.0]
    assert percentile(25.0, population) == 50.0
    assert percentile(50.0, population) == 100.0
    assert percentile(5.0, population) == 0.0
    assert percentile(20.0, population) == 37.5  # one below, one tie
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 5 concordant, 1 discordant pair of 6: (5 - 1) / 6; and a tie against scipy's tau-b.
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    scipy_stats = pytest.importorskip('scipy.stats')
    a, b = [1, 2, 2, 3, 5, 4], [2, 1, 3, 3, 6, 4]
    assert kendall_tau(a, b) == pytest.approx(scipy_stats.kendalltau(a, b).statistic)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert mean_std([1.0, 3.0]) == pytest.approx((2.0, math.sqrt(2)))


def test_task_is_deterministic_and_label_noise_touches_training_labels_only():
    clean = DigitsTask(image_size=8, train_images=200).tensors()
    noisy = DigitsTask(image_size=8, train_images=200, label_noise=0.3).tensors()
    assert clean[0].shape == (200, 3, 8, 8) and clean[2].shape == (359, 3, 8, 8)
    assert torch.equal(clean[0], noisy[0]) and torch.equal(clean[3], noisy[3])
    changed = float((clean[1] != noisy[1]).float().mean())
    assert 0.2 < changed < 0.4
    assert torch.equal(noisy[1], DigitsTask(image_size=8, train_images=200, label_noise=0.3).tensors()[1])
    with pytest.raises(ValueError, match='train_images'):
        DigitsTask(train_images=5).tensors()


def test_train_and_test_is_seeded():
    tensors = DigitsTask(image_size=8, train_images=64).tensors()
    protocol = TrainProtocol(epochs=1, batch_size=32, init_channels=4, layers=3, opt='adam', lr=3e-3)
    genotype = random_genotypes(1, seed=0)[0]
    first = train_and_test(genotype, tensors, protocol, seed=0)
    assert 0.0 <= first <= 100.0
    assert train_and_test(genotype, tensors, protocol, seed=0) == first


def test_micro_end_to_end(tmp_path):
    bench = _bench()
    results_file = tmp_path / 'r.json'
    bench.main(['--random-cells', '2', '--train-seeds', '2', '--search-seeds', '1',
                '--configs', 'rloo4_gen', '--search-epochs', '1', '--warmup-epochs', '0', '--train-epochs', '1',
                '--train-images', '64', '--channels', '4', '--layers', '3',
                '--results-file', str(results_file)])
    results = json.loads(results_file.read_text())
    assert set(results) == {'random', 'searched', 'summary', 'kendall_tau', 'spread', 'seed_noise'}
    assert len(results['random']) == 2 and {'genotype', 'accuracy'} <= set(results['random'][0])
    row = results['searched'][0]
    assert {'config', 'seed', 'accuracy', 'percentile', 'search_seconds', 'genotype'} <= set(row)
    assert row['config'] == 'rloo4_gen' and row['genotype']['space'] == 'darts'
    assert set(results['summary']['rloo4_gen']) >= {'mean', 'std', 'mean_percentile'}
    assert results['random'][0]['supernet_accuracy'] is not None
    assert results_file.with_suffix('.png').stat().st_size > 0


def test_running_bn_normalises_subsets_with_running_statistics():
    from torch import nn
    from unas_zoo.search.supernets import _run, _Term

    torch.manual_seed(0)
    op = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False))
    x = torch.randn(8, 3, 5, 5)
    index = torch.tensor([1, 6])
    term = _Term(choice=0, weight=None, index=index)
    out = _run(op, x, term, None, subset_bn='running')
    bn = op[1]
    h = op[0](x[index]).detach()
    assert torch.allclose(bn.running_mean, 0.1 * h.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(bn.running_var, 0.9 + 0.1 * h.var((0, 2, 3), correction=1), atol=1e-6)
    expected = (h - bn.running_mean.view(1, -1, 1, 1)) / (bn.running_var.view(1, -1, 1, 1) + bn.eps).sqrt()
    assert torch.allclose(out[index], expected, atol=1e-5)
    assert out[[0, 2, 3, 4, 5, 7]].abs().sum() == 0
    assert 'forward' not in vars(bn)  # the override is gone after the subset ran
    subset = _run(op, x, term, None, subset_bn='subset')[index]  # the subset's own statistics: zero mean per channel
    assert subset.mean((0, 2, 3)).abs().max() < 1e-5 and out[index].mean((0, 2, 3)).abs().max() > 1e-2


def test_subset_bn_is_a_validated_config_key_and_leaves_per_batch_unchanged():
    from unas_zoo.search.config import config_from_dict
    from unas_zoo.search.supernets import DartsSupernet

    with pytest.raises(ValueError, match="subset_bn: unknown value 'batch'; allowed values are"):
        config_from_dict({'subset_bn': 'batch'})
    dist = DartsCellDistribution()
    x = torch.randn(6, 3, 8, 8)
    weights = dist.one_hot(dist.sample(generator=torch.Generator().manual_seed(0)))
    outputs = []
    for mode in ('subset', 'running'):
        torch.manual_seed(0)
        outputs.append(DartsSupernet(10, 4, 3, subset_bn=mode)(x, weights))
    assert torch.equal(outputs[0], outputs[1])
