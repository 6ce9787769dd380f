"""Validation of zoo models: accuracy on a dataset split, parameters, multiply-adds, the mobile-setting verdict.

``validate.py`` is a thin wrapper around :func:`validate_main`. Models, checkpoints, transforms, loaders and the
evaluation loop are the training module's (one definition each); this module adds the complexity and latency
figures, the results files and the command line.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from timm.models import parse_model_name
from timm.utils import ParseKwargs

from ._io import atomic_write_text
from .complexity import complexity, mobile_setting
from .data import create_dataset, dataset_info
from .latency import RUNTIMES, TimingSpec, device_name, time_model
from .training import (
    TrainingError, _bool_flag, _data_settings, _run_cli, build_transform, create_loader, create_model, evaluate,
    load_weights, read_checkpoint_args,
)

__all__ = ['validate_parser', 'validate', 'write_results', 'read_results', 'validate_main']


def validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='validate.py',
        description='Accuracy, loss, parameters and multiply-adds of a model; without a dataset only the complexity.')
    p.add_argument('--model', default=None, help='timm name, hf-hub:ORG/NAME or local-dir:PATH (default: the '
                                                 'model stored in --checkpoint)')
    p.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs,
                   help='entrypoint arguments, e.g. genotype=genotype.yaml (default: those stored in --checkpoint)')
    p.add_argument('--checkpoint', default='', help='train.py checkpoint, state dict or .safetensors file')
    p.add_argument('--use-ema', action='store_true', help='load the EMA weights of the checkpoint')
    _bool_flag(p, '--pretrained', 'load the pretrained weights of the model name (hf-hub: / local-dir:)')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--dataset', default=None, help='digits | cifar10 | cifar100 | imagefolder (default: none)')
    p.add_argument('--data-dir', default=None)
    p.add_argument('--split', default='test', help='train | val | test')
    p.add_argument('--img-size', type=int, default=None, help='input size (default: the dataset\'s / model\'s)')
    p.add_argument('-b', '--batch-size', type=int, default=256)
    p.add_argument('-j', '--workers', type=int, default=2)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    _bool_flag(p, '--amp', 'mixed precision (CUDA only)')
    _bool_flag(p, '--channels-last', 'channels_last memory layout')
    p.add_argument('--latency', nargs='?', const='torch', default=None, choices=RUNTIMES,
                   help='also time the forward pass (median of --latency-repeats, after warm-up): torch on --device '
                        '(the default), or onnxruntime: the ONNX export in ONNX Runtime on the CPU')
    p.add_argument('--latency-batch-size', type=int, default=32, help='batch of the timing (the paper: 32)')
    p.add_argument('--latency-repeats', type=int, default=30)
    p.add_argument('--results-file', default='', help='write the results to this .json or .csv file')
    return p


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Build (and load) the model, count its complexity and, given a dataset, evaluate it."""
    if args.results_file and Path(args.results_file).suffix.lower() not in ('.json', '.csv'):
        raise TrainingError(f'--results-file {args.results_file}: use a .json or .csv suffix')
    stored = read_checkpoint_args(args.checkpoint) if args.checkpoint else {}
    model_name = args.model or stored.get('model')
    if model_name is None:
        raise TrainingError('no model given: pass --model, or a --checkpoint written by train.py')
    same_model = args.model is None or args.model == stored.get('model')
    model_kwargs = args.model_kwargs if args.model_kwargs is not None else \
        (stored.get('model_kwargs') if same_model else None)
    num_classes = args.num_classes or (stored.get('num_classes') if same_model else None)
    if num_classes is None and args.dataset and not parse_model_name(model_name)[0]:
        num_classes = dataset_info(args.dataset)['num_classes']
    dataset_name = (args.dataset or '').lower() or None
    eval_set = create_dataset(dataset_name, args.data_dir, args.split, image_size=args.img_size) \
        if dataset_name else None  # checked before the model is built: a missing folder fails fast

    model = create_model(model_name, pretrained=args.pretrained, num_classes=num_classes, model_kwargs=model_kwargs)
    if args.checkpoint:
        load_weights(model, args.checkpoint, use_ema=args.use_ema)
    model.eval()
    device = torch.device(args.device)
    results: dict[str, Any] = {'model': model_name, 'checkpoint': args.checkpoint or None}
    if dataset_name:
        data = _data_settings(dataset_name, model, args.img_size)
        input_size = (3, data['image_size'], data['image_size'])
    else:
        input_size = (3, args.img_size, args.img_size) if args.img_size else None
    counts = complexity(model, input_size)
    results.update(params=counts['params'], macs=counts['macs'], fvcore_total=counts['fvcore_total'],
                   input_size=list(counts['input_size']), mobile_setting=mobile_setting(counts['macs']))
    if args.latency:
        ort = args.latency == 'onnxruntime'  # ONNX Runtime times fp32 NCHW on the CPU, whatever --device says
        spec = TimingSpec(device='cpu' if ort else str(device), batch_size=args.latency_batch_size,
                          input_size=counts['input_size'], runtime=args.latency,
                          dtype='float16' if args.amp and device.type == 'cuda' and not ort else 'float32',
                          channels_last=args.channels_last and not ort, warmup=min(10, args.latency_repeats),
                          repeats=args.latency_repeats)
        timing = time_model(model, spec)
        results.update(latency_ms=timing.median_ms, latency_iqr_ms=timing.iqr_ms, latency_runtime=spec.runtime,
                       latency_batch_size=spec.batch_size, latency_device=device_name(spec.device))
    if eval_set is not None:
        num_classes_data = dataset_info(dataset_name)['num_classes'] or len(eval_set.classes)
        if model.num_classes != num_classes_data:
            raise TrainingError(f'{model_name} has {model.num_classes} classes but {dataset_name} has '
                                f'{num_classes_data}; pass --num-classes or another --model')
        eval_set.transform = build_transform(dataset_name, False, image_size=data['image_size'], mean=data['mean'],
                                             std=data['std'], crop_pct=data['crop_pct'],
                                             interpolation=data['interpolation'])
        model.to(device)
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
        loader = create_loader(eval_set, args.batch_size, False, workers=args.workers,
                               pin_memory=device.type == 'cuda')
        metrics = evaluate(model, loader, device, amp=args.amp, channels_last=args.channels_last)
        results.update(dataset=dataset_name, split=args.split, num_images=len(eval_set), **metrics)
    return results


def write_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``results`` as JSON or as a one-row CSV (by suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == '.json':
        text = json.dumps(results, indent=2) + '\n'
    elif suffix == '.csv':
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(results))
        writer.writeheader()
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in results.items()})
        text = buffer.getvalue()
    else:
        raise TrainingError(f'{path}: use a .json or .csv suffix')
    return atomic_write_text(path, text)


def read_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by :func:`write_results` (used by the Hub model card)."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f'results file {path}: no such file')
    if path.suffix.lower() == '.json':
        return json.loads(path.read_text())
    with path.open(newline='') as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise TrainingError(f'results file {path}: no rows')
    return rows[-1]


def _format_results(results: dict[str, Any]) -> str:
    lines = [f'{results["model"]}: {results["params"] / 1e6:.3f}M params, {results["macs"] / 1e6:.1f}M MACs '
             f'(conv+linear), fvcore total {results["fvcore_total"] / 1e6:.1f}M at input {results["input_size"]}; '
             f'mobile setting (< 600M MACs): {"yes" if results["mobile_setting"] else "no"}']
    if 'latency_ms' in results:
        lines.append(f'{results.get("latency_runtime", "torch")} latency at batch {results["latency_batch_size"]} on '
                     f'{results["latency_device"]}: '
                     f'{results["latency_ms"]:.2f} ms (IQR {results["latency_iqr_ms"]:.2f} ms)')
    if 'top1' in results:
        lines.append(f'{results["dataset"]} {results["split"]} ({results["num_images"]} images): top-1 '
                     f'{results["top1"]:.2f}%  top-5 {results["top5"]:.2f}%  loss {results["loss"]:.4f}')
    return '\n'.join(lines)


def validate_main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        args = validate_parser().parse_args(argv)
        results = validate(args)
        print(_format_results(results))
        if args.results_file:
            print(f'results: {write_results(results, args.results_file)}')
        return 0
    return _run_cli(run)
