"""The search configuration: one flat dataclass, YAML recipes and strict validation.

``SearchConfig()`` *is* the embedded demo (``python search.py`` with no arguments; ``hparams/search_demo.yaml`` lists
the same values). The paper's settings live in ``hparams/search_{cifar10,cifar100,imagenet}.yaml``. Unknown keys,
wrong types and combinations that cannot work are refused with a :class:`SearchConfigError` naming the source, the key
and what is allowed, before anything is written.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from unas_zoo.data import DATASETS
from unas_zoo.genotypes.schema import (
    CIFAR_SEARCH_OPS, DARTS_OPS, GenotypeError, MBConvBackbone, from_dict)
from .objectives import OBJECTIVES

__all__ = ['SearchConfig', 'SearchConfigError', 'load_config', 'config_from_dict', 'config_to_dict', 'mbconv_backbone',
           'SPACES', 'SAMPLING', 'DEVICES']

SPACES = ('darts', 'mbconv')
SAMPLING = ('per_batch', 'per_example')
STEMS = ('cifar', 'imagenet')
DEVICES = ('auto', 'cpu', 'cuda')
# Costs of costs.COSTS that build the child network (only the mbconv space has a builder for them).
_MODEL_COSTS = ('latency', 'macs', 'params', 'peak_memory')
# Must match estimators.ESTIMATORS (a test checks it); kept here so that reading a config imports no search code.
ESTIMATOR_NAMES = ('reinforce', 'rloo', 'gumbel', 'rebar', 'relax', 'darts')


class SearchConfigError(ValueError):
    """A search configuration is unreadable, has unknown keys, wrong values or incompatible options."""


@dataclass
class SearchConfig:
    """Every knob of a search. Defaults: the CPU demo (digits, small DARTS supernet, REBAR, L_gen)."""
    # ---- data
    dataset: str = 'digits'              # digits | cifar10 | cifar100 | imagefolder
    data_dir: str | None = None          # CIFAR: folder holding torchvision's cifar-*-py; imagefolder: holds train/
    download: bool = False               # CIFAR only, and only when asked
    image_size: int | None = 16          # None: the dataset's own size (digits are rendered at this size)
    val_fraction: float = 0.1            # the paper's 90/10 split of the train set
    batch_size: int = 32                 # per process; the train and the validation batch have this size each
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
    estimator: str = 'rebar'             # reinforce | gumbel | rebar | relax | darts
    sampling: str = 'per_batch'          # per_batch | per_example (one architecture per example)
    temperature: float = 0.4
    objective: str = 'gen'               # gen (L_train + λ|L_val − L_train|) | train | val
    gen_lambda: float = 0.5
    arch_lambda: float = 0.2
    cost: dict | None = None             # optional cost term, passed verbatim to unas_zoo.search.costs.build_cost
    # ---- run
    seed: int = 0
    device: str = 'auto'                 # auto | cpu | cuda | cuda:N
    output: str | None = None            # default: output/search/<date-time>-<dataset>-<space>
    log_every: int = 10                  # steps between progress lines
    checkpoint_every: int = 0            # steps between extra checkpoints (0: at the end of every epoch only)
    stop_after_steps: int | None = None  # stop (with a resumable checkpoint) after this many steps in total
    save_rank_state: bool = False        # diagnostics: every rank writes rank<r>_final.pt (φ logits and w)

    @property
    def search_epochs(self) -> int:
        return self.epochs - self.warmup_epochs


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
    _choice(source, 'objective', cfg.objective, OBJECTIVES)
    if cfg.device not in DEVICES and not cfg.device.startswith('cuda:'):
        raise fail('device', f'unknown value {cfg.device!r}; allowed values are {list(DEVICES)} or cuda:N')
    for key in ('batch_size', 'epochs', 'log_every', 'init_channels', 'layers'):
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
    if cfg.stop_after_steps is not None and cfg.stop_after_steps < 1:
        raise fail('stop_after_steps', f'must be >= 1 or null, got {cfg.stop_after_steps}')
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
        raise fail('cost', f"a non-differentiable cost needs an unbiased estimator (reinforce, rebar or relax); "
                           f"{cfg.estimator!r} differentiates relaxed samples only")
    if cfg.device.startswith('cuda') and not torch.cuda.is_available():
        raise fail('device', f'{cfg.device!r} was asked for but CUDA is not available; use device: cpu or auto')


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
    """Read a YAML recipe (``yaml.safe_load``), apply ``overrides`` (e.g. from the command line), validate."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SearchConfigError(f'{path}: cannot read the config file ({e.strerror or e})') from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SearchConfigError(f'{path}: not valid YAML (tags that build Python objects are refused): {e}') from None
    if data is not None and not isinstance(data, dict):
        raise SearchConfigError(f'{path}: expected a mapping of config keys at the top level, '
                                f'got {type(data).__name__}')
    merged = dict(data or {})
    merged.update(overrides or {})
    return config_from_dict(merged, str(path))


def config_to_dict(cfg: SearchConfig) -> dict[str, Any]:
    """Plain, YAML- and checkpoint-safe mapping (the run's config.yaml and the genotype's provenance)."""
    return dataclasses.asdict(cfg)
