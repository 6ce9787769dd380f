"""Non-differentiable costs for the search: E[λ(t) · max(0, cost(z) − target)], estimated with RELAX.

The paper's latency search (§5, App. E) adds ``λ_lat E[max(0, latency(z) − t)]`` to the search objective, with
λ_lat annealed linearly from 0 to 0.1, the latency measured on the device for every sampled architecture, and a
linear model of the one-hot architecture encoding as the RELAX control variate (Eq. 5). Here the cost is a
registry entry, so anything measurable plugs in the same way:

============  =====  ====================================================================================
name          unit   what is measured for one architecture
============  =====  ====================================================================================
latency       ms     median forward latency of the child network (``unas_zoo.latency``: CUDA events or
                     ``perf_counter``; cached in a file per device, dtype, batch, input size, threads)
ort_latency   ms     the child exported to ONNX and timed in ONNX Runtime on the CPU (fp32, pinned threads,
                     ``statistic`` of the repeats; cached like ``latency``). ORT fuses layers, so this latency
                     is not a sum of per-layer costs: the case RELAX is for. Needs the ``export`` extra.
macs          M      multiply-adds at batch 1 (fvcore, through ``unas_zoo.complexity``)
params        M      parameters of the child network
peak_memory   MB     CUDA: ``torch.cuda.max_memory_allocated`` during one forward pass at the batch size,
                     minus what was allocated before the child was moved there. CPU: parameter and buffer
                     bytes + input bytes + the peak of live tensor storage created during the forward pass
                     (tracked op by op with a dispatch mode: what an allocator that frees eagerly needs).
'pkg.mod:fn'  any    a user callable ``fn(genotype) -> float`` (or ``fn(indices: dict[str, int]) -> float``
                     with ``call_with: indices``); it must return a finite number.
============  =====  ====================================================================================

Every cost gets the same linear surrogate (``unas_zoo.latency.LinearSurrogate``), fitted on random architectures
before the search (loaded from ``surrogate.path`` when that file exists), optionally refit during search on the
architectures the search measured. Whatever the surrogate's error, RELAX keeps the gradient unbiased; a better
surrogate only lowers its variance.
"""
from __future__ import annotations

import contextlib
import importlib
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode  # private but stable: the op-level hook for CPU memory
from torch.utils._pytree import tree_leaves

from unas_zoo.latency import (
    DTYPES, REFERENCE_MODELS, STATISTICS, LatencyCache, LatencyError, LatencyMeter, LinearSurrogate, TimingSpec,
    compare_latency, fit_surrogate, format_latency_table)

__all__ = ['CostError', 'CostTerm', 'CostContext', 'COSTS', 'register_cost', 'build_cost', 'validate_cost_section',
           'measure_peak_memory']

# Keys every cost section accepts; each registered cost adds its own.
COMMON_KEYS = ('name', 'target', 'target_quantile', 'weight', 'anneal', 'anneal_steps', 'surrogate')
SURROGATE_KEYS = ('samples', 'holdout', 'ridge', 'path', 'refit_every', 'seed')
SURROGATE_DEFAULTS = {'samples': 1000, 'holdout': 0.1, 'ridge': 'auto', 'path': None, 'refit_every': 0, 'seed': 0}
CALL_WITH = ('genotype', 'indices')


class CostError(ValueError):
    """A cost section is invalid or a cost cannot be measured; one line naming the source, key and what is allowed."""


# ------------------------------------------------------------------------------------------------------ the term

@dataclass
class CostTerm:
    """``λ(step) · max(0, cost(z) − target)`` with its measured value and its differentiable surrogate.

    ``cost_fn(indices)`` measures the sampled architectures (``[]`` or ``[N]`` index tensors -> a tensor of the
    same shape); ``surrogate(weights)`` is the linear model on one-hot or relaxed weights. The search passes
    ``cost_fn=term.hinge_fn, cost_surrogate=term.hinge_surrogate, cost_weight=term.weight(step)`` to
    ``estimators.estimate``.
    """
    name: str
    target: float
    final_weight: float
    anneal_steps: int | None
    cost_fn: Callable[[dict[str, Tensor]], Tensor]
    surrogate: Callable[[dict[str, Tensor]], Tensor]
    unit: str = ''
    anneal: float = 1.0                               # fraction of total_steps, used when anneal_steps is None
    surrogate_model: LinearSurrogate | None = None
    measure: Callable[[Any], float] | None = None     # one genotype -> cost
    timing: TimingSpec | None = None                  # latency: how it is measured (for the comparison table)
    num_classes: int = 1000
    info: dict = field(default_factory=dict)          # surrogate fit statistics, what the measurement depends on
    flush_fn: Callable[[], None] | None = None        # writes pending measurements (the latency cache) to disk
    build_fn: Callable[[Any], nn.Module] | None = None  # genotype -> the child network that is measured
    measured: _Measured | None = None                  # memo, refit counter and surrogate: checkpointed

    def state_dict(self) -> dict[str, Any]:
        """What the search changes in the term (see :class:`_Measured`), for exact resume."""
        return self.measured.state_dict() if self.measured is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.measured is not None:
            self.measured.load_state_dict(state)

    def weight(self, step: int, total_steps: int | None = None) -> float:
        """λ at φ step ``step``: linear from 0 to ``final_weight`` over the annealing steps, then constant."""
        steps = self.anneal_steps
        if steps is None:
            steps = round(self.anneal * total_steps) if total_steps else 0
        if steps <= 0:
            return self.final_weight
        return self.final_weight * min(1.0, max(step, 0) / steps)

    def hinge_fn(self, indices: Mapping[str, Tensor]) -> Tensor:
        """max(0, measured cost − target) of the sampled architectures."""
        return (self.cost_fn(indices) - self.target).clamp_min(0.0)

    def hinge_surrogate(self, weights: Mapping[str, Tensor]) -> Tensor:
        """max(0, g(weights) − target): RELAX's control variate for :meth:`hinge_fn`, differentiable in weights."""
        return (self.surrogate(weights) - self.target).clamp_min(0.0)

    def flush(self) -> None:
        """Write pending measurements to their file cache (call at the end of an epoch / the search)."""
        if self.flush_fn is not None:
            self.flush_fn()

    def summary(self, genotype: Any, references: tuple[str, ...] = REFERENCE_MODELS) -> str:
        """How the result compares: for latency a table timed on the same device next to ``references``."""
        if self.name in ('latency', 'ort_latency') and self.timing is not None:
            searched = self.build_fn(genotype) if self.build_fn is not None else genotype
            rows = compare_latency({'searched': searched, **{r: r for r in references}}, self.timing,
                                   num_classes=self.num_classes)
            self.flush()
            return format_latency_table(rows, self.timing) + f'\ntarget: {self.target:g} ms'
        value = self.measure(genotype)
        return f'{self.name} of the searched architecture: {value:.4g} {self.unit} (target {self.target:g} {self.unit})'


# -------------------------------------------------------------------------------------------------- the registry

@dataclass
class CostContext:
    """What a cost factory may use: the validated section and the search's setting."""
    options: dict[str, Any]
    dist: Any
    device: torch.device
    input_size: tuple[int, ...]
    num_classes: int
    model_fn: Callable[[Any], nn.Module] | None
    model_tag: str
    where: str                     # message prefix, e.g. 'hparams/x.yaml: cost'

    def build(self, genotype: Any) -> nn.Module:
        if self.model_fn is None:
            raise CostError(f'{self.where}: cost {self.options["name"]!r} needs to build the child network, and '
                            f'there is no model builder for this search space; pass model_fn to build_cost '
                            f'(e.g. supernet.child) or use a callable cost')
        return self.model_fn(genotype)


@dataclass(frozen=True)
class _Registered:
    unit: str
    keys: tuple[str, ...]
    factory: Callable[[CostContext], tuple[Callable[[Any], float], dict]]


COSTS: dict[str, _Registered] = {}


def register_cost(name: str, *, unit: str, keys: tuple[str, ...] = ()):
    """Register ``factory(ctx) -> (measure(genotype) -> float, context dict)`` under ``name``.

    ``keys`` are the section keys the cost accepts besides the common ones; the context dict says what the
    measurement depends on (it keys the saved surrogate).
    """
    def wrap(factory):
        COSTS[name] = _Registered(unit, tuple(keys), factory)
        return factory
    return wrap


_TIMING_KEYS = ('device', 'batch_size', 'input_size', 'dtype', 'channels_last', 'warmup', 'repeats', 'num_threads',
                'statistic', 'num_classes', 'cache')


def _timing_spec(ctx: CostContext, runtime: str = 'torch') -> TimingSpec:
    o = ctx.options
    kwargs = {
        'device': 'cpu' if runtime == 'onnxruntime' else str(ctx.device),
        'runtime': runtime,
        'batch_size': o.get('batch_size', 32),
        'input_size': tuple(ctx.input_size),
        'dtype': o.get('dtype', 'float32'),
        'channels_last': o.get('channels_last', False),
        'warmup': o.get('warmup', 10),
        'repeats': o.get('repeats', 30),
        'num_threads': o.get('num_threads'),
        'statistic': o.get('statistic', 'median'),
    }
    try:
        return TimingSpec(**kwargs)
    except LatencyError as e:
        raise CostError(f'{ctx.where}: {e}') from None


@register_cost('latency', unit='ms', keys=_TIMING_KEYS)
def _latency(ctx: CostContext):
    spec = _timing_spec(ctx)
    cache = LatencyCache(ctx.options['cache']) if ctx.options.get('cache') else LatencyCache()
    meter = LatencyMeter(ctx.build, spec, cache, model_tag=ctx.model_tag)
    return meter, {'cost': 'latency', 'statistic': spec.statistic, **meter.context}


@register_cost('ort_latency', unit='ms', keys=tuple(k for k in _TIMING_KEYS if k not in ('device', 'dtype',
                                                                                        'channels_last')))
def _ort_latency(ctx: CostContext):
    from unas_zoo.export import ExportError, ort_version
    try:
        ort_version()
    except ExportError as e:
        raise CostError(f'{ctx.where}.name: ort_latency: {e}') from None
    spec = _timing_spec(ctx, runtime='onnxruntime')
    cache = LatencyCache(ctx.options['cache']) if ctx.options.get('cache') else LatencyCache()
    meter = LatencyMeter(ctx.build, spec, cache, model_tag=ctx.model_tag)
    return meter, {'cost': 'ort_latency', 'statistic': spec.statistic, **meter.context}


@register_cost('macs', unit='M', keys=('input_size', 'num_classes'))
def _macs(ctx: CostContext):
    from unas_zoo.complexity import complexity

    def measure(genotype) -> float:
        return complexity(ctx.build(genotype), ctx.input_size)['macs'] / 1e6
    return measure, {'cost': 'macs', 'input_size': list(ctx.input_size), 'model': ctx.model_tag}


@register_cost('params', unit='M', keys=('num_classes',))
def _params(ctx: CostContext):
    def measure(genotype) -> float:
        return sum(p.numel() for p in ctx.build(genotype).parameters()) / 1e6
    return measure, {'cost': 'params', 'model': ctx.model_tag}


@register_cost('peak_memory', unit='MB', keys=('device', 'batch_size', 'input_size', 'dtype', 'num_classes'))
def _peak_memory(ctx: CostContext):
    spec = _timing_spec(ctx)

    def measure(genotype) -> float:
        return measure_peak_memory(ctx.build(genotype), spec)
    return measure, {'cost': 'peak_memory', **{k: v for k, v in spec.context(ctx.model_tag).items()
                                               if k != 'num_threads'}}


class _LiveTensorMemory(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive; keeps the peak."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}   # storage pointer -> [bytes, live tensors referring to it]
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, Tensor):
                ptr = t.untyped_storage().data_ptr()
                if ptr in self.live:
                    self.live[ptr][1] += 1
                else:
                    self.live[ptr] = [t.untyped_storage().nbytes(), 1]
                    self.current += self.live[ptr][0]
                    self.peak = max(self.peak, self.current)
                weakref.finalize(t, self._release, ptr)
        return out


def measure_peak_memory(model: nn.Module, spec: TimingSpec) -> float:
    """Peak memory of one inference forward pass at ``spec.batch_size``, in MB (see the module docstring)."""
    device = spec.torch_device()
    autocast = torch.autocast(device.type, dtype=DTYPES[spec.dtype]) if spec.dtype != 'float32' else None
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        model = model.to(device).eval()
        x = torch.randn(spec.batch_size, *spec.input_size, device=device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), (autocast or contextlib.nullcontext()):
            model(x)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del model, x
        return peak / 2 ** 20
    model = model.eval()
    x = torch.randn(spec.batch_size, *spec.input_size)
    static = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    tracker = _LiveTensorMemory()
    with torch.inference_mode(), (autocast or contextlib.nullcontext()), tracker:
        model(x)
    return (static + x.numel() * x.element_size() + tracker.peak) / 2 ** 20


def _import_callable(spec: str, where: str) -> Callable:
    module_name, _, attr = spec.partition(':')
    if not module_name or not attr:
        raise CostError(f"{where}.name: {spec!r} is neither a registered cost {sorted(COSTS)} nor an import path "
                        f"'package.module:function'")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 -- any import failure is the user's, reported in one line
        raise CostError(f'{where}.name: cannot import module {module_name!r} for cost callable {spec!r} '
                        f'({type(e).__name__}: {e})') from None
    for part in attr.split('.'):
        if not hasattr(obj, part):
            raise CostError(f'{where}.name: module {module_name!r} has no attribute {attr!r} (cost callable '
                            f'{spec!r})')
        obj = getattr(obj, part)
    if not callable(obj):
        raise CostError(f'{where}.name: {spec!r} is not callable')
    return obj


# ------------------------------------------------------------------------------------------------------ building

def _number(where: str, key: str, value: Any, *, low: float | None = None, strict: bool = False,
            high: float | None = None, integer: bool = False) -> Any:
    kind = 'an integer' if integer else 'a number'
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        raise CostError(f'{where}.{key}: expected {kind}, got {type(value).__name__} {value!r}')
    if low is not None and (value <= low if strict else value < low):
        raise CostError(f'{where}.{key}: must be {">" if strict else ">="} {low}, got {value!r}')
    if high is not None and value > high:
        raise CostError(f'{where}.{key}: must be <= {high}, got {value!r}')
    return value


def validate_cost_section(section: Any, source: str = 'config') -> dict[str, Any]:
    """Check a ``cost:`` section's keys and values without measuring anything (cheap: for config loading).

    Returns the options with defaults filled in; raises :class:`CostError` naming ``source``, the key and what is
    allowed. A callable's import path is only checked for its form here; :func:`build_cost` imports it.
    """
    return _validate(section, f'{source}: cost')[0]


def _validate(section: Any, where: str) -> tuple[dict[str, Any], str]:
    """Check keys and values; returns (options with defaults filled in, cost name or callable path)."""
    if not isinstance(section, Mapping):
        raise CostError(f'{where}: expected a mapping with keys {list(COMMON_KEYS)}, got {type(section).__name__}')
    options = dict(section)
    if 'name' not in options:
        raise CostError(f"{where}: missing key 'name'; a cost needs a name and a target (or target_quantile)")
    if ('target' in options) == ('target_quantile' in options):
        raise CostError(f"{where}: give exactly one of 'target' (in the cost's unit) and 'target_quantile' (a "
                        f"quantile of the costs of the surrogate's random architectures, e.g. 0.25)")
    name = options['name']
    if not isinstance(name, str) or not name:
        raise CostError(f'{where}.name: expected a cost name {sorted(COSTS)} or \'package.module:function\', '
                        f'got {name!r}')
    if name in COSTS:
        extra = COSTS[name].keys
    elif ':' in name:
        extra = ('call_with',)
    else:
        raise CostError(f"{where}.name: unknown cost {name!r}; registered costs are {sorted(COSTS)}, or give a "
                        f"callable as 'package.module:function'")
    allowed = COMMON_KEYS + extra
    unknown = sorted(map(str, set(options) - set(allowed)))
    if unknown:
        raise CostError(f'{where}: unknown key(s) {unknown} for cost {name!r}; allowed keys are {list(allowed)}')
    if 'target' in options:
        _number(where, 'target', options['target'], low=0, strict=True)
    else:
        _number(where, 'target_quantile', options['target_quantile'], low=0, high=1)
    _number(where, 'weight', options.setdefault('weight', 0.1), low=0)
    _number(where, 'anneal', options.setdefault('anneal', 1.0), low=0, high=1)
    if options.get('anneal_steps') is not None:
        _number(where, 'anneal_steps', options['anneal_steps'], low=0, integer=True)
    for key in ('batch_size', 'repeats', 'num_threads', 'num_classes'):
        if options.get(key) is not None:
            _number(where, key, options[key], low=1, integer=True)
    if 'warmup' in options:
        _number(where, 'warmup', options['warmup'], low=0, integer=True)
    if 'dtype' in options and options['dtype'] not in DTYPES:
        raise CostError(f'{where}.dtype: unknown value {options["dtype"]!r}; allowed values are {list(DTYPES)}')
    if 'channels_last' in options and not isinstance(options['channels_last'], bool):
        raise CostError(f'{where}.channels_last: expected true or false, got {options["channels_last"]!r}')
    if 'input_size' in options:
        size = options['input_size']
        if (not isinstance(size, (list, tuple)) or len(size) != 3
                or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
            raise CostError(f'{where}.input_size: expected [channels, height, width] of positive integers, '
                            f'got {size!r}')
    if 'statistic' in options and options['statistic'] not in STATISTICS:
        raise CostError(f'{where}.statistic: unknown value {options["statistic"]!r}; allowed values are '
                        f'{list(STATISTICS)}')
    if 'call_with' in options and options['call_with'] not in CALL_WITH:
        raise CostError(f'{where}.call_with: unknown value {options["call_with"]!r}; allowed values are '
                        f'{list(CALL_WITH)}')
    if 'device' in options and not isinstance(options['device'], str):
        raise CostError(f'{where}.device: expected a string such as cpu, cuda or cuda:0, got {options["device"]!r}')
    if 'cache' in options and not isinstance(options['cache'], (str, type(None))):
        raise CostError(f'{where}.cache: expected a file path, got {options["cache"]!r}')
    surrogate = options.get('surrogate') or {}
    if not isinstance(surrogate, Mapping):
        raise CostError(f'{where}.surrogate: expected a mapping with keys {list(SURROGATE_KEYS)}')
    unknown = sorted(map(str, set(surrogate) - set(SURROGATE_KEYS)))
    if unknown:
        raise CostError(f'{where}.surrogate: unknown key(s) {unknown}; allowed keys are {list(SURROGATE_KEYS)}')
    surrogate = {**SURROGATE_DEFAULTS, **surrogate}
    sw = f'{where}.surrogate'
    _number(sw, 'samples', surrogate['samples'], low=2, integer=True)
    _number(sw, 'holdout', surrogate['holdout'], low=0, high=0.5)
    if surrogate['ridge'] != 'auto':
        _number(sw, 'ridge', surrogate['ridge'], low=0)
    _number(sw, 'refit_every', surrogate['refit_every'], low=0, integer=True)
    _number(sw, 'seed', surrogate['seed'], integer=True)
    if surrogate['path'] is not None and not isinstance(surrogate['path'], str):
        raise CostError(f'{sw}.path: expected a file path, got {surrogate["path"]!r}')
    options['surrogate'] = surrogate
    return options, name


def _resolve_device(where: str, requested: str | torch.device) -> torch.device:
    text = str(requested)
    if text == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(text)
    except RuntimeError:
        raise CostError(f'{where}.device: unknown device {text!r}; use cpu, cuda or cuda:N') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CostError(f'{where}.device: CUDA timing was asked for ({text!r}) but CUDA is not available on this '
                        f'machine; use device: cpu')
    return device


def _default_model_fn(dist: Any, num_classes: int) -> tuple[Callable[[Any], nn.Module] | None, str]:
    from unas_zoo.search.distributions import MBConvDistribution
    if isinstance(dist, MBConvDistribution):
        import timm
        import unas_zoo  # noqa: F401  (registers 'mbconv_net' with timm)
        return (lambda g: timm.create_model('mbconv_net', genotype=g, num_classes=num_classes),
                f'mbconv_net/classes={num_classes}')
    return None, 'none'


def build_cost(section: Mapping[str, Any], *, dist: Any, device: str | torch.device = 'cpu',
               input_size: tuple[int, ...] | None = None, num_classes: int = 1000,
               model_fn: Callable[[Any], nn.Module] | None = None, model_tag: str | None = None,
               total_steps: int | None = None, output_dir: str | Path | None = None, source: str = 'config',
               log: Callable[[str], None] | None = print) -> CostTerm:
    """Validate a config's ``cost:`` section and build its :class:`CostTerm` (fitting or loading the surrogate).

    ``dist`` is the search's ``ArchDistribution``; ``device``/``input_size``/``num_classes`` are the search's and the
    defaults for measuring; ``model_fn(genotype)`` builds the child (default for the MBConv space:
    ``timm.create_model('mbconv_net', genotype=g, num_classes=...)``). ``total_steps`` (φ steps of the search)
    turns ``anneal`` (a fraction) into ``anneal_steps``. The fitted surrogate is saved to ``surrogate.path`` or,
    without one, to ``output_dir/<cost>_surrogate.safetensors``. Raises :class:`CostError` on bad input.
    """
    where = f'{source}: cost'
    options, name = _validate(section, where)
    device = _resolve_device(where, options.get('device', device))
    num_classes = options.get('num_classes', num_classes)
    input_size = tuple(options.get('input_size') or input_size or (3, 224, 224))
    if model_fn is None:
        model_fn, default_tag = _default_model_fn(dist, num_classes)
        model_tag = model_tag or default_tag
    ctx = CostContext(options, dist, device, input_size, num_classes, model_fn, model_tag or 'custom', where)
    to_input: Callable[[dict[str, int]], Any] = dist.to_genotype
    if name in COSTS:
        unit, label = COSTS[name].unit, f'cost {name!r}'
        try:
            raw, context = COSTS[name].factory(ctx)
        except LatencyError as e:
            raise CostError(f'{where}: {e}') from None
    else:
        unit, label = '', f'cost callable {name!r}'
        raw, context = _import_callable(name, where), {'cost': name}
        if options.get('call_with') == 'indices':
            to_input = dict
    measure_arch = _Measured(_checked(raw, label, where), to_input, tuple(dist.choices),
                             options['surrogate']['refit_every'])
    surrogate = measure_arch.surrogate = _load_or_fit_surrogate(
        dist, measure_arch, context, options['surrogate'], name, output_dir, where, log)
    flush = getattr(raw, 'flush', None)
    if flush is not None:
        flush()
    if 'target' in options:
        target = float(options['target'])
    else:  # device-independent: e.g. 0.25 asks for an architecture faster than 75% of random ones
        target = float(torch.quantile(surrogate.initial_costs(), options['target_quantile']))
        if target <= 0:
            raise CostError(f'{where}.target_quantile: gives target {target:g}, but a target must be > 0')
        if log:
            log(f'cost {name}: target {target:.4g} {unit} (quantile {options["target_quantile"]:g} of the '
                f'random architectures)')
    anneal_steps = options.get('anneal_steps')
    if anneal_steps is None and total_steps:
        anneal_steps = round(options['anneal'] * total_steps)
    return CostTerm(
        name=name, target=target, final_weight=float(options['weight']),
        anneal_steps=anneal_steps, anneal=float(options['anneal']),
        cost_fn=measure_arch.cost_fn, surrogate=surrogate, unit=unit, surrogate_model=surrogate,
        measure=lambda genotype: measure_arch(dist.encode(genotype)), timing=getattr(raw, 'spec', None),
        num_classes=num_classes, flush_fn=flush, build_fn=ctx.build, measured=measure_arch,
        info={'context': context, 'surrogate': surrogate.stats})


class _Measured:
    """Architecture -> cost, measured once per architecture (memo), feeding new measurements to the surrogate.

    Its state (memo, refit counter) and the surrogate's go into search checkpoints, so that a resumed search
    measures, observes and refits exactly as an uninterrupted one.
    """

    def __init__(self, measure: Callable[[Any], float], to_input: Callable[[dict[str, int]], Any],
                 names: tuple[str, ...], refit_every: int):
        self.measure, self.to_input, self.names, self.refit_every = measure, to_input, names, refit_every
        self.surrogate: LinearSurrogate | None = None  # set once fitted (the fit itself measures architectures)
        self.memo: dict[tuple[int, ...], float] = {}
        self.pending = 0                                # observations since the last refit

    def __call__(self, arch: dict[str, int]) -> float:
        key = tuple(arch[k] for k in self.names)
        if key not in self.memo:
            self.memo[key] = self.measure(self.to_input(arch))
        return self.memo[key]

    def cost_fn(self, indices: Mapping[str, Tensor]) -> Tensor:
        """indices ([] or [N] tensors) -> measured costs of the same shape; new ones are observed by the surrogate."""
        # Refit *before* measuring this sample: the control variate must not depend on the sample it corrects,
        # or RELAX would lose its unbiasedness.
        if self.refit_every and self.pending >= self.refit_every:
            self.surrogate.refit()
            self.pending = 0
        first = torch.as_tensor(next(iter(indices.values())))
        flat = {k: torch.as_tensor(v).reshape(-1).tolist() for k, v in indices.items()}
        values, new = [], []
        for n in range(first.numel()):
            arch = {k: v[n] for k, v in flat.items()}
            seen = tuple(arch[k] for k in self.names) in self.memo
            values.append(self(arch))
            if not seen:
                new.append(arch)
        if self.refit_every and new:
            self.surrogate.observe(torch.stack([self.surrogate.encode(a) for a in new]),
                                   torch.tensor([self(a) for a in new], dtype=torch.float64))
            self.pending += len(new)
        return torch.tensor(values, dtype=torch.float32, device=first.device).reshape(first.shape)

    def state_dict(self) -> dict[str, Any]:
        keys = torch.tensor(list(self.memo), dtype=torch.long).reshape(len(self.memo), len(self.names))
        return {'memo_keys': keys, 'memo_values': torch.tensor(list(self.memo.values()), dtype=torch.float64),
                'pending': self.pending, 'surrogate': self.surrogate.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.memo = dict(zip(map(tuple, state['memo_keys'].tolist()), state['memo_values'].tolist()))
        self.pending = int(state['pending'])
        self.surrogate.load_state_dict(state['surrogate'])


def _checked(measure: Callable[[Any], float], label: str, where: str) -> Callable[[Any], float]:
    """Turn exceptions and non-finite values of a measurement into a one-line :class:`CostError`."""
    def checked(arch: Any) -> float:
        try:
            value = measure(arch)
        except CostError:
            raise
        except Exception as e:  # noqa: BLE001 -- any failure of a user's measurement is reported in one line
            raise CostError(f'{where}: {label} raised {type(e).__name__}: {e}') from None
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise CostError(f'{where}: {label} returned {value!r}; a cost must be a finite number') from None
        if not math.isfinite(value):
            raise CostError(f'{where}: {label} returned {value}; a cost must be a finite number')
        return value
    return checked


def _load_or_fit_surrogate(dist: Any, measure_arch: Callable[[dict[str, int]], float], context: dict, opts: dict,
                           name: str, output_dir: str | Path | None, where: str,
                           log: Callable[[str], None] | None) -> LinearSurrogate:
    """Load ``surrogate.path`` (default: ``output_dir/<cost>_surrogate.safetensors``) when it exists and fits this
    space and measurement; otherwise measure random architectures, fit, and save there."""
    choices = {k: tuple(str(label) for label in labels) for k, labels in dist.choices.items()}
    path = Path(opts['path']) if opts['path'] else None
    if path is None and output_dir is not None:  # the run's own copy: a resumed run loads it instead of refitting
        path = Path(output_dir) / f'{name.replace(":", "_").replace(".", "_")}_surrogate.safetensors'
    if path is not None and path.is_file():
        try:
            surrogate = LinearSurrogate.load(path)
        except LatencyError as e:
            raise CostError(f'{where}.surrogate.path: {e}') from None
        if surrogate.choices != choices or surrogate.context != context:
            what = 'search space' if surrogate.choices != choices else f'measurement context {surrogate.context}'
            raise CostError(f'{where}.surrogate.path: {path} was fitted for another {what}; this search measures '
                            f'{context}; delete the file or point surrogate.path elsewhere to refit')
        if log:
            log(f'cost {name}: loaded surrogate {path} ({surrogate.buffer_size} samples)')
        return surrogate
    surrogate = fit_surrogate(choices, measure_arch, opts['samples'], ridge=opts['ridge'], holdout=opts['holdout'],
                              generator=torch.Generator().manual_seed(opts['seed']), log=log)
    surrogate.context = context
    if log:
        held = surrogate.stats.get('holdout')
        err = (f'held-out MAE {held["mae"]:.4g}, relative error {held["relative_error"]:.2%}, R² {held["r2"]:.3f}'
               if held else 'no held-out split')
        log(f'cost {name}: linear surrogate fitted on {opts["samples"]} random architectures ({err})')
    if path is not None:
        surrogate.save(path)
    return surrogate
