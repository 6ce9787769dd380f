"""Latency of discrete architectures measured on the device, a file-backed cache, and a linear surrogate.

The UNAS latency search (paper §5) measures the latency of each sampled child network on the target device and
uses a linear model g(z) = Σ_ij l_ij z_ij + b of the one-hot architecture encoding only as the RELAX control
variate. This module provides the three pieces:

* :func:`time_model` -- times one network in eval mode under ``torch.inference_mode()``: CUDA events with
  synchronisation on GPU, ``time.perf_counter`` with a pinned thread count on CPU; warm-up, then median and IQR of
  ``repeats`` forward passes at batch 32 by default (the paper's setting). With ``runtime='onnxruntime'`` the
  network is exported to ONNX and timed in ONNX Runtime on the CPU instead (pinned intra-op threads), where layer
  fusion makes latency no sum of per-layer costs.
* :class:`LatencyCache` / :class:`LatencyMeter` -- per-architecture results in a JSON file that survives restarts,
  keyed by everything that changes a timing (device name, dtype, batch, input size, threads, torch version, ...).
* :class:`LinearSurrogate` -- ridge regression on measured random architectures with held-out error, saved as
  safetensors, differentiable in relaxed weights, optionally refit on architectures measured during search.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn as nn

from ._io import atomic_path, atomic_write_text, remove_stale_temps

__all__ = [
    'LatencyError', 'TimingSpec', 'Timing', 'time_model', 'device_name', 'architecture_key',
    'LatencyCache', 'LatencyMeter', 'LinearSurrogate', 'fit_surrogate', 'random_architectures',
    'DTYPES', 'STATISTICS', 'RUNTIMES', 'REFERENCE_MODELS', 'compare_latency', 'format_latency_table',
    'default_cache_path',
]

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
STATISTICS = ('median', 'min', 'mean')
RUNTIMES = ('torch', 'onnxruntime')
# The networks a latency search is compared against (paper Table 3), timed on the same device as the result.
REFERENCE_MODELS = ('unas_mbconv_gpu', 'proxylessnas_gpu', 'mobilenetv2_100')
_SURROGATE_FORMAT = 'unas_zoo.linear_surrogate/1'
# Candidate ridge penalties (per sample) for ``ridge='auto'``.
RIDGE_GRID = tuple(10.0 ** e for e in range(-6, 3))


class LatencyError(ValueError):
    """A timing cannot be made as asked (e.g. CUDA timing without CUDA, a bad dtype); the message says why."""


# ----------------------------------------------------------------------------------------------------------- timing

@dataclass(frozen=True)
class TimingSpec:
    """How to time a network. Every field that can change a timing is part of the cache key."""
    device: str = 'cpu'
    batch_size: int = 32
    input_size: tuple[int, ...] = (3, 224, 224)
    dtype: str = 'float32'            # 'float32' | 'bfloat16' | 'float16' (the last two through autocast)
    channels_last: bool = False
    warmup: int = 10
    repeats: int = 30
    num_threads: int | None = None    # CPU only; None: torch's current thread count (recorded in the key)
    statistic: str = 'median'         # what a meter reports: 'median', or 'min' (robust when other work interferes)
    runtime: str = 'torch'            # 'torch' | 'onnxruntime' (the ONNX export timed in ONNX Runtime, CPU, fp32)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise LatencyError(f'dtype {self.dtype!r} is not supported; allowed values are {list(DTYPES)}')
        if self.statistic not in STATISTICS:
            raise LatencyError(f'statistic {self.statistic!r} is not supported; allowed values are {list(STATISTICS)}')
        for name in ('batch_size', 'repeats'):
            if int(getattr(self, name)) < 1:
                raise LatencyError(f'{name} must be >= 1, got {getattr(self, name)}')
        if self.warmup < 0:
            raise LatencyError(f'warmup must be >= 0, got {self.warmup}')
        if self.num_threads is not None and self.num_threads < 1:
            raise LatencyError(f'num_threads must be >= 1, got {self.num_threads}')
        if self.runtime not in RUNTIMES:
            raise LatencyError(f'runtime {self.runtime!r} is not supported; allowed values are {list(RUNTIMES)}')
        if self.runtime == 'onnxruntime' and (self.device != 'cpu' or self.dtype != 'float32' or self.channels_last):
            raise LatencyError(f'runtime onnxruntime times float32 on the cpu (NCHW); got device {self.device!r}, '
                               f'dtype {self.dtype!r}, channels_last {self.channels_last}')
        object.__setattr__(self, 'input_size', tuple(int(s) for s in self.input_size))

    def torch_device(self) -> torch.device:
        """The device to time on; a clear error when CUDA is asked for but absent."""
        device = torch.device(self.device)
        if device.type == 'cuda' and not torch.cuda.is_available():
            raise LatencyError(f'CUDA timing was requested (device {self.device!r}) but CUDA is not available '
                               f'on this machine; use device: cpu or run on a GPU machine')
        if device.type not in ('cpu', 'cuda'):
            raise LatencyError(f'timing on device type {device.type!r} is not supported; use cpu or cuda')
        return device

    def threads(self) -> int | None:
        return (self.num_threads or torch.get_num_threads()) if self.torch_device().type == 'cpu' else None

    def context(self, model_tag: str = '') -> dict[str, Any]:
        """What a cached timing is valid for (all its statistics are cached, so ``statistic`` is not part of it)."""
        if self.runtime == 'onnxruntime':  # torch-runtime keys stay as they were, so existing caches stay valid
            from .export import ort_version
            return {**self._torch_context(model_tag), 'runtime': 'onnxruntime', 'onnxruntime': ort_version()}
        return self._torch_context(model_tag)

    def _torch_context(self, model_tag: str) -> dict[str, Any]:
        return {
            'device': device_name(self.torch_device()),
            'dtype': self.dtype,
            'batch_size': self.batch_size,
            'input_size': list(self.input_size),
            'channels_last': self.channels_last,
            'num_threads': self.threads(),
            'torch': torch.__version__,
            'model': model_tag,
        }


@dataclass(frozen=True)
class Timing:
    """Forward-pass latency statistics in milliseconds."""
    median_ms: float
    iqr_ms: float
    mean_ms: float
    min_ms: float
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_times(cls, times_ms: Sequence[float]) -> Timing:
        times = sorted(float(t) for t in times_ms)
        if len(times) > 1:
            q1, _, q3 = statistics.quantiles(times, n=4, method='inclusive')
        else:
            q1 = q3 = times[0]
        return cls(statistics.median(times), q3 - q1, statistics.fmean(times), times[0], len(times))


def device_name(device: torch.device | str) -> str:
    """A name for the hardware: the GPU's product name, or the CPU model string."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return 'cpu: ' + line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'cpu: ' + (platform.processor() or platform.machine())


@contextlib.contextmanager
def _pinned_threads(num_threads: int | None) -> Iterator[None]:
    """Run with ``num_threads`` intra-op threads, restoring the previous count afterwards."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def time_model(model: nn.Module, spec: TimingSpec = TimingSpec()) -> Timing:
    """Median / IQR latency of ``model`` on a random ``[batch, *input_size]`` batch, in eval mode.

    The model is moved to the spec's device (and to channels_last when asked); its train/eval mode is restored.
    """
    if spec.runtime == 'onnxruntime':
        return _time_onnxruntime(model, spec)
    device = spec.torch_device()
    was_training = model.training
    model = model.to(device).eval()
    x = torch.randn(spec.batch_size, *spec.input_size, device=device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=DTYPES[spec.dtype]) if spec.dtype != 'float32'
                else contextlib.nullcontext())
    times: list[float] = []
    try:
        with torch.inference_mode(), autocast, _pinned_threads(spec.threads()):
            for _ in range(spec.warmup):
                model(x)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
                for _ in range(spec.repeats):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    model(x)
                    end.record()
                    # Synchronise every repeat: latency of one isolated batch, not pipelined throughput.
                    torch.cuda.synchronize(device)
                    times.append(start.elapsed_time(end))
            else:
                for _ in range(spec.repeats):
                    start = time.perf_counter()
                    model(x)
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return Timing.from_times(times)


def _time_onnxruntime(model: nn.Module, spec: TimingSpec) -> Timing:
    """Export ``model`` to ONNX (dynamic batch) and time it in ONNX Runtime on the CPU with pinned threads."""
    from .export import ExportError, onnx_bytes, ort_session
    try:
        session = ort_session(onnx_bytes(model.cpu(), spec.input_size), threads=spec.threads())
    except ExportError as e:
        raise LatencyError(str(e)) from None
    x = {'input': torch.randn(spec.batch_size, *spec.input_size).numpy()}
    for _ in range(spec.warmup):
        session.run(None, x)
    times = []
    for _ in range(spec.repeats):
        start = time.perf_counter()
        session.run(None, x)
        times.append((time.perf_counter() - start) * 1e3)
    return Timing.from_times(times)


# ------------------------------------------------------------------------------------------------------------ cache

def architecture_key(genotype: Any) -> str:
    """A stable key for an architecture: its genotype without name, provenance and metrics."""
    if hasattr(genotype, 'to_dict'):
        data = {k: v for k, v in genotype.to_dict().items() if k not in ('name', 'provenance', 'metrics')}
    else:
        data = genotype
    text = json.dumps(data, sort_keys=True, separators=(',', ':'), default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


def default_cache_path() -> Path:
    """``$UNAS_ZOO_CACHE/latency.json``, or ``~/.cache/unas_zoo/latency.json``."""
    root = os.environ.get('UNAS_ZOO_CACHE') or Path.home() / '.cache' / 'unas_zoo'
    return Path(root) / 'latency.json'


def _context_key(context: Mapping[str, Any]) -> str:
    return hashlib.sha1(json.dumps(context, sort_keys=True).encode()).hexdigest()[:16]


def _cache_slot_problem(slot: Any) -> str | None:
    """What is wrong with one context of a cache file (None: nothing): entries must be complete, finite timings."""
    if not isinstance(slot, dict) or not isinstance(slot.get('context'), dict) \
            or not isinstance(slot.get('entries'), dict):
        return 'expected a mapping with "context" and "entries" mappings'
    fields = set(Timing.__dataclass_fields__)
    for key, entry in slot['entries'].items():
        if not isinstance(entry, dict) or set(entry) != fields:
            return f'entry {key}: expected the fields {sorted(fields)}, got {entry!r}'
        bad = [k for k, v in entry.items() if isinstance(v, bool) or not isinstance(v, (int, float))
               or not math.isfinite(v) or v < 0]
        if bad:
            return f'entry {key}: {bad[0]} is {entry[bad[0]]!r}, expected a finite number >= 0'
    return None


class LatencyCache:
    """Timings per (context, architecture key) in a JSON file.

    Writes are atomic (temp file + rename) and merge with what is on disk, so processes sharing the file do not
    lose each other's entries. New entries are written every ``flush_every`` insertions and on :meth:`flush`; a
    crash loses at most the unflushed ones.
    """

    def __init__(self, path: str | os.PathLike | None = None, flush_every: int = 32):
        self.path = Path(path) if path is not None else default_cache_path()
        self.flush_every = flush_every
        self._data: dict[str, dict[str, Any]] = self._read()
        self._pending = 0
        remove_stale_temps(self.path.parent)  # partial caches of killed writers

    def _read(self) -> dict[str, dict[str, Any]]:
        """The file's contexts; anything that is not a cache of valid timings is refused naming the file."""
        if self.path.exists() and not self.path.is_file():
            raise LatencyError(f'{self.path}: the latency cache path is not a file (a folder?); remove it or pass '
                               f'another cache path')
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding='utf-8'))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LatencyError(f'{self.path}: latency cache is not readable JSON ({" ".join(str(e).split())}); '
                               f'delete it to start a new one') from None
        if not isinstance(data, dict) or not isinstance(data.get('contexts'), dict):
            raise LatencyError(f'{self.path}: not a unas_zoo latency cache (no "contexts" mapping); delete it to '
                               f'start a new one')
        for ckey, slot in data['contexts'].items():
            problem = _cache_slot_problem(slot)
            if problem:
                raise LatencyError(f'{self.path}: latency cache context {ckey}: {problem}; delete the file to start '
                                   f'a new one')
        return data['contexts']

    def get(self, context: Mapping[str, Any], key: str) -> Timing | None:
        entry = self._data.get(_context_key(context), {}).get('entries', {}).get(key)
        return Timing(**entry) if entry is not None else None

    def put(self, context: Mapping[str, Any], key: str, timing: Timing) -> None:
        slot = self._data.setdefault(_context_key(context), {'context': dict(context), 'entries': {}})
        slot['entries'][key] = timing.to_dict()
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()

    def __len__(self) -> int:
        return sum(len(slot['entries']) for slot in self._data.values())

    def flush(self) -> None:
        """Merge with the file's current contents and write atomically."""
        if self._pending == 0:
            return
        on_disk = self._read()
        for ckey, slot in on_disk.items():
            mine = self._data.setdefault(ckey, {'context': slot['context'], 'entries': {}})
            mine['entries'] = {**slot['entries'], **mine['entries']}
        atomic_write_text(self.path, json.dumps({'format': 'unas_zoo.latency_cache/1', 'contexts': self._data}))
        self._pending = 0


class LatencyMeter:
    """Measures (and caches) the latency of architectures: genotype -> child network -> :func:`time_model`.

    ``model_fn`` builds the discrete child for a genotype (e.g. ``timm.create_model('mbconv_net', genotype=g)`` or
    ``supernet.child(g)``); ``model_tag`` names that builder in the cache key (e.g. its class count).
    """

    def __init__(self, model_fn: Callable[[Any], nn.Module], spec: TimingSpec = TimingSpec(),
                 cache: LatencyCache | None = None, model_tag: str = 'mbconv_net'):
        self.model_fn = model_fn
        self.spec = spec
        self.cache = cache
        self.context = spec.context(model_tag)  # also checks that the device exists
        self.hits = 0
        self.misses = 0

    def timing(self, genotype: Any) -> Timing:
        key = architecture_key(genotype)
        cached = self.cache.get(self.context, key) if self.cache is not None else None
        if cached is not None:
            self.hits += 1
            return cached
        self.misses += 1
        timing = time_model(self.model_fn(genotype), self.spec)
        if self.cache is not None:
            self.cache.put(self.context, key, timing)
        return timing

    def __call__(self, genotype: Any) -> float:
        """Latency in milliseconds: the spec's statistic (default the median) of the repeats."""
        return getattr(self.timing(genotype), f'{self.spec.statistic}_ms')

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.flush()


# -------------------------------------------------------------------------------------------------------- surrogate

class LinearSurrogate:
    """g(z) = Σ_v <l_v, z_v> + b over the one-hot (or relaxed) weights z_v of each architecture variable.

    ``choices`` maps variable names to their labels, in weight-vector order (as ``ArchDistribution.choices``).
    Calling it on ``{name: [K]}`` weights gives a scalar, on ``{name: [N, K]}`` a vector ``[N]``; it is
    differentiable in the weights, which is what RELAX needs of its control variate.
    """

    def __init__(self, choices: Mapping[str, Sequence[str]], weights: Mapping[str, torch.Tensor] | None = None,
                 bias: float = 0.0):
        self.choices = {name: tuple(labels) for name, labels in choices.items()}
        self.weights = {name: (weights[name].detach().double().cpu() if weights is not None
                               else torch.zeros(len(labels), dtype=torch.float64))
                        for name, labels in self.choices.items()}
        self.bias = float(bias)
        self.stats: dict[str, Any] = {}
        self.context: dict[str, Any] = {}
        self.ridge: float | str = 'auto'
        self._encodings = torch.zeros(0, self.dim, dtype=torch.float64)
        self._costs = torch.zeros(0, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return sum(len(labels) for labels in self.choices.values())

    def encode(self, indices: Mapping[str, Any]) -> torch.Tensor:
        """Concatenated one-hot encoding: ``[D]`` for one architecture, ``[N, D]`` for index tensors ``[N]``."""
        parts = [torch.nn.functional.one_hot(torch.as_tensor(indices[name]).long().cpu(), len(labels))
                 for name, labels in self.choices.items()]
        return torch.cat(parts, dim=-1).double()

    def __call__(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for name, coef in self.weights.items():
            w = weights[name]
            term = (w * coef.to(device=w.device, dtype=w.dtype)).sum(-1)
            total = term if total is None else total + term
        return total + self.bias

    def predict(self, indices: Mapping[str, Any]) -> torch.Tensor:
        """g of discrete architectures given as indices (ints -> scalar, ``[N]`` tensors -> ``[N]``)."""
        return self.encode(indices) @ self._flat_weights() + self.bias

    def _flat_weights(self) -> torch.Tensor:
        return torch.cat(list(self.weights.values()))

    def _set_flat(self, flat: torch.Tensor, bias: float) -> None:
        # New tensors, never in-place: a refit during search must not touch tensors saved in an autograd graph.
        out, i = {}, 0
        for name, labels in self.choices.items():
            out[name] = flat[i:i + len(labels)].clone()
            i += len(labels)
        self.weights, self.bias = out, float(bias)

    # ---- fitting
    @staticmethod
    def _solve(x: torch.Tensor, y: torch.Tensor, ridge: float | str) -> tuple[torch.Tensor, float, float]:
        """Ridge regression with an unpenalised bias; returns (coefficients, bias, the ridge used).

        The penalty is ``ridge * N * ||l||²``; ``'auto'`` picks it by generalised cross-validation (GCV) from a
        log grid, which matters when there are fewer samples than one-hot features or the timings are noisy.
        """
        x_mean, y_mean = x.mean(0), y.mean()
        xc, yc = x - x_mean, y - y_mean
        u, sv, vh = torch.linalg.svd(xc, full_matrices=False)
        uty = u.T @ yc
        if ridge == 'auto':
            n, best = len(x), None
            outside = float(yc @ yc - uty @ uty)  # residual outside the span of the encodings
            for candidate in RIDGE_GRID:
                shrink = sv ** 2 / (sv ** 2 + candidate * n)
                residual = outside + float((((1 - shrink) * uty) ** 2).sum())
                dof = float(shrink.sum()) + 1.0
                score = n * residual / max(n - dof, 1e-9) ** 2
                if best is None or score < best[0]:
                    best = (score, candidate)
            ridge = best[1]
        coef = vh.T @ (sv / (sv ** 2 + float(ridge) * len(x)) * uty)
        return coef, float(y_mean - x_mean @ coef), float(ridge)

    @staticmethod
    def _errors(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        err = pred - y
        sst = float(((y - y.mean()) ** 2).sum())
        return {
            'mae': float(err.abs().mean()),
            'rmse': float(err.pow(2).mean().sqrt()),
            'relative_error': float((err.abs() / y.abs().clamp_min(1e-12)).mean()),
            'r2': 1.0 - float(err.pow(2).sum()) / sst if sst > 0 else float('nan'),
        }

    def fit(self, encodings: torch.Tensor, costs: torch.Tensor, *, ridge: float | str = 'auto',
            holdout: float = 0.1, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Fit on ``[N, D]`` encodings and ``[N]`` measured costs; report held-out and training error.

        The held-out error is that of a fit on the other samples; the model kept is then refit on all of them.
        The samples stay in the buffer that :meth:`observe` extends during search.
        """
        x = torch.as_tensor(encodings, dtype=torch.float64).reshape(-1, self.dim)
        y = torch.as_tensor(costs, dtype=torch.float64).reshape(-1)
        if len(x) != len(y) or len(x) < 2:
            raise ValueError(f'need matching encodings and costs, at least 2; got {len(x)} and {len(y)}')
        if not torch.isfinite(y).all():
            raise ValueError('costs contain NaN or infinite values')
        self._encodings, self._costs, self.ridge = x, y, ridge
        stats: dict[str, Any] = {'samples': len(x)}
        num_holdout = int(round(holdout * len(x)))
        if 0 < num_holdout < len(x) - 1:
            perm = torch.randperm(len(x), generator=generator)
            test, train = perm[:num_holdout], perm[num_holdout:]
            coef, bias, _ = self._solve(x[train], y[train], ridge)
            stats['holdout'] = {'samples': num_holdout, **self._errors(x[test] @ coef + bias, y[test])}
        coef, bias, stats['ridge'] = self._solve(x, y, ridge)
        self._set_flat(coef, bias)
        stats['train'] = self._errors(x @ coef + bias, y)
        self.stats = stats
        return stats

    def observe(self, encodings: torch.Tensor, costs: torch.Tensor) -> None:
        """Add measured (encoding, cost) pairs to the buffer used by :meth:`refit`."""
        self._encodings = torch.cat([self._encodings, torch.as_tensor(encodings, dtype=torch.float64)
                                     .reshape(-1, self.dim)])
        self._costs = torch.cat([self._costs, torch.as_tensor(costs, dtype=torch.float64).reshape(-1)])

    def initial_costs(self) -> torch.Tensor:
        """The costs :meth:`fit` was given (the random architectures), without those observed later."""
        return self._costs[:self.stats.get('samples', len(self._costs))]

    @property
    def buffer_size(self) -> int:
        return len(self._costs)

    def refit(self) -> dict[str, float]:
        """Refit on everything in the buffer (initial samples + those observed during search)."""
        coef, bias, used = self._solve(self._encodings, self._costs, self.ridge)
        self._set_flat(coef, bias)
        errors = self._errors(self._encodings @ coef + bias, self._costs)
        self.stats = {**self.stats, 'refit': {'samples': self.buffer_size, 'ridge': used, **errors}}
        return errors

    def per_choice(self) -> dict[str, dict[str, float]]:
        """The fitted l_ij as {variable: {label: cost}} (the bias is spread over nothing: see ``bias``)."""
        return {name: dict(zip(labels, self.weights[name].tolist())) for name, labels in self.choices.items()}

    def state_dict(self) -> dict[str, Any]:
        """What refits change (weights, bias, sample buffer, stats), for a search checkpoint's exact resume."""
        return {'weights': self._flat_weights().clone(), 'bias': self.bias, 'encodings': self._encodings.clone(),
                'costs': self._costs.clone(), 'stats': json.dumps(self.stats), 'ridge': json.dumps(self.ridge)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._set_flat(state['weights'].double().cpu(), state['bias'])
        self._encodings, self._costs = state['encodings'].double().cpu(), state['costs'].double().cpu()
        self.stats, self.ridge = json.loads(state['stats']), json.loads(state['ridge'])

    # ---- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write weights, bias, sample buffer and metadata (choices, stats, context) as safetensors, atomically."""
        from safetensors.torch import save_file
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f'weight.{name}': w.contiguous() for name, w in self.weights.items()}
        tensors['bias'] = torch.tensor([self.bias], dtype=torch.float64)
        tensors['buffer.encodings'] = self._encodings.contiguous()
        tensors['buffer.costs'] = self._costs.contiguous()
        metadata = {
            'format': _SURROGATE_FORMAT,
            'choices': json.dumps(self.choices),
            'stats': json.dumps(self.stats),
            'context': json.dumps(self.context),
            'ridge': json.dumps(self.ridge),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> LinearSurrogate:
        from safetensors import safe_open
        path = Path(path)
        try:
            with safe_open(str(path), framework='pt') as f:
                metadata = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises several types for missing / corrupt files
            raise LatencyError(f'{path}: cannot read surrogate file ({e})') from None
        if metadata.get('format') != _SURROGATE_FORMAT:
            raise LatencyError(f'{path}: not a unas_zoo linear surrogate (format {metadata.get("format")!r})')
        choices = json.loads(metadata['choices'])
        surrogate = cls(choices, {name: tensors[f'weight.{name}'] for name in choices}, float(tensors['bias'][0]))
        surrogate._encodings, surrogate._costs = tensors['buffer.encodings'], tensors['buffer.costs']
        surrogate.stats = json.loads(metadata['stats'])
        surrogate.context = json.loads(metadata['context'])
        surrogate.ridge = json.loads(metadata['ridge'])
        return surrogate


def random_architectures(choices: Mapping[str, Sequence[str]], num: int,
                         generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """``num`` architectures drawn uniformly and independently per variable: ``{name: LongTensor[num]}``."""
    return {name: torch.randint(len(labels), (num,), generator=generator) for name, labels in choices.items()}


def fit_surrogate(choices: Mapping[str, Sequence[str]], measure: Callable[[dict[str, int]], float],
                  num_samples: int, *, ridge: float | str = 'auto', holdout: float = 0.1,
                  generator: torch.Generator | None = None,
                  log: Callable[[str], None] | None = None) -> LinearSurrogate:
    """Measure ``num_samples`` uniformly random architectures and fit a :class:`LinearSurrogate` to them.

    ``measure`` gets one architecture as ``{name: index}`` and returns its cost (e.g. latency in ms).
    """
    surrogate = LinearSurrogate(choices)
    archs = random_architectures(choices, num_samples, generator)
    costs = []
    report_every = max(1, num_samples // 10)
    start = time.perf_counter()
    for i in range(num_samples):
        costs.append(float(measure({name: int(idx[i]) for name, idx in archs.items()})))
        if log is not None and ((i + 1) % report_every == 0 or i + 1 == num_samples):
            log(f'surrogate: measured {i + 1}/{num_samples} architectures ({time.perf_counter() - start:.0f}s)')
    surrogate.fit(surrogate.encode(archs), torch.tensor(costs, dtype=torch.float64), ridge=ridge, holdout=holdout,
                  generator=generator)
    return surrogate


# ------------------------------------------------------------------------------------------------------- comparison

def compare_latency(models: Mapping[str, Any] | Sequence[Any], spec: TimingSpec = TimingSpec(), *,
                    num_classes: int = 1000) -> list[dict[str, Any]]:
    """Time several networks on the same device with the same spec: one row per network.

    ``models`` maps display names to an ``nn.Module``, a timm model name (``'mobilenetv2_100'``, the zoo's
    ``'unas_mbconv_gpu'``) or an MBConv genotype (built with ``timm.create_model('mbconv_net', genotype=...)``);
    a plain sequence of names is also accepted. Rows hold ``model``, ``median_ms``, ``iqr_ms``, ``params_m``.
    """
    import timm

    if not isinstance(models, Mapping):
        models = {str(m): m for m in models}
    rows = []
    for label, model in models.items():
        if isinstance(model, str):
            model = timm.create_model(model, num_classes=num_classes)
        elif not isinstance(model, nn.Module):
            model = timm.create_model('mbconv_net', genotype=model, num_classes=num_classes)
        timing = time_model(model, spec)
        rows.append({'model': label, 'median_ms': timing.median_ms, 'iqr_ms': timing.iqr_ms,
                     'params_m': sum(p.numel() for p in model.parameters()) / 1e6})
    return rows


def format_latency_table(rows: Sequence[Mapping[str, Any]], spec: TimingSpec | None = None) -> str:
    """A plain-text table of :func:`compare_latency` rows, headed by the device and spec when given."""
    lines = []
    if spec is not None:
        threads = spec.threads()
        lines.append(f'latency on {device_name(spec.torch_device())}, batch {spec.batch_size}, input '
                     f'{"x".join(map(str, spec.input_size))}, {spec.dtype}'
                     f'{", channels_last" if spec.channels_last else ""}'
                     f'{f", {threads} threads" if threads else ""}, median of {spec.repeats}')
    width = max([len('model')] + [len(str(r['model'])) for r in rows])
    lines.append(f'{"model":<{width}}  {"median ms":>10}  {"IQR ms":>8}  {"params M":>8}')
    for r in rows:
        lines.append(f'{r["model"]:<{width}}  {r["median_ms"]:>10.2f}  {r["iqr_ms"]:>8.2f}  {r["params_m"]:>8.2f}')
    return '\n'.join(lines)
