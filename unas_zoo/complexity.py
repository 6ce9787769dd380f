"""Model size and compute, counted the way the NAS papers report them.

Params exclude the auxiliary head (a training-only add-on). Multiply-adds are counted with fvcore at batch 1 in eval
mode; fvcore counts one multiply-add as one flop. ``macs`` is conv + linear only (the papers' "mobile setting"
figure); ``fvcore_total`` adds what fvcore also counts (batch norm, adaptive pooling, ...).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

__all__ = ['complexity', 'mobile_setting', 'MOBILE_SETTING_MACS']

# fvcore operator names whose flops are weight multiply-adds (convolutions and matrix products).
_MAC_OPERATORS = ('conv', 'linear', 'addmm', 'mm', 'matmul', 'bmm', 'einsum')
# The ImageNet "mobile setting" of the NAS literature: fewer than 600M multiply-adds.
MOBILE_SETTING_MACS = 600e6


def _default_input_size(model: nn.Module) -> tuple[int, ...]:
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    input_size = cfg.get('input_size')
    if input_size is None:
        raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size; pass input_size=(C, H, W)')
    return tuple(input_size)


def complexity(model: nn.Module, input_size: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Count params (without the auxiliary head) and multiply-adds of ``model`` for one ``input_size`` image.

    Returns a dict with ``params``, ``macs`` (conv + linear multiply-adds), ``fvcore_total`` (every op fvcore
    counts), ``by_operator`` (fvcore's per-operator counts) and the ``input_size`` used (default: the model's
    ``pretrained_cfg['input_size']``). The model's train/eval mode is restored afterwards.
    """
    input_size = tuple(input_size) if input_size is not None else _default_input_size(model)
    params = sum(p.numel() for name, p in model.named_parameters() if 'aux' not in name)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device('cpu')
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            # Imported here: fvcore pulls in iopath/tabulate (and warns about torch.jit.script on import),
            # which `import unas_zoo` should not pay for.
            from fvcore.nn import FlopCountAnalysis
            # fvcore logs skipped ops (e.g. relu, add) through logging, not warnings.
            fvcore_logger = logging.getLogger('fvcore.nn.jit_analysis')
            previous_level = fvcore_logger.level
            fvcore_logger.setLevel(logging.ERROR)
            try:
                analysis = (
                    FlopCountAnalysis(model, torch.zeros((1, *input_size), device=device, dtype=dtype))
                    .unsupported_ops_warnings(False)
                    .uncalled_modules_warnings(False)
                    .tracer_warnings('none')
                )
                by_operator = dict(analysis.by_operator())
                total = analysis.total()
            finally:
                fvcore_logger.setLevel(previous_level)
    finally:
        model.train(was_training)
    return {
        'params': params,
        'macs': sum(v for k, v in by_operator.items() if k in _MAC_OPERATORS),
        'fvcore_total': total,
        'by_operator': by_operator,
        'input_size': input_size,
    }


def mobile_setting(macs: float) -> bool:
    """True when ``macs`` multiply-adds fit the ImageNet mobile setting (< 600M)."""
    return macs < MOBILE_SETTING_MACS
