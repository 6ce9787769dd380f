"""ONNX export of zoo models and searched genotypes, checked in ONNX Runtime against PyTorch.

    python -m unas_zoo.export unas_cifar10 -o unas_cifar10.onnx
    python -m unas_zoo.export darts_cell_cifar --genotype output/search/RUN/genotype.yaml -o cell.onnx
    python -m unas_zoo.export --checkpoint output/train/RUN/last.pth.tar -o model.onnx

The graph takes ``input`` (batch, C, H, W) with a dynamic batch and returns ``logits``; the file is written only once
ONNX Runtime reproduces the PyTorch outputs at another batch size within ``--tol`` (max abs diff printed). Needs the
``export`` extra: ``pip install -e '.[export]'`` (onnx, onnxruntime).
"""
from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ._io import atomic_path

__all__ = ['ExportError', 'ORT_TOLERANCE', 'onnx_bytes', 'ort_session', 'ort_version', 'ort_max_abs_diff',
           'export_onnx', 'main']

ORT_TOLERANCE = 1e-4  # fp32: fused kernels reorder sums, never by more than this on unit-scale inputs
_OPSET = 17


class ExportError(ValueError):
    """The model cannot be exported, or ONNX Runtime does not reproduce it."""


def _require_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError("ONNX export needs onnx and onnxruntime: pip install -e '.[export]'") from e
    return onnxruntime


def ort_version() -> str:
    """The installed ONNX Runtime version (part of what an ORT timing is valid for)."""
    return _require_ort().__version__


def _input_size(model: nn.Module, input_size: Sequence[int] | None) -> tuple[int, ...]:
    size = tuple(input_size or getattr(model, 'pretrained_cfg', {}).get('input_size', ()))
    if len(size) != 3:
        raise ExportError(f'{type(model).__name__}: no input size known; pass input_size=(C, H, W)')
    return size


def onnx_bytes(model: nn.Module, input_size: Sequence[int] | None = None, opset: int = _OPSET) -> bytes:
    """The eval-mode ``model`` as an ONNX graph (dynamic batch); a one-line ``ExportError`` if it cannot be exported."""
    _require_ort()
    if getattr(model, 'feature_info', None) is not None and not hasattr(model, 'forward_head'):
        raise ExportError(f'{type(model).__name__}: features_only models are not exported; export the classifier')
    size = _input_size(model, input_size)
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')  # TracerWarnings and the exporter's deprecation notice
            torch.onnx.export(model, (torch.zeros((2, *size)),), buffer, input_names=['input'],
                              output_names=['logits'], opset_version=opset, dynamo=False,
                              dynamic_axes={'input': {0: 'batch'}, 'logits': {0: 'batch'}})
    except Exception as e:  # the exporter raises many types; the first line says what it could not convert
        message = ' '.join(str(e).split('\n')[0].split())
        raise ExportError(f'{type(model).__name__}: ONNX export failed ({type(e).__name__}: {message})') from e
    finally:
        model.train(was_training)
    return buffer.getvalue()


def ort_session(graph: bytes, threads: int | None = None) -> Any:
    """A CPU ONNX Runtime session on ``graph``; ``threads`` pins intra- and inter-op threads (None: ORT's default)."""
    ort = _require_ort()
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=['CPUExecutionProvider'])


def ort_max_abs_diff(model: nn.Module, graph: bytes, input_size: Sequence[int] | None = None, batch: int = 3,
                     seed: int = 0) -> float:
    """Max abs difference of ONNX Runtime vs PyTorch logits on random inputs at a batch other than the export's."""
    x = torch.randn((batch, *_input_size(model, input_size)), generator=torch.Generator().manual_seed(seed))
    was_training = model.training
    with torch.no_grad():
        expected = model.eval()(x)
    model.train(was_training)
    (got,) = ort_session(graph).run(None, {'input': x.numpy()})
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(f'ONNX Runtime output shape {tuple(got.shape)} != PyTorch {tuple(expected.shape)}')
    return float((torch.from_numpy(got) - expected).abs().max())


def export_onnx(model: nn.Module, path: str | Path, input_size: Sequence[int] | None = None,
                tol: float = ORT_TOLERANCE, opset: int = _OPSET) -> float:
    """Export ``model`` to ``path`` after checking it in ONNX Runtime; returns the max abs diff (<= ``tol``)."""
    graph = onnx_bytes(model, input_size, opset)
    diff = ort_max_abs_diff(model, graph, input_size)
    if not diff <= tol:  # also catches NaN
        raise ExportError(f'{path}: ONNX Runtime differs from PyTorch by {diff:.3g} (tolerance {tol:g}); not written')
    with atomic_path(path) as tmp:
        tmp.write_bytes(graph)
    return diff


def _parser() -> argparse.ArgumentParser:
    from timm.utils import ParseKwargs
    parser = argparse.ArgumentParser(prog='python -m unas_zoo.export', description=__doc__.split('\n\n')[0])
    parser.add_argument('model', nargs='?', default=None, help='timm model name (default: the --checkpoint\'s)')
    parser.add_argument('--genotype', default=None, help='zoo name or YAML path for darts_cell_* / mbconv_net')
    parser.add_argument('--checkpoint', default=None, help='train.py checkpoint or state dict with the weights')
    parser.add_argument('--model-kwargs', nargs='*', default=None, action=ParseKwargs, help='entrypoint arguments')
    parser.add_argument('--num-classes', type=int, default=None)
    parser.add_argument('--img-size', type=int, default=None, help='input side (default: the model cfg\'s)')
    parser.add_argument('--opset', type=int, default=_OPSET)
    parser.add_argument('--tol', type=float, default=ORT_TOLERANCE, help='max abs diff allowed vs PyTorch')
    parser.add_argument('-o', '--output', required=True, help='the .onnx file to write')
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .hub import build_model
    from .training import _run_cli

    def run() -> int:
        args = _parser().parse_args(argv)
        kwargs = dict(args.model_kwargs or {})
        if args.genotype:
            kwargs['genotype'] = args.genotype
        model, _ = build_model(args.model, args.checkpoint, kwargs or None, args.num_classes)
        size = _input_size(model, None)
        size = (size[0], args.img_size, args.img_size) if args.img_size else size
        diff = export_onnx(model, args.output, size, args.tol, args.opset)
        print(f'wrote {args.output}: input {size} (dynamic batch); ONNX Runtime vs PyTorch max abs diff {diff:.3g} '
              f'(tolerance {args.tol:g})')
        return 0
    try:
        return _run_cli(run)
    except ExportError as e:  # reported like training's user errors: one line, exit code 2
        print(f'error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
