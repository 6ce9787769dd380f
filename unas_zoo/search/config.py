"""The search configuration: one flat dataclass, YAML recipes and strict validation.

``SearchConfig()`` *is* the embedded demo (``python search.py`` with no arguments; ``hparams/search_demo.yaml`` lists
the same values). The paper's settings live in ``hparams/search_{cifar10,cifar100,imagenet}.yaml``. Unknown keys,
wrong types and combinations that cannot work are refused with a :class:`SearchConfigError` naming the source, the key
and what is allowed, before anything is written.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from unas_zoo._io import safe_load_yaml
from unas_zoo.data import DATASETS
from unas_zoo.genotypes.schema import (
    CIFAR_SEARCH_OPS, DARTS_OPS, GenotypeError, MBConvBackbone, from_dict)
from .objectives import GEN_GAPS, OBJECTIVES

__all__ = ['SearchConfig', 'SearchConfigError', 'load_config', 'config_from_dict', 'config_to_dict', 'mbconv_backbone',
           'per_process_batch', 'SPACES', 'SAMPLING', 'DEVICES', 'REBAR_BASELINES', 'REBAR_ADAPT', 'GEN_GAPS']

SPACES = ('darts', 'mbconv')
SAMPLING = ('per_batch', 'per_example')
# darts supernet, per-example sampling: BN of an op run on the examples that chose it uses their statistics ('subset')
# or its running statistics, updated by them ('running'); see supernets.py.
SUBSET_BN = ('subset', 'running')
STEMS = ('cifar', 'imagenet')
DEVICES = ('auto', 'cpu', 'cuda')
REBAR_BASELINES = ('none', 'loo')
REBAR_ADAPT = ('none', 'eta', 'eta_temperature')
# Costs of costs.COSTS that build the child network (only the mbconv space has a builder for them).
_MODEL_COSTS = ('latency', 'ort_latency', 'macs', 'params', 'peak_memory')
# Must match estimators.ESTIMATORS (a test checks it); kept here so that reading a config imports no search code.
ESTIMATOR_NAMES = ('reinforce', 'rloo', 'gumbel', 'rebar', 'relax', 'darts')


class SearchConfigError(ValueError):
    """A search configuration is unreadable, has unknown keys, wrong values or incompatible options."""


@dataclass
class SearchConfig:
    """Every knob of a search. Defaults: the CPU demo (digits, small DARTS supernet, RLOO with K=4, L_gen)."""
    # ---- data
    dataset: str = 'digits'              # digits | cifar10 | cifar100 | imagefolder
    data_dir: str | None = None          # CIFAR: folder holding torchvision's cifar-*-py; imagefolder: holds train/
    download: bool = False               # CIFAR only, and only when asked
    image_size: int | None = 16          # None: the dataset's own size (digits are rendered at this size)
    val_fraction: float = 0.1            # the paper's 90/10 split of the train set
    batch_size: int = 32                 # per process; the train and the validation batch have this size each
    global_batch_size: int | None = None  # set: overrides batch_size with global_batch_size / number of processes
    num_workers: int = 0
    augment: bool = False                # random crop (padding 4) + horizontal flip, seeded per example
    # ---- search space and supernet
    space: str = 'darts'                 # darts | mbconv
    ops: list[str] = field(default_factory=lambda: list(CIFAR_SEARCH_OPS))   # darts: candidate ops, in order
    init_channels: int = 8               # darts supernet width C
    layers: int = 5                      # darts supernet cells (reductions at 1/3 and 2/3)
    stem: str = 'cifar'                  # darts supernet stem: cifar | imagenet
    backbone: dict = field(default_factory=dict)   # mbconv: overrides of MBConvBackbone fields
    zero_dropout: float = 0.0            # mbconv: dropout on the 'zero' (skip) choice during search (paper: 0.1)
    # ---- schedule
    epochs: int = 12                     # total epochs, warm-up included
    warmup_epochs: int = 6               # epochs that train w only (φ frozen); cheap: only sampled children run
    # ---- network weights w: Adam, cosine schedule per step
    w_lr: float = 3e-3                   # demo: 5x the paper's 6e-4, for a run of a few hundred steps
    w_lr_min: float = 3e-4
    w_weight_decay: float = 3e-4
    grad_clip: float = 5.0
    # ---- architecture parameters φ: Adam, cosine schedule per φ step
    phi_lr: float = 3e-2                 # demo: 15x the paper's 2e-3: φ has ~250 steps to move
    phi_lr_min: float = 6e-3
    phi_weight_decay: float = 1e-6
    # ---- estimator and objective
    estimator: str = 'rloo'              # reinforce | rloo | gumbel | rebar | relax | darts (paper: rebar)
    sampling: str = 'per_batch'          # per_batch | per_example (one architecture per example)
    subset_bn: str = 'subset'            # per_example: BN of ops on a few examples uses subset | running statistics
    arch_samples: int = 4                # per_batch + a leave-one-out baseline: K architectures on the same batch
    rebar_baseline: str = 'none'         # rebar/relax: none (the paper) | loo (leave-one-out over the K samples)
    rebar_adapt: str = 'none'            # rebar/relax: none (η=1, the paper) | eta | eta_temperature (min. ||g||²)
    temperature: float = 0.4
    objective: str = 'gen'               # gen (L_train + λ|L_val − L_train|) | train | val
    gen_gap: str = 'pair'                # pair: mean of |ℓ_val,i − ℓ_train,i| | batch: |mean ℓ_val − mean ℓ_train|
    gen_lambda: float = 0.5
    arch_lambda: float = 0.2
    cost: dict | None = None             # optional cost term, passed verbatim to unas_zoo.search.costs.build_cost
    # ---- run
    seed: int = 0
    device: str = 'auto'                 # auto | cpu | cuda | cuda:N
    threads: int | None = 1              # torch intra-op threads per process (null: torch's default, one per core)
    output: str | None = None            # default: output/search/<date-time>-<dataset>-<space>
    log_every: int = 10                  # steps between progress lines
    checkpoint_every: int = 0            # steps between extra checkpoints (0: at the end of every epoch only)
    stop_after_steps: int | None = None  # stop (with a resumable checkpoint) after this many steps in total
    save_rank_state: bool = False        # diagnostics: every rank writes rank<r>_final.pt (φ logits and w)

    @property
    def search_epochs(self) -> int:
        return self.epochs - self.warmup_epochs

    @property
    def leave_one_out(self) -> bool:
        """Whether the φ step's baseline is built from the other samples (rloo, or rebar/relax with loo)."""
        return self.estimator == 'rloo' or self.rebar_baseline == 'loo'

    @property
    def batch_architectures(self) -> int | None:
        """K architectures scored on the same batch by the φ step (per_batch with a leave-one-out baseline), else
        None: one per batch (per_batch, as in the paper) or one per example (per_example)."""
        return self.arch_samples if self.sampling == 'per_batch' and self.leave_one_out else None


_FIELDS = {f.name: f for f in dataclasses.fields(SearchConfig)}
_TYPES = typing.get_type_hints(SearchConfig)


def _type_name(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else tp
    name = {int: 'an integer', float: 'a number', bool: 'true or false', str: 'a string', dict: 'a mapping'}.get(
        base, 'a list of strings')
    return name + (' or null' if type(None) in typing.get_args(tp) else '')


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check one value against its field's type; ints are accepted for floats."""
    tp = _TYPES[key]
    optional = type(None) in typing.get_args(tp)
    if value is None:
        if optional:
            return None
        raise SearchConfigError(f'{source}: {key}: expected {_type_name(tp)}, got null')
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if optional else tp
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        dict: lambda v: isinstance(v, dict),
    }.get(base, lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v))
    if not ok(value):
        raise SearchConfigError(f'{source}: {key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}')
    if base is float:
        if not math.isfinite(value):
            raise SearchConfigError(f'{source}: {key}: expected a finite number, got {value}')
        return float(value)
    if typing.get_origin(base) is list:
        return list(value)
    return value


def _choice(source: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise SearchConfigError(f'{source}: {key}: unknown value {value!r}; allowed values are {list(allowed)}')


def _validate(cfg: SearchConfig, source: str) -> None:
    """Value ranges and option combinations that cannot work together."""
    def fail(key: str, msg: str) -> SearchConfigError:
        return SearchConfigError(f'{source}: {key}: {msg}')

    _choice(source, 'dataset', cfg.dataset, DATASETS)
    _choice(source, 'space', cfg.space, SPACES)
    _choice(source, 'stem', cfg.stem, STEMS)
    _choice(source, 'estimator', cfg.estimator, ESTIMATOR_NAMES)
    _choice(source, 'sampling', cfg.sampling, SAMPLING)
    _choice(source, 'subset_bn', cfg.subset_bn, SUBSET_BN)
    _choice(source, 'objective', cfg.objective, OBJECTIVES)
    _choice(source, 'rebar_baseline', cfg.rebar_baseline, REBAR_BASELINES)
    _choice(source, 'rebar_adapt', cfg.rebar_adapt, REBAR_ADAPT)
    _choice(source, 'gen_gap', cfg.gen_gap, GEN_GAPS)
    if cfg.device not in DEVICES and not cfg.device.startswith('cuda:'):
        raise fail('device', f'unknown value {cfg.device!r}; allowed values are {list(DEVICES)} or cuda:N')
    _validate_ranges(cfg, fail)
    _validate_estimator_options(cfg, fail)
    unknown_ops = [op for op in cfg.ops if op not in DARTS_OPS]
    if unknown_ops or not cfg.ops or len(set(cfg.ops)) != len(cfg.ops):
        raise fail('ops', f'expected distinct names from {list(DARTS_OPS)}, got {cfg.ops}')
    try:
        mbconv_backbone(cfg.backbone)
    except GenotypeError as e:
        raise SearchConfigError(f"{source}: {str(e).removeprefix('<backbone>: ')}") from None
    if cfg.estimator == 'darts' and cfg.sampling == 'per_example':
        raise fail('sampling', "the 'darts' estimator uses one deterministic softmax mixture, so it cannot sample "
                               "per example; use sampling: per_batch or another estimator")
    if cfg.cost is not None:
        from .costs import CostError, validate_cost_section  # costs imports torch-heavy latency code: load lazily
        try:
            validate_cost_section(cfg.cost, source)
        except CostError as e:
            raise SearchConfigError(str(e)) from None
    if cfg.cost is not None and cfg.space == 'darts' and cfg.cost.get('name') in _MODEL_COSTS:
        raise fail('cost', f"{cfg.cost.get('name')!r} is measured on the child network, and the darts space has no "
                           f"latency model or child builder for it; search the mbconv space, or give a callable "
                           f"cost 'package.module:function' that measures a darts genotype")
    if cfg.cost is not None and cfg.estimator in ('gumbel', 'darts'):
        raise fail('cost', f"a non-differentiable cost needs an unbiased estimator (reinforce, rloo, rebar or relax); "
                           f"{cfg.estimator!r} differentiates relaxed samples only")
    if cfg.device.startswith('cuda') and not torch.cuda.is_available():
        raise fail('device', f'{cfg.device!r} was asked for but CUDA is not available; use device: cpu or auto')


def _validate_ranges(cfg: SearchConfig, fail: typing.Callable[[str, str], SearchConfigError]) -> None:
    """Numbers that must be positive, non-negative or within an interval."""
    for key in ('batch_size', 'epochs', 'log_every', 'init_channels', 'layers', 'arch_samples'):
        if getattr(cfg, key) < 1:
            raise fail(key, f'must be >= 1, got {getattr(cfg, key)}')
    if cfg.batch_size < 2:
        raise fail('batch_size', 'must be >= 2 (batch norm needs two examples)')
    for key in ('num_workers', 'checkpoint_every', 'gen_lambda', 'arch_lambda', 'w_lr_min', 'phi_lr_min',
                'w_weight_decay', 'phi_weight_decay'):
        if getattr(cfg, key) < 0:
            raise fail(key, f'must be >= 0, got {getattr(cfg, key)}')
    for key in ('w_lr', 'phi_lr', 'temperature', 'grad_clip'):
        if getattr(cfg, key) <= 0:
            raise fail(key, f'must be > 0, got {getattr(cfg, key)}')
    if not 0 <= cfg.warmup_epochs <= cfg.epochs:
        raise fail('warmup_epochs', f'must lie in 0..epochs ({cfg.epochs}), got {cfg.warmup_epochs}')
    if not 0.0 < cfg.val_fraction < 1.0:
        raise fail('val_fraction', f'must lie strictly between 0 and 1, got {cfg.val_fraction}')
    if not 0.0 <= cfg.zero_dropout < 1.0:
        raise fail('zero_dropout', f'must lie in [0, 1), got {cfg.zero_dropout}')
    if cfg.image_size is not None and cfg.image_size < 8:
        raise fail('image_size', f'must be >= 8 or null, got {cfg.image_size}')
    for key in ('stop_after_steps', 'threads', 'global_batch_size'):
        if getattr(cfg, key) is not None and getattr(cfg, key) < 1:
            raise fail(key, f'must be >= 1 or null, got {getattr(cfg, key)}')


def _validate_estimator_options(cfg: SearchConfig, fail: typing.Callable[[str, str], SearchConfigError]) -> None:
    """The options of the φ step's estimator that only some estimators or sampling modes can use."""
    for key in ('rebar_baseline', 'rebar_adapt'):
        if getattr(cfg, key) != 'none' and cfg.estimator not in ('rebar', 'relax'):
            raise fail(key, f"{getattr(cfg, key)!r} applies to the rebar and relax estimators only, not "
                            f"{cfg.estimator!r}; use {key}: none")
    if cfg.batch_architectures is not None and cfg.arch_samples < 2:
        what = 'rloo' if cfg.estimator == 'rloo' else 'rebar_baseline: loo'
        raise fail('arch_samples', f'{what} with sampling: per_batch needs arch_samples >= 2 (the baseline of each '
                                   f'architecture is the mean of the others), got {cfg.arch_samples}')
    if cfg.gen_gap == 'batch' and cfg.sampling == 'per_example':
        raise fail('gen_gap', "'batch' is the gap of one architecture's batch losses, so it needs sampling: "
                              "per_batch; with per_example use gen_gap: pair")


def per_process_batch(cfg: SearchConfig, world_size: int) -> int:
    """The batch each process loads: ``global_batch_size / world_size`` when set, else ``batch_size``."""
    if cfg.global_batch_size is None:
        return cfg.batch_size
    per_process, remainder = divmod(cfg.global_batch_size, world_size)
    if remainder:
        raise SearchConfigError(f'global_batch_size: {cfg.global_batch_size} is not divisible by the number of '
                                f'processes ({world_size}); choose a multiple of {world_size} or another process count')
    if per_process < 2:
        raise SearchConfigError(f'global_batch_size: {cfg.global_batch_size} over {world_size} processes gives '
                                f'{per_process} example(s) per process; batch norm needs at least 2')
    return per_process


def mbconv_backbone(overrides: dict) -> MBConvBackbone:
    """The MBConv backbone with ``overrides`` of its fields, validated by the genotype schema."""
    depths = overrides.get('stage_depths') if isinstance(overrides, dict) else None
    if depths is None:
        depths = list(MBConvBackbone().stage_depths)
    num_layers = sum(depths) if isinstance(depths, list) and all(isinstance(d, int) for d in depths) else 1
    backbone = overrides
    probe = {'space': 'mbconv', 'backbone': backbone, 'layers': ['3x3_e3'] * num_layers}
    return from_dict(probe, '<backbone>').backbone


def config_from_dict(data: Any, source: str = '<config>') -> SearchConfig:
    """Validate a parsed mapping (missing keys keep their defaults) and build the config."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SearchConfigError(f'{source}: expected a mapping of config keys at the top level, '
                                f'got {type(data).__name__}')
    unknown = sorted(map(str, set(data) - set(_FIELDS)))
    if unknown:
        raise SearchConfigError(f'{source}: unknown key(s) {unknown}; valid keys are {sorted(_FIELDS)}')
    values = {key: _coerce(key, value, source) for key, value in data.items()}
    cfg = SearchConfig(**values)
    _validate(cfg, source)
    return cfg


def load_config(path: str | os.PathLike, overrides: dict | None = None) -> SearchConfig:
    """Read a YAML recipe (safe_load rules, no aliases), apply ``overrides`` (e.g. the command line), validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SearchConfigError(f'{path}: cannot read the config file ({e.strerror or e})') from None
    try:
        data = safe_load_yaml(text)
    except yaml.YAMLError as e:
        raise SearchConfigError(f'{path}: not valid YAML (tags that build Python objects and aliases are refused): '
                                f'{" ".join(str(e).split())}') from None
    if data is not None and not isinstance(data, dict):
        raise SearchConfigError(f'{path}: expected a mapping of config keys at the top level, '
                                f'got {type(data).__name__}')
    merged = dict(data or {})
    merged.update(overrides or {})
    return config_from_dict(merged, str(path))


def config_to_dict(cfg: SearchConfig) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe mapping (the run's config.yaml and the genotype's provenance)."""
    return dataclasses.asdict(cfg)
