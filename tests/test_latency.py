"""Latency measurement, its file cache and the linear surrogate (unas_zoo.latency)."""
import json

import pytest
import torch
import torch.nn as nn

import unas_zoo  # noqa: F401  (registers the zoo with timm)
from unas_zoo.genotypes import MBConvBackbone, load
from unas_zoo.latency import (
    LatencyCache, LatencyError, LatencyMeter, LinearSurrogate, Timing, TimingSpec, compare_latency, fit_surrogate,
    format_latency_table, random_architectures, time_model)
from unas_zoo.search.distributions import MBConvDistribution

SPEC = TimingSpec(batch_size=2, input_size=(3, 16, 16), warmup=1, repeats=3, num_threads=1)


def _tiny(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))


def test_timing_statistics():
    t = Timing.from_times([4.0, 1.0, 100.0, 2.0, 3.0])
    assert t.median_ms == 3.0 and t.min_ms == 1.0 and t.repeats == 5
    assert t.iqr_ms == pytest.approx(2.0)  # quartiles 2 and 4 (inclusive method): robust to the 100 ms outlier
    assert t.mean_ms == pytest.approx(22.0)


def test_cpu_timing_restores_threads_and_mode():
    model = _tiny().train()
    previous = torch.get_num_threads()
    timing = time_model(model, SPEC)
    assert torch.get_num_threads() == previous
    assert model.training
    assert timing.repeats == 3 and 0 < timing.min_ms <= timing.median_ms


def test_cache_survives_restart_and_is_keyed(tmp_path):
    path = tmp_path / 'latency.json'
    built = []

    def model_fn(genotype):
        built.append(genotype)
        return _tiny()

    meter = LatencyMeter(model_fn, SPEC, LatencyCache(path, flush_every=1), model_tag='tiny')
    first = meter.timing({'arch': 1})
    assert meter.timing({'arch': 1}) == first and (meter.hits, meter.misses) == (1, 1)
    assert len(built) == 1 and path.is_file()

    # A new process (new cache object reading the same file) gets the timing without building the model.
    restarted = LatencyMeter(model_fn, SPEC, LatencyCache(path), model_tag='tiny')
    assert restarted.timing({'arch': 1}) == first and len(built) == 1

    # Anything that changes a timing changes the key: batch size, threads, the model builder.
    for spec, tag in ((TimingSpec(**{**SPEC.__dict__, 'batch_size': 3}), 'tiny'),
                      (TimingSpec(**{**SPEC.__dict__, 'num_threads': 2}), 'tiny'),
                      (SPEC, 'other-builder')):
        other = LatencyMeter(model_fn, spec, LatencyCache(path, flush_every=1), model_tag=tag)
        other.timing({'arch': 1})
        assert other.misses == 1
    assert len(built) == 4
    contexts = json.loads(path.read_text())['contexts']
    assert len(contexts) == 4
    assert {c['context']['batch_size'] for c in contexts.values()} == {2, 3}
    assert all(c['context']['torch'] == torch.__version__ for c in contexts.values())


def test_cache_flush_merges_with_other_writers(tmp_path):
    path = tmp_path / 'latency.json'
    a, b = LatencyCache(path, flush_every=100), LatencyCache(path, flush_every=100)
    context = SPEC.context('tiny')
    a.put(context, 'x', Timing(1.0, 0.0, 1.0, 1.0, 1))
    b.put(context, 'y', Timing(2.0, 0.0, 2.0, 2.0, 1))
    a.flush()
    b.flush()
    merged = LatencyCache(path)
    assert merged.get(context, 'x').median_ms == 1.0 and merged.get(context, 'y').median_ms == 2.0


def test_bad_cache_file_is_a_clear_error(tmp_path):
    path = tmp_path / 'latency.json'
    path.write_text('{not json')
    with pytest.raises(LatencyError, match='latency.json'):
        LatencyCache(path)


def test_cuda_timing_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(LatencyError, match='CUDA .*not available'):
        time_model(_tiny(), TimingSpec(device='cuda'))
    with pytest.raises(LatencyError, match='CUDA'):
        LatencyMeter(lambda g: _tiny(), TimingSpec(device='cuda:0'))


def test_spec_rejects_bad_values():
    with pytest.raises(LatencyError, match="allowed values are \\['float32', 'bfloat16', 'float16'\\]"):
        TimingSpec(dtype='int8')
    with pytest.raises(LatencyError, match='batch_size'):
        TimingSpec(batch_size=0)
    with pytest.raises(LatencyError, match="runtime 'tvm' .*allowed values are \\['torch', 'onnxruntime'\\]"):
        TimingSpec(runtime='tvm')
    with pytest.raises(LatencyError, match='onnxruntime times float32 on the cpu'):
        TimingSpec(runtime='onnxruntime', device='cuda')


def test_onnxruntime_timing_is_cached_under_its_own_context(tmp_path):
    import onnxruntime
    spec = TimingSpec(batch_size=2, input_size=(3, 16, 16), warmup=1, repeats=3, num_threads=1, runtime='onnxruntime')
    model = _tiny().train()
    timing = time_model(model, spec)
    assert timing.repeats == 3 and 0 < timing.min_ms <= timing.median_ms and model.training
    context, torch_context = spec.context('m'), SPEC.context('m')
    assert 'runtime' not in torch_context  # torch timings keep their keys: existing caches stay valid
    assert context == {**torch_context, 'runtime': 'onnxruntime', 'onnxruntime': onnxruntime.__version__}
    meter = LatencyMeter(lambda g: _tiny(), spec, LatencyCache(tmp_path / 'cache.json'), model_tag='m')
    assert meter('arch') == meter('arch') > 0 and (meter.misses, meter.hits) == (1, 1)
    with pytest.raises(LatencyError, match='features_only models are not exported'):
        time_model(__import__('timm').create_model('mbconv_net', features_only=True), spec)


def test_surrogate_recovers_planted_linear_latency(tmp_path):
    dist = MBConvDistribution()
    gen = torch.Generator().manual_seed(0)
    planted = {name: torch.rand(len(labels), generator=gen) for name, labels in dist.choices.items()}
    noise = torch.Generator().manual_seed(1)

    def measure(arch):  # a linear latency in ms plus 1% measurement noise
        value = 5.0 + sum(float(planted[name][i]) for name, i in arch.items())
        return value * (1 + 0.01 * float(torch.randn((), generator=noise)))

    surrogate = fit_surrogate(dist.choices, measure, 400, holdout=0.25, generator=torch.Generator().manual_seed(2))
    held = surrogate.stats['holdout']
    assert held['samples'] == 100
    assert held['relative_error'] < 0.02 and held['r2'] > 0.95

    test = random_architectures(dist.choices, 200, torch.Generator().manual_seed(3))
    truth = 5.0 + sum(planted[name][idx] for name, idx in test.items()).double()
    assert (surrogate.predict(test) - truth).abs().max() < 0.5

    # Differentiable in relaxed weights, [K] -> scalar and [N, K] -> [N]; the gradient is the fitted l_ij.
    weights = {name: torch.softmax(torch.randn(4, len(labels), generator=gen), -1).requires_grad_(True)
               for name, labels in dist.choices.items()}
    value = surrogate(weights)
    assert value.shape == (4,)
    value.sum().backward()
    assert torch.allclose(weights['layer02'].grad[0], surrogate.weights['layer02'].float())
    assert surrogate({k: w[0].detach() for k, w in weights.items()}).shape == ()

    path = surrogate.save(tmp_path / 'surrogate.safetensors')
    loaded = LinearSurrogate.load(path)
    assert torch.equal(loaded.predict(test), surrogate.predict(test))
    assert loaded.stats == surrogate.stats and loaded.buffer_size == 400 and loaded.choices == surrogate.choices


def test_surrogate_refit_follows_new_measurements():
    choices = {'a': ('x', 'y'), 'b': ('x', 'y', 'z')}
    surrogate = LinearSurrogate(choices)
    archs = random_architectures(choices, 60, torch.Generator().manual_seed(0))
    enc = surrogate.encode(archs)
    surrogate.fit(enc, 1.0 + 2.0 * archs['a'].double(), holdout=0.0)
    assert float(surrogate.predict({'a': 1, 'b': 0}) - surrogate.predict({'a': 0, 'b': 0})) == pytest.approx(2, abs=1e-2)
    # During search the device says 'b = z' costs 10 more (e.g. a kernel the random samples rarely hit).
    surrogate.observe(enc, 1.0 + 2.0 * archs['a'].double() + 10.0 * (archs['b'] == 2).double())
    old = dict(surrogate.weights)
    surrogate.refit()
    assert surrogate.buffer_size == 120
    assert float(surrogate.predict({'a': 0, 'b': 2}) - surrogate.predict({'a': 0, 'b': 0})) > 4
    assert old['b'] is not surrogate.weights['b']  # replaced, not modified in place (autograd-safe)


def test_auto_ridge_helps_with_few_noisy_samples():
    """Fewer samples than one-hot features (141 in the MBConv space) and noisy timings: GCV picks a useful penalty."""
    dist = MBConvDistribution()
    planted = {name: torch.rand(len(labels), generator=torch.Generator().manual_seed(i))
               for i, (name, labels) in enumerate(dist.choices.items())}
    archs = random_architectures(dist.choices, 160, torch.Generator().manual_seed(0))
    noise = torch.randn(160, generator=torch.Generator().manual_seed(1))
    costs = 5.0 + sum(planted[name][idx] for name, idx in archs.items()).double() + 1.0 * noise.double()
    errors = {}
    for ridge in ('auto', 1e-6):
        surrogate = LinearSurrogate(dist.choices)
        stats = surrogate.fit(surrogate.encode(archs), costs, ridge=ridge, holdout=0.25,
                              generator=torch.Generator().manual_seed(2))
        errors[ridge] = stats['holdout']['mae']
    assert errors['auto'] < 0.8 * errors[1e-6]


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / 'x.safetensors'
    path.write_bytes(b'not a safetensors file')
    with pytest.raises(LatencyError, match='x.safetensors'):
        LinearSurrogate.load(path)


def test_compare_latency_times_modules_zoo_names_and_genotypes():
    tiny_backbone = MBConvBackbone(stem_width=8, first_block_width=8, stage_widths=(8, 16, 16, 24, 24, 32),
                                   head_width=64)
    genotype = MBConvDistribution(tiny_backbone).to_genotype()
    spec = TimingSpec(batch_size=1, input_size=(3, 32, 32), warmup=1, repeats=2, num_threads=1)
    rows = compare_latency({'searched': genotype, 'tiny': _tiny(), 'proxylessnas_gpu': 'proxylessnas_gpu'}, spec,
                           num_classes=10)
    assert [r['model'] for r in rows] == ['searched', 'tiny', 'proxylessnas_gpu']
    assert all(r['median_ms'] > 0 for r in rows)
    assert rows[2]['params_m'] > rows[0]['params_m']  # the zoo model was built, not the tiny genotype
    table = format_latency_table(rows, spec)
    assert 'batch 1' in table and 'proxylessnas_gpu' in table
    assert load('proxylessnas_gpu').layers[1] == 'zero'
