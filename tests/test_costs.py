"""The cost term of the search (unas_zoo.search.costs): registry, validation, hinge, annealing, RELAX wiring."""
import textwrap

import pytest
import torch
import torch.nn as nn

import unas_zoo  # noqa: F401  (registers the zoo with timm)
from unas_zoo.genotypes import MBConvBackbone
from unas_zoo.latency import TimingSpec
from unas_zoo.search.costs import COSTS, CostError, CostTerm, build_cost, measure_peak_memory, validate_cost_section
from unas_zoo.search.distributions import ArchDistribution, MBConvDistribution
from unas_zoo.search.estimators import estimate

TINY = MBConvBackbone(stem_width=8, first_block_width=8, stage_widths=(8, 16, 16, 24, 24, 32), head_width=64)
SMALL_CHOICES = {'a': ('x', 'y', 'z'), 'b': ('x', 'y')}


@pytest.fixture
def user_costs(tmp_path, monkeypatch):
    """An importable module of user cost callables: 'my_costs:<name>'."""
    (tmp_path / 'my_costs.py').write_text(textwrap.dedent('''
        CALLS = []

        def by_indices(indices):
            CALLS.append(dict(indices))
            return 1.0 + 2.0 * indices['a'] + 0.5 * indices['b'] + 3.0 * (indices['a'] == 2 and indices['b'] == 1)

        def zero_layers(genotype):
            return float(sum(choice == 'zero' for choice in genotype.layers))

        def broken(indices):
            raise RuntimeError('device offline')

        def not_a_number(indices):
            return float('nan')
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys
    sys.modules.pop('my_costs', None)
    return importlib.import_module('my_costs')


def _build(section, dist=None, **kw):
    return build_cost(section, dist=dist or ArchDistribution(SMALL_CHOICES), log=None, **kw)


def test_registry_names():
    assert {'latency', 'ort_latency', 'macs', 'params', 'peak_memory'} <= set(COSTS)


def test_annealing_and_hinge():
    term = CostTerm(name='t', target=2.0, final_weight=0.1, anneal_steps=10,
                    cost_fn=lambda idx: idx['a'].float(), surrogate=lambda w: w['a'] @ torch.tensor([0., 1., 5.]))
    assert [term.weight(s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.05, 0.1, 0.1])
    fraction = CostTerm('t', 2.0, 0.1, None, term.cost_fn, term.surrogate, anneal=0.5)
    assert fraction.weight(25, total_steps=100) == pytest.approx(0.05) and fraction.weight(60, 100) == 0.1
    assert CostTerm('t', 2.0, 0.1, 0, term.cost_fn, term.surrogate).weight(0) == 0.1
    assert term.hinge_fn({'a': torch.tensor([0, 1, 2, 3])}).tolist() == [0, 0, 0, 1]
    w = torch.tensor([0.2, 0.2, 0.6], requires_grad=True)
    value = term.hinge_surrogate({'a': w})  # g = 3.2 > target: gradient flows
    value.backward()
    assert value.item() == pytest.approx(1.2) and w.grad.tolist() == pytest.approx([0.0, 1.0, 5.0])


def test_callable_cost_by_indices_fits_surrogate_and_runs_relax(user_costs, tmp_path):
    dist = ArchDistribution({**SMALL_CHOICES, 'c': tuple('pqrst'), 'd': tuple('pqrst')})  # 150 architectures
    term = _build({'name': 'my_costs:by_indices', 'call_with': 'indices', 'target': 3.0, 'weight': 0.1,
                   'anneal': 0.5, 'surrogate': {'samples': 40, 'holdout': 0.25, 'refit_every': 4}},
                  dist, total_steps=20, output_dir=tmp_path)
    assert term.anneal_steps == 10 and term.weight(5) == pytest.approx(0.05)
    assert (tmp_path / 'my_costs_by_indices_surrogate.safetensors').is_file()
    calls = len(user_costs.CALLS)
    resumed = _build({'name': 'my_costs:by_indices', 'call_with': 'indices', 'target': 3.0,
                      'surrogate': {'samples': 40}}, dist, output_dir=tmp_path)  # e.g. --resume: loads the run's copy
    assert len(user_costs.CALLS) == calls and resumed.surrogate_model.stats == term.surrogate_model.stats
    assert term.info['surrogate']['holdout']['samples'] == 10
    # A per-batch sample -> scalar; per-example -> [N]; repeated architectures are measured once.
    calls = len(user_costs.CALLS)
    one = {'a': torch.tensor(2), 'b': torch.tensor(1), 'c': torch.tensor(0), 'd': torch.tensor(0)}
    assert term.cost_fn(one).item() == pytest.approx(8.5)
    many = term.cost_fn({'a': torch.tensor([0, 2, 2]), 'b': torch.tensor([0, 1, 1]), 'c': torch.tensor([0, 0, 0]),
                         'd': torch.tensor([0, 0, 0])})
    assert many.tolist() == pytest.approx([1.0, 8.5, 8.5]) and len(user_costs.CALLS) - calls <= 2

    # The search's φ step: RELAX with the hinge on the measurement and the surrogate as control variate.
    buffer = term.surrogate_model.buffer_size
    for _ in range(6):
        dist.zero_grad()
        est = estimate('relax', dist, None, num_samples=4, cost_fn=term.hinge_fn, cost_surrogate=term.hinge_surrogate,
                       cost_weight=term.weight(10), generator=torch.Generator().manual_seed(0))
        est.objective.backward()
        assert all(torch.isfinite(p.grad).all() for p in dist.parameters())
    assert term.surrogate_model.buffer_size > buffer  # measured architectures feed the refit
    assert 'refit' in term.surrogate_model.stats


def test_target_quantile_of_random_architectures(user_costs):
    term = _build({'name': 'my_costs:by_indices', 'call_with': 'indices', 'target_quantile': 0.5,
                   'surrogate': {'samples': 50}})
    measured = term.surrogate_model.initial_costs()
    assert len(measured) == 50
    assert term.target == pytest.approx(float(measured.median()), abs=2.0)
    assert (measured <= term.target).float().mean() >= 0.5 and (measured >= term.target).float().mean() >= 0.5


def test_saved_surrogate_is_reused_and_checked(user_costs, tmp_path):
    path = tmp_path / 'g.safetensors'
    section = {'name': 'my_costs:by_indices', 'call_with': 'indices', 'target': 3.0,
               'surrogate': {'samples': 20, 'path': str(path)}}
    first = _build(section)
    calls = len(user_costs.CALLS)
    second = _build(section)
    assert len(user_costs.CALLS) == calls  # loaded, nothing measured
    assert torch.equal(second.surrogate_model.weights['a'], first.surrogate_model.weights['a'])
    with pytest.raises(CostError, match='another search space'):
        _build(section, ArchDistribution({'a': ('x', 'y', 'z'), 'b': ('x', 'y', 'w')}))


def test_genotype_callable_and_params_in_the_mbconv_space(user_costs):
    dist = MBConvDistribution(TINY)
    zero = _build({'name': 'my_costs:zero_layers', 'target': 2, 'surrogate': {'samples': 300, 'holdout': 0.2}}, dist)
    genotype = dist.to_genotype()  # argmax of uniform logits: index 0, i.e. 'zero' wherever allowed
    assert zero.measure(genotype) == float(sum(choice == 'zero' for choice in genotype.layers)) > 0
    # 'number of zero layers' is linear in the encoding: the surrogate is exact.
    assert zero.info['surrogate']['holdout']['mae'] < 0.01  # (ridge shrinkage only)

    # 7 layers (43 one-hot features), so that 80 random architectures determine the linear fit.
    dist = MBConvDistribution(MBConvBackbone(**{**TINY.__dict__, 'stage_depths': (1, 1, 1, 2, 1, 1)}))
    genotype = dist.to_genotype()
    params = _build({'name': 'params', 'target': 0.05, 'num_classes': 10, 'surrogate': {'samples': 80}}, dist)
    expected = sum(p.numel() for p in
                   __import__('timm').create_model('mbconv_net', genotype=genotype, num_classes=10).parameters())
    assert params.measure(genotype) == pytest.approx(expected / 1e6)
    assert params.info['surrogate']['holdout']['relative_error'] < 1e-3  # params are additive per layer
    assert 'params of the searched architecture' in params.summary(genotype)


def test_latency_cost_on_cpu(tmp_path):
    dist = MBConvDistribution(TINY)
    section = {'name': 'latency', 'target': 1.0, 'batch_size': 2, 'warmup': 1, 'repeats': 2, 'num_threads': 1,
               'num_classes': 10, 'cache': str(tmp_path / 'cache.json'), 'surrogate': {'samples': 12}}
    term = _build(section, dist, device='cpu', input_size=(3, 32, 32))
    assert term.unit == 'ms' and term.timing.batch_size == 2 and term.timing.input_size == (3, 32, 32)
    assert term.info['context']['device'].startswith('cpu')
    sample = dist.sample(generator=torch.Generator().manual_seed(0))
    value = term.cost_fn(sample)
    assert value.shape == () and float(value) > 0
    term.flush()
    assert (tmp_path / 'cache.json').is_file()
    table = term.summary(dist.to_genotype(), references=('mobilenetv2_100',))
    assert 'searched' in table and 'mobilenetv2_100' in table and 'target: 1 ms' in table


def test_ort_latency_cost_on_cpu(tmp_path):
    """The sampled child exported to ONNX and timed in ONNX Runtime, cached under its own context."""
    import onnxruntime
    dist = MBConvDistribution(TINY)
    section = {'name': 'ort_latency', 'target': 1.0, 'batch_size': 2, 'warmup': 1, 'repeats': 2, 'num_threads': 1,
               'num_classes': 10, 'cache': str(tmp_path / 'cache.json'), 'surrogate': {'samples': 3, 'holdout': 0}}
    term = _build(section, dist, device='cpu', input_size=(3, 16, 16))
    assert term.unit == 'ms' and term.timing.runtime == 'onnxruntime' and term.timing.num_threads == 1
    assert term.info['context']['onnxruntime'] == onnxruntime.__version__
    value = term.cost_fn(dist.sample(generator=torch.Generator().manual_seed(0)))
    assert value.shape == () and float(value) > 0
    term.flush()
    contexts = __import__('json').loads((tmp_path / 'cache.json').read_text())['contexts'].values()
    assert [c['context']['runtime'] for c in contexts] == ['onnxruntime'] and len(next(iter(contexts))['entries']) >= 3
    assert 'searched' in term.summary(dist.to_genotype(), references=())


def test_macs_cost_matches_complexity():
    dist = MBConvDistribution(TINY)
    term = _build({'name': 'macs', 'target': 1.0, 'input_size': [3, 32, 32], 'num_classes': 10,
                   'surrogate': {'samples': 2, 'holdout': 0}}, dist)  # fvcore is slow: few samples
    genotype = dist.to_genotype()
    from unas_zoo.complexity import complexity
    model = __import__('timm').create_model('mbconv_net', genotype=genotype, num_classes=10)
    assert term.measure(genotype) == pytest.approx(complexity(model, (3, 32, 32))['macs'] / 1e6)


def test_peak_memory_on_cpu_grows_with_batch():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    small = measure_peak_memory(model, TimingSpec(batch_size=1, input_size=(3, 32, 32)))
    large = measure_peak_memory(model, TimingSpec(batch_size=8, input_size=(3, 32, 32)))
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2 ** 20
    activation_mb = 16 * 32 * 32 * 4 / 2 ** 20  # one conv output at batch 1
    assert small >= params_mb + activation_mb
    assert large > small + 6 * activation_mb


@pytest.mark.parametrize('section, message', [
    ({'name': 'latency', 'target': 0}, r'cost.target: must be > 0'),
    ({'name': 'latency', 'target': -3.0}, r'cost.target: must be > 0'),
    ({'name': 'latency'}, r"give exactly one of 'target'"),
    ({'name': 'latency', 'target': 1, 'target_quantile': 0.5}, r"give exactly one of 'target'"),
    ({'name': 'latency', 'target_quantile': 1.5}, r'cost.target_quantile: must be <= 1'),
    ({'name': 'flops', 'target': 1}, r"unknown cost 'flops'; registered costs are \['latency', 'macs', "
                                     r"'ort_latency', 'params', 'peak_memory'\]"),
    ({'name': 'ort_latency', 'target': 1, 'channels_last': True}, r"unknown key\(s\) \['channels_last'\] for cost "
                                                                  r"'ort_latency'"),
    ({'name': 'latency', 'target': 1, 'batch': 32}, r"unknown key\(s\) \['batch'\] for cost 'latency'; allowed keys"),
    ({'name': 'params', 'target': 1, 'dtype': 'float32'}, r"unknown key\(s\) \['dtype'\]"),
    ({'name': 'latency', 'target': 1, 'dtype': 'int8'}, r'cost.dtype: unknown value'),
    ({'name': 'latency', 'target': 1, 'surrogate': {'samplez': 3}}, r"cost.surrogate: unknown key\(s\) \['samplez'\]"),
    ({'name': 'latency', 'target': 1, 'weight': float('nan')}, r'cost.weight: expected a number'),
    ({'name': 'no_such_module_xyz:f', 'target': 1}, r"cannot import module 'no_such_module_xyz'"),
    ('latency', r'cost: expected a mapping'),
])
def test_bad_sections(section, message):
    with pytest.raises(CostError, match=message):
        build_cost(section, dist=MBConvDistribution(TINY), log=None, source='hparams/x.yaml')


def test_validate_without_measuring():
    options = validate_cost_section({'name': 'latency', 'target': 10}, 'run.yaml')
    assert options['weight'] == 0.1 and options['surrogate']['samples'] == 1000 and options['surrogate']['ridge'] == 'auto'
    with pytest.raises(CostError, match=r"^run.yaml: cost.statistic: unknown value 'p90'"):
        validate_cost_section({'name': 'latency', 'target': 10, 'statistic': 'p90'}, 'run.yaml')


def test_errors_name_the_source_and_are_one_line():
    with pytest.raises(CostError) as info:
        build_cost({'name': 'latency', 'target': 0}, dist=MBConvDistribution(TINY), log=None, source='run.yaml')
    assert str(info.value).startswith('run.yaml: cost.target') and '\n' not in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize('name, message', [
    ('my_costs:broken', r"cost callable 'my_costs:broken' raised RuntimeError: device offline"),
    ('my_costs:not_a_number', r"cost callable 'my_costs:not_a_number' returned nan; a cost must be a finite number"),
    ('my_costs:missing', r"module 'my_costs' has no attribute 'missing'"),
])
def test_bad_callables(user_costs, name, message):
    with pytest.raises(CostError, match=message):
        _build({'name': name, 'call_with': 'indices', 'target': 1.0, 'surrogate': {'samples': 4}})


def test_cuda_cost_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(CostError, match=r"cost.device: CUDA timing was asked for \('cuda'\) but CUDA is not available"):
        build_cost({'name': 'latency', 'target': 10.0, 'device': 'cuda'}, dist=MBConvDistribution(TINY), log=None)


def test_darts_space_needs_a_model_builder():
    from unas_zoo.search.distributions import DartsCellDistribution
    with pytest.raises(CostError, match='no model builder for this search space'):
        build_cost({'name': 'params', 'target': 1.0, 'surrogate': {'samples': 2}}, dist=DartsCellDistribution(),
                   log=None)
