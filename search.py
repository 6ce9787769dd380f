#!/usr/bin/env python3
"""UNAS architecture search: ``python search.py`` runs the embedded CPU demo (digits, small DARTS supernet, RLOO).

    python search.py                                          # the demo: about 2 minutes on 2 CPU cores
    python search.py --config hparams/search_cifar10.yaml --data-dir data/   # the paper's CIFAR-10 search
    torchrun --nproc_per_node 4 search.py --config hparams/search_cifar10.yaml --data-dir data/
    python search.py --output output/search/run1 --resume    # continue a stopped run from its checkpoint
    python search.py --estimator rloo --arch-samples 4        # REINFORCE, leave-one-out over 4 archs per batch

Every key of the config (``unas_zoo.search.config.SearchConfig``) is also an option: ``--epochs 2``,
``--batch-size 64``, ``--no-augment``, ``--cost '{name: macs, target: 5}'``. The work is done by
:func:`unas_zoo.search.loop.run_search`; this file only reads the command line and reports.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import typing
from pathlib import Path

import yaml

from unas_zoo._finite import NonFiniteError
from unas_zoo._io import OutputLockedError, os_error_line
from unas_zoo.data import DatasetError
from unas_zoo.genotypes import GenotypeError
from unas_zoo.search.config import (
    SearchConfig, SearchConfigError, config_from_dict, config_to_dict, load_config)

# Training recipes for a searched genotype, by dataset (train.py's --config).
TRAIN_RECIPES = {'digits': 'hparams/train_demo.yaml', 'cifar10': 'hparams/train_cifar10.yaml',
                 'cifar100': 'hparams/train_cifar100.yaml', 'imagefolder': 'hparams/train_imagenet_darts.yaml'}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}\n')


def _yaml_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f'not valid YAML: {e}') from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog='search.py', description='UNAS architecture search (RLOO / REBAR / RELAX estimators, L_gen).')
    parser.add_argument('-c', '--config', default=None,
                        help='YAML recipe (hparams/search_*.yaml); without it: the embedded demo config')
    parser.add_argument('--resume', action='store_true',
                        help='continue the run in --output from its checkpoint (uses that run\'s config.yaml)')
    parser.add_argument('--print-config', action='store_true', help='print the resolved config as YAML and exit')
    group = parser.add_argument_group('config overrides (each key of the config file)')
    hints = typing.get_type_hints(SearchConfig)
    for f in dataclasses.fields(SearchConfig):
        flag = '--' + f.name.replace('_', '-')
        tp = hints[f.name]
        if type(None) in typing.get_args(tp):  # 'X | None' takes X on the command line
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        base = typing.get_origin(tp) or tp
        if base is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif base in (int, float, str):
            group.add_argument(flag, dest=f.name, type=base, default=None, metavar=f.name.upper())
        elif base is dict:
            group.add_argument(flag, dest=f.name, type=_yaml_value, default=None, metavar='YAML',
                               help='a YAML mapping, e.g. "{name: macs, target: 5}"')
        else:  # list[str]
            group.add_argument(flag, dest=f.name, nargs='+', default=None, metavar=f.name.upper().rstrip('S'))
    return parser


def resolve_config(args: argparse.Namespace) -> SearchConfig:
    """Defaults < config file < command line; ``--resume`` continues with the run's own config.yaml.

    On resume the command may repeat the run's settings (its ``--config``, its options): values are compared, and only
    real changes of settings outside ``RESUME_MUTABLE`` are refused. ``stop_after_steps`` applies to the invocation
    that gives it, never to a later resume.
    """
    from unas_zoo.search.loop import CONFIG_FILE, RESUME_MUTABLE

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchConfig)
                 if getattr(args, f.name) is not None}
    if not args.resume:
        if args.config is None:
            return config_from_dict(overrides, '<command line>')
        return load_config(args.config, overrides)
    if args.output is None:
        raise SearchConfigError('--resume needs --output, the folder of the run to continue')
    run_file = Path(args.output) / CONFIG_FILE
    stored = config_to_dict(load_config(run_file))
    asked = config_to_dict(load_config(args.config or run_file, overrides))
    changed = [k for k in stored if k not in RESUME_MUTABLE and stored[k] != asked[k]]
    if changed:
        def flag(key: str) -> str:
            return '--' + key.replace('_', '-')
        diffs = '; '.join(f'{flag(k)} {stored[k]!r} -> {asked[k]!r}' for k in changed)
        raise SearchConfigError(f'--resume keeps the settings of {run_file}; these differ: {diffs} (may change: '
                                f'{", ".join(map(flag, RESUME_MUTABLE))})')
    resumed = {**stored, **{k: asked[k] for k in RESUME_MUTABLE}, 'stop_after_steps': overrides.get('stop_after_steps')}
    return config_from_dict(resumed, str(run_file))


def train_command(genotype: Path, cfg: SearchConfig) -> str:
    """The command that trains the searched architecture from scratch with train.py."""
    model = 'mbconv_net' if cfg.space == 'mbconv' else (
        'darts_cell_imagenet' if cfg.dataset == 'imagefolder' else 'darts_cell_cifar')
    recipe = 'hparams/train_imagenet_mbconv.yaml' if cfg.space == 'mbconv' and cfg.dataset == 'imagefolder' \
        else TRAIN_RECIPES[cfg.dataset]
    words = ['python', 'train.py', '--config', recipe, '--model', model,
             '--model-kwargs', f'genotype={genotype}']
    if cfg.dataset != 'digits':
        words += ['--dataset', cfg.dataset, '--data-dir', cfg.data_dir or 'DATA_DIR']
    return shlex.join(words)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    errors: tuple[type[Exception], ...] = (SearchConfigError, DatasetError, GenotypeError, NonFiniteError,
                                           OutputLockedError)
    try:
        from unas_zoo.search.costs import CostError
        errors += (CostError,)
        cfg = resolve_config(args)
        if args.print_config:
            print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end='')
            return 0
        from unas_zoo.search.loop import run_search
        genotype = run_search(cfg, resume=args.resume)
    except errors as e:
        if os.environ.get('RANK', '0') == '0':
            print(f'search.py: error: {e}', file=sys.stderr)
        return 2
    except OSError as e:  # read-only / full / forbidden output folder
        print(f'search.py: error: {os_error_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('search.py: interrupted; continue from the last checkpoint with --resume --output <run folder>',
              file=sys.stderr)
        return 130
    finally:
        import torch.distributed as torch_dist
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
    if genotype is not None and os.environ.get('RANK', '0') == '0':
        print(f'\ngenotype: {genotype}')
        drawing = genotype.with_suffix('.svg')
        print(f'draw it:  python -m unas_zoo.draw {shlex.quote(str(genotype))} -o {shlex.quote(str(drawing))}')
        print(f'train it: {train_command(genotype, cfg)}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
