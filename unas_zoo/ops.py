"""DARTS-space operations, shared by the evaluation networks and the search supernet.

Every op maps ``C`` channels to ``C`` channels; in a reduction cell the ops that read the cell inputs get
``stride=2``. ``affine`` is False in search supernets (BN without learnable scale/shift, as in DARTS) and True in
evaluation networks. ``pool_bn`` adds the non-affine BN that DARTS search supernets put after each pooling op.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ['ReLUConvBN', 'DilConv', 'SepConv', 'FactorizedReduce', 'OPS', 'make_op', 'is_identity']


class ReLUConvBN(nn.Sequential):
    """ReLU -> conv -> BN; the preprocessing of cell inputs."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU -> depthwise k x k (dilated) -> pointwise 1x1 -> BN."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 affine: bool = True):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel_size, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise, pointwise, BN) blocks; only the first one strides."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True):
        super().__init__(
            DilConv(c_in, c_in, kernel_size, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel_size, 1, padding, 1, affine),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two 1x1 stride-2 convs on offset grids, concatenated (c_out must be even)."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True):
        super().__init__()
        if c_out % 2:
            raise ValueError(f'FactorizedReduce needs an even number of output channels, got {c_out}')
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        # The second conv samples the odd grid; pad so odd-sized inputs give the same output size as the first.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, x.shape[3] % 2, 0, x.shape[2] % 2))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def _pool(kind: str, channels: int, stride: int, affine: bool, pool_bn: bool) -> nn.Module:
    pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == 'max'
            else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
    return nn.Sequential(pool, nn.BatchNorm2d(channels, affine=False)) if pool_bn else pool


def _skip(channels: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(channels, channels, affine)


# name -> factory(channels, stride, affine, pool_bn)
OPS: dict[str, Callable[[int, int, bool, bool], nn.Module]] = {
    'skip_connect': lambda c, s, a, pb: _skip(c, s, a),
    'sep_conv_3x3': lambda c, s, a, pb: SepConv(c, c, 3, s, 1, a),
    'sep_conv_5x5': lambda c, s, a, pb: SepConv(c, c, 5, s, 2, a),
    'sep_conv_7x7': lambda c, s, a, pb: SepConv(c, c, 7, s, 3, a),
    'dil_conv_3x3': lambda c, s, a, pb: DilConv(c, c, 3, s, 2, 2, a),
    'dil_conv_5x5': lambda c, s, a, pb: DilConv(c, c, 5, s, 4, 2, a),
    'max_pool_3x3': lambda c, s, a, pb: _pool('max', c, s, a, pb),
    'avg_pool_3x3': lambda c, s, a, pb: _pool('avg', c, s, a, pb),
}


def make_op(name: str, channels: int, stride: int, affine: bool = True, pool_bn: bool = False) -> nn.Module:
    """Build op ``name``; names are validated by the genotype schema, so an unknown one here is a bug."""
    return OPS[name](channels, stride, affine, pool_bn)


def is_identity(op: nn.Module) -> bool:
    """Drop-path skips identity branches (DARTS convention): only a stride-1 skip_connect is one."""
    return isinstance(op, nn.Identity)
