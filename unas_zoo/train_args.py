"""train.py's arguments: the parser (timm's names), YAML config files that reject unknown keys, and value checks.

Command line over config file over defaults (timm's two-stage parse). Every number is checked before anything is
built: NaN/inf and out-of-range values are refused with one line naming the option.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from timm.utils import ParseKwargs

from ._finite import non_finite_keys
from ._io import safe_load_yaml

__all__ = ['TrainingError', 'train_parser', 'load_config', 'parse_train_args']


class TrainingError(ValueError):
    """Bad input to training or validation (config, model name, checkpoint); the message says what and where."""


def _bool_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(name, action=argparse.BooleanOptionalAction, default=False, help=help)


def train_parser() -> argparse.ArgumentParser:
    """train.py's arguments; names and meanings follow timm's train.py. Config files use the same names."""
    p = argparse.ArgumentParser(
        prog='train.py', description='Train a unas_zoo (or any timm) model with the DARTS-family retraining recipe.')
    p.add_argument('-c', '--config', default='', help='YAML file of argument values (hparams/train_*.yaml)')
    g = p.add_argument_group('model')
    g.add_argument('--model', default=None, help='timm model name, e.g. unas_cifar10, darts_cell_cifar, mbconv_net')
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra entrypoint arguments, e.g. genotype=search/genotype.yaml init_channels=36 layers=20')
    _bool_flag(g, '--pretrained', 'start from pretrained weights (hf-hub: / local-dir: names)')
    g.add_argument('--num-classes', type=int, default=None, help='classifier size (default: from the dataset)')
    g.add_argument('--img-size', type=int, default=None, help='image size (default: the dataset\'s / model\'s)')
    g.add_argument('--drop', type=float, default=0.0, help='dropout before the classifier')
    g.add_argument('--drop-path', type=float, default=0.0, help='final drop-path rate (ramped from 0 over epochs)')
    g.add_argument('--aux-weight', type=float, default=0.0, help='auxiliary-head loss weight (0 = no aux head)')
    g = p.add_argument_group('data')
    g.add_argument('--data-dir', default=None, help='dataset folder (not needed for digits)')
    g.add_argument('--dataset', default='digits', help='digits | cifar10 | cifar100 | imagefolder')
    _bool_flag(g, '--download', 'download CIFAR into --data-dir when missing')
    g.add_argument('--train-split', default='train', help='split to train on')
    g.add_argument('--val-split', default='val', help='split evaluated after each epoch (digits/CIFAR: the test set)')
    g.add_argument('-b', '--batch-size', type=int, default=128, help='batch size per process')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None)
    g.add_argument('-j', '--workers', type=int, default=2, help='data loading processes per training process')
    g.add_argument('--cutout', type=int, default=0, help='cutout square size (0 = off); the CIFAR recipe uses 16')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--crop-padding', type=int, default=4, help='small-image datasets: padding of the random crop')
    g.add_argument('--color-jitter', type=float, default=0.0, help='imagefolder: colour jitter factor')
    g = p.add_argument_group('optimization')
    g.add_argument('--epochs', type=int, default=10)
    g.add_argument('--opt', default='sgd', help='timm optimizer name')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=3e-4)
    g.add_argument('--lr', type=float, default=None, help='learning rate (default: lr-base scaled by batch size)')
    g.add_argument('--lr-base', type=float, default=0.1, help='learning rate at --lr-base-size (linear scaling)')
    g.add_argument('--lr-base-size', type=int, default=256, help='global batch size that --lr-base refers to')
    g.add_argument('--sched', default='cosine', help='timm scheduler name')
    g.add_argument('--min-lr', type=float, default=0.0)
    g.add_argument('--warmup-epochs', type=int, default=0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--smoothing', type=float, default=0.0, help='label smoothing')
    g.add_argument('--clip-grad', type=float, default=None, help='gradient clipping value (norm by default)')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'))
    _bool_flag(g, '--model-ema', 'keep an exponential moving average of the weights (timm ModelEmaV3)')
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g = p.add_argument_group('run')
    _bool_flag(g, '--amp', 'mixed precision (CUDA only)')
    g.add_argument('--amp-dtype', default='float16', choices=('float16', 'bfloat16'))
    _bool_flag(g, '--channels-last', 'channels_last memory layout')
    g.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--output', default='output/train', help='folder that receives one sub-folder per run')
    g.add_argument('--experiment', default='', help='name of the run folder (default: date-model)')
    g.add_argument('--resume', default='', help='checkpoint to resume from (continues in its folder)')
    g.add_argument('--checkpoint-hist', type=int, default=3, help='number of best checkpoints kept')
    g.add_argument('--log-interval', type=int, default=50, help='batches between progress lines')
    return p


def _config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}


def load_config(path: str | os.PathLike, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML config of ``parser``'s argument names; unknown keys and bad values are refused."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f'config {path}: no such file')
    try:
        data = safe_load_yaml(path.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TrainingError(f'config {path}: not valid YAML ({" ".join(str(e).split())})') from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TrainingError(f'config {path}: expected a mapping of argument names to values')
    actions = _config_keys(parser)
    config = {str(k).replace('-', '_'): v for k, v in data.items()}
    unknown = sorted(set(config) - set(actions))
    if unknown:
        raise TrainingError(f'config {path}: unknown key(s) {", ".join(unknown)}; valid keys: '
                            f'{", ".join(sorted(actions))}')
    for key, value in config.items():
        action = actions[key]
        if action.type is not None and value is not None and not isinstance(value, (list, dict)):
            try:
                config[key] = value = action.type(value)
            except (TypeError, ValueError) as e:
                raise TrainingError(f'config {path}: {key}: {value!r} is not a valid {action.type.__name__}') from e
        if action.choices is not None and value not in action.choices:
            raise TrainingError(f'config {path}: {key}: {value!r} not allowed; allowed: {list(action.choices)}')
        if isinstance(action, ParseKwargs) and not isinstance(value, dict):
            raise TrainingError(f'config {path}: {key}: expected a mapping, e.g. {{genotype: unas_cifar10}}')
    return config


def parse_train_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line over config file over defaults (timm's two-stage parse); model_kwargs of both are merged."""
    parser = train_parser()
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    known, _ = config_parser.parse_known_args(argv)
    config = load_config(known.config, parser) if known.config else {}
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    if config.get('model_kwargs') and args.model_kwargs is not config['model_kwargs']:
        args.model_kwargs = {**config['model_kwargs'], **args.model_kwargs}
    if args.model is None:
        raise TrainingError('no model given: pass --model (e.g. unas_cifar10) or a --config that sets model')
    _check_values(args)
    return args


# Allowed ranges (inclusive; None: unbounded) of the numeric arguments; floats must also be finite.
_RANGES = {
    'epochs': (1, None), 'batch_size': (1, None), 'validation_batch_size': (1, None), 'workers': (0, None),
    'num_classes': (1, None), 'img_size': (1, None), 'cutout': (0, None), 'crop_padding': (0, None),
    'warmup_epochs': (0, None), 'lr_base_size': (1, None), 'checkpoint_hist': (1, None), 'log_interval': (0, None),
    'lr': (0, None), 'lr_base': (0, None), 'min_lr': (0, None), 'warmup_lr': (0, None), 'weight_decay': (0, None),
    'momentum': (0, 1), 'drop': (0, 1), 'drop_path': (0, 1), 'hflip': (0, 1), 'smoothing': (0, 1),
    'color_jitter': (0, None), 'aux_weight': (0, None), 'clip_grad': (0, None), 'model_ema_decay': (0, 1),
}


def _check_values(args: argparse.Namespace) -> None:
    """Refuse NaN/inf and out-of-range numbers before anything is built (one line naming the option)."""
    values = vars(args)
    bad = non_finite_keys(values)
    if bad:
        raise TrainingError(f'--{bad[0].replace("_", "-")}: {values[bad[0]]} is not a finite number')
    for key, (low, high) in _RANGES.items():
        value = values.get(key)
        if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
            allowed = f'>= {low}' if high is None else f'{low}..{high}'
            raise TrainingError(f'--{key.replace("_", "-")}: {value} is out of range; allowed {allowed}')
