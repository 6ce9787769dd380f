"""DARTS-space evaluation networks (CIFAR and ImageNet "mobile" variants) built from a darts genotype.

The layout follows the DARTS evaluation networks that UNAS, DARTS, P-DARTS and PC-DARTS all report on:

* CIFAR: stem conv3x3 (in -> 3C) + BN, ``layers`` cells (20), reductions at 1/3 and 2/3 of the depth.
* ImageNet: stem0 = two stride-2 conv3x3 (in -> C/2 -> C), stem1 = ReLU + stride-2 conv3x3, ``layers`` cells (14),
  reductions at 1/3 and 2/3 of the depth, global average pool.

Each cell preprocesses c_{k-2} with FactorizedReduce when the previous cell reduced (else ReLU-conv1x1-BN) and c_{k-1}
with ReLU-conv1x1-BN, sums two branches per node and concatenates the nodes named by ``concat``. Drop-path hits every
branch except identities, at the rate ``model.drop_path_rate`` read at forward time, so a training loop can ramp it.

The auxiliary head (after the second reduction, loss weight 0.4 in the papers) is built only with
``aux_logits=True``; then a training-mode forward returns ``(logits, aux_logits)``. Without it the model is a plain
timm classifier: forward returns logits and every parameter receives a gradient.
"""

import contextlib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from timm.layers import ClassifierHead, drop_path, get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint
from torch import nn

from ..genotypes import Branch, Cell, DartsGenotype, Genotype
from ..ops import FactorizedReduce, ReLUConvBN, is_identity, make_op
from ._builder import (GenotypeFeatureGetterNet, GenotypeModelArgs, attach_genotype, check_pretrained_available,
                       cifar_cfg, imagenet_cfg, resolve_genotype)

__all__ = ['DartsCell', 'AuxiliaryHead', 'DartsNet', 'DartsCifarNet', 'DartsImageNetNet']


class _Node(nn.Module):
    """An intermediate node: the sum of its branches, each an op applied to an earlier state."""

    def __init__(self, branches: Sequence[Branch], channels: int, reduction: bool, affine: bool, pool_bn: bool):
        super().__init__()
        # In a reduction cell the ops reading the cell inputs (0 and 1) halve the resolution.
        self.ops = nn.ModuleList([
            make_op(b.op, channels, 2 if reduction and b.input < 2 else 1, affine, pool_bn) for b in branches])
        self.inputs: List[int] = [b.input for b in branches]
        self.droppable: List[bool] = [not is_identity(op) for op in self.ops]

    def forward(self, states: List[torch.Tensor], drop_prob: float) -> torch.Tensor:
        out: Optional[torch.Tensor] = None
        for i, op in enumerate(self.ops):
            h = op(states[self.inputs[i]])
            if self.droppable[i] and drop_prob > 0. and self.training:
                h = drop_path(h, drop_prob, True)
            out = h if out is None else out + h
        assert out is not None
        return out


class DartsCell(nn.Module):
    """A normal or reduction cell; inputs are the outputs of the two previous cells (c_{k-2}, c_{k-1})."""

    def __init__(self, cell: Cell, c_prev_prev: int, c_prev: int, channels: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True, pool_bn: bool = False):
        super().__init__()
        read = {b.input for _, b in cell.branches}
        self.reduction = reduction
        # An input no branch reads gets no preprocessing, so that no parameter is left without a gradient.
        if 0 not in read:
            self.preprocess0 = nn.Identity()
        elif reduction_prev:  # c_{k-2} is at twice the resolution of c_{k-1}
            self.preprocess0 = FactorizedReduce(c_prev_prev, channels, affine)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0, affine) if 1 in read else nn.Identity()
        self.nodes = nn.ModuleList([_Node(node, channels, reduction, affine, pool_bn) for node in cell.nodes])
        self.concat: List[int] = list(cell.concat)
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in self.nodes:
            states.append(node(states, drop_prob))
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier: ReLU, 5x5 avg-pool, conv1x1 128 BN ReLU, conv2x2 768 BN ReLU, linear.

    Sized for 8x8 (CIFAR, pool stride 3) or 7x7 (ImageNet, pool stride 2) inputs, where the 2x2 conv leaves 1x1;
    the adaptive pool only matters at other input sizes.
    """

    def __init__(self, in_chs: int, num_classes: int, pool_stride: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),  # its input is also the next cell's input
            nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
            nn.Conv2d(in_chs, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )
        self.fc = nn.Linear(768, num_classes) if num_classes > 0 else nn.Identity()

    def reset(self, num_classes: int) -> None:
        dd = get_device_dtype(self)
        self.fc = nn.Linear(768, num_classes, **dd) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class DartsNet(GenotypeModelArgs, nn.Module):
    """Cells, auxiliary head, classifier and the timm model API shared by the CIFAR and ImageNet networks.

    ``bn_affine`` / ``pool_bn`` apply to the cells (ops and preprocessing) so that a search supernet's derived child
    can be built with the supernet's BN settings (DARTS supernets: affine=False, a non-affine BN after pools).
    """
    aux_pool_stride = 3

    def __init__(
            self,
            genotype: Union[str, os.PathLike, dict, Genotype],
            num_classes: int = 1000,
            in_chans: int = 3,
            init_channels: int = 36,
            layers: int = 20,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            aux_logits: bool = False,
            global_pool: str = 'avg',
            bn_affine: bool = True,
            pool_bn: bool = False,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if layers < 3:
            raise ValueError(f'{type(self).__name__}: layers must be >= 3 (two reduction cells), got {layers}')
        self.genotype = resolve_genotype(genotype, DartsGenotype, type(self).__name__)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate  # read at forward time: a training loop may ramp it
        self.grad_checkpointing = False
        reductions = (layers // 3, 2 * layers // 3)
        self.aux_index = reductions[1]  # the auxiliary head reads the output of the second reduction cell

        # The ops module builds without device/dtype kwargs: build under the requested default device instead.
        with torch.device(device) if device is not None else contextlib.nullcontext():
            c_prev_prev, c_prev, reduction_prev, stride, self.feature_info = self._build_stem(in_chans, init_channels)
            self._feature_taps = [-1] * len(self.feature_info)  # -1: the stem output s0
            channels = init_channels
            cells = []
            for i in range(layers):
                reduction = i in reductions
                if reduction:
                    channels *= 2
                cell = DartsCell(self.genotype.reduce if reduction else self.genotype.normal, c_prev_prev, c_prev,
                                 channels, reduction, reduction_prev, bn_affine, pool_bn)
                cells.append(cell)
                reduction_prev = reduction
                c_prev_prev, c_prev = c_prev, cell.out_channels
                stride *= 2 if reduction else 1
                if i + 1 in reductions or i == layers - 1:  # the last cell at each resolution is a feature level
                    self.feature_info.append(dict(num_chs=c_prev, reduction=stride, module=f'cells.{i}'))
                    self._feature_taps.append(i)
                if i == self.aux_index:
                    c_aux = c_prev
            self.cells = nn.ModuleList(cells)
            self.aux_head = AuxiliaryHead(c_aux, num_classes, self.aux_pool_stride) if aux_logits else None
            self.num_features = self.head_hidden_size = c_prev
            self.head = ClassifierHead(c_prev, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        if dtype is not None:
            self.to(dtype=dtype)

    def _build_stem(self, in_chans: int, channels: int) -> Tuple[int, int, bool, int, List[Dict[str, Any]]]:
        """Build the stem; return (c_{k-2} channels, c_{k-1} channels, reduction_prev, stride, stem feature info)."""
        raise NotImplementedError

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The two inputs (c_{k-2}, c_{k-1}) of the first cell."""
        raise NotImplementedError

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # Only convs, linears and BN: timm's optimizer factory already exempts 1-D params (BN, biases) from decay.
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        # Unmatched params (classifier, auxiliary head) fall into timm's last (head) group.
        return dict(stem=r'^stem', blocks=r'^cells\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (and the auxiliary one) on the model's device/dtype; 0 removes it."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features
        if self.aux_head is not None:
            self.aux_head.reset(num_classes)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features returning the feature levels of ``feature_info`` (all if ``indices`` is None).

        ``norm`` is accepted for API parity (there is no final norm).
        """
        assert output_fmt == 'NCHW', 'Output shape must be NCHW.'
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        taps = [self._feature_taps[i] for i in take_indices]
        intermediates: List[torch.Tensor] = []
        s0, s1 = self.forward_stem(x)
        if -1 in taps:
            intermediates.append(s0)
        if torch.jit.is_scripting() or not stop_early:
            cells = self.cells
        else:
            cells = self.cells[:self._feature_taps[max_index] + 1]
        for i, cell in enumerate(cells):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                s0, s1 = s1, checkpoint(cell, s0, s1, self.drop_path_rate)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_rate)
            if i in taps:
                intermediates.append(s1)
        if intermediates_only:
            return intermediates
        return s1, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the cells (and heads) after the last feature level that ``indices`` asks for."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        last_cell = self._feature_taps[max_index]
        truncated = last_cell + 1 < len(self.cells)
        self.cells = self.cells[:last_cell + 1]
        if truncated or prune_head:
            self.aux_head = None
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0, s1 = self.forward_stem(x)
        for cell in self.cells:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                s0, s1 = s1, checkpoint(cell, s0, s1, self.drop_path_rate)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_rate)
        return s1

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    @torch.jit.unused
    def _forward_with_aux(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s0, s1 = self.forward_stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            if self.grad_checkpointing:
                s0, s1 = s1, checkpoint(cell, s0, s1, self.drop_path_rate)
            else:
                s0, s1 = s1, cell(s0, s1, self.drop_path_rate)
            if i == self.aux_index:
                aux_logits = self.aux_head(s1)
        return self.forward_head(s1), aux_logits

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Logits; with ``aux_logits=True`` a training-mode forward returns ``(logits, aux_logits)``."""
        if self.aux_head is not None and self.training:
            return self._forward_with_aux(x)
        return self.forward_head(self.forward_features(x))


class DartsCifarNet(DartsNet):
    """The CIFAR evaluation network (C=36, 20 cells in the papers); the final cells run at 8x8 for 32x32 input."""
    aux_pool_stride = 3

    def __init__(self, genotype: Union[str, os.PathLike, dict, Genotype], num_classes: int = 10,
                 init_channels: int = 36, layers: int = 20, stem_multiplier: int = 3, **kwargs: Any):
        self.stem_multiplier = stem_multiplier
        super().__init__(genotype, num_classes=num_classes, init_channels=init_channels, layers=layers, **kwargs)

    def _build_stem(self, in_chans: int, channels: int) -> Tuple[int, int, bool, int, List[Dict[str, Any]]]:
        stem_chs = self.stem_multiplier * channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_chs, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_chs),
        )
        return stem_chs, stem_chs, False, 1, []

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        return x, x


class DartsImageNetNet(DartsNet):
    """The ImageNet mobile-setting network (C=48, 14 cells for DARTS; UNAS uses C=46); output stride 32."""
    aux_pool_stride = 2

    def __init__(self, genotype: Union[str, os.PathLike, dict, Genotype], num_classes: int = 1000,
                 init_channels: int = 48, layers: int = 14, **kwargs: Any):
        super().__init__(genotype, num_classes=num_classes, init_channels=init_channels, layers=layers, **kwargs)

    def _build_stem(self, in_chans: int, channels: int) -> Tuple[int, int, bool, int, List[Dict[str, Any]]]:
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_chans, channels // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),  # stem0's output is also the first cell's c_{k-2}
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        # The first cell's c_{k-2} (stem0, stride 4) is twice the resolution of c_{k-1} (stem1, stride 8).
        return channels, channels, True, 8, [dict(num_chs=channels, reduction=4, module='stem0')]

    def forward_stem(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


# --------------------------------------------------------------------------------------------------- entrypoints

def _create(variant: str, model_cls: type, genotype: Any, pretrained: bool = False, **kwargs: Any) -> DartsNet:
    check_pretrained_available(variant, pretrained, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    genotype = resolve_genotype(genotype, DartsGenotype, variant)
    default_levels = 4 if model_cls is DartsImageNetNet else 3
    # Two-input cells cannot be flattened into a sequence: features come from forward_intermediates().
    feature_cfg = {'feature_cls': GenotypeFeatureGetterNet, 'out_indices': tuple(range(default_levels)),
                   **kwargs.pop('feature_cfg', {})}
    model = build_model_with_cfg(model_cls, variant, pretrained, genotype=genotype, feature_cfg=feature_cfg, **kwargs)
    return attach_genotype(model, genotype)


_DARTS_PAPER = 'DARTS: Differentiable Architecture Search'
_PDARTS_PAPER = 'Progressive Differentiable Architecture Search: Bridging the Depth Gap between Search and Evaluation'
_PCDARTS_PAPER = 'PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search'
_UNAS_PAPER = 'UNAS: Differentiable Architecture Search Meets Reinforcement Learning'

default_cfgs = generate_default_cfgs({
    'unas_cifar10': cifar_cfg('unas_cifar10', paper_name=_UNAS_PAPER),
    'unas_cifar100': cifar_cfg('unas_cifar100', num_classes=100, paper_name=_UNAS_PAPER),
    'unas_imagenet': imagenet_cfg('unas_imagenet', paper_name=_UNAS_PAPER),
    'darts_v1_cifar': cifar_cfg('darts_v1_cifar', paper_name=_DARTS_PAPER),
    'darts_v2_cifar': cifar_cfg('darts_v2_cifar', paper_name=_DARTS_PAPER),
    'darts_v2_imagenet': imagenet_cfg('darts_v2_imagenet', paper_name=_DARTS_PAPER),
    'pdarts_cifar': cifar_cfg('pdarts_cifar', paper_name=_PDARTS_PAPER),
    'pdarts_imagenet': imagenet_cfg('pdarts_imagenet', paper_name=_PDARTS_PAPER),
    'pc_darts_cifar': cifar_cfg('pc_darts_cifar', paper_name=_PCDARTS_PAPER),
    'darts_cell_cifar': cifar_cfg('darts_cell_cifar'),
    'darts_cell_imagenet': imagenet_cfg('darts_cell_imagenet'),
})


@register_model
def unas_cifar10(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """UNAS cell searched on CIFAR-10; CIFAR network C=36, 20 cells (3.33M params)."""
    return _create('unas_cifar10', DartsCifarNet, 'unas_cifar10', pretrained, **kwargs)


@register_model
def unas_cifar100(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """UNAS cell searched on CIFAR-100; CIFAR network C=36, 20 cells, 100 classes (4.07M params)."""
    return _create('unas_cifar100', DartsCifarNet, 'unas_cifar100', pretrained, **kwargs)


@register_model
def unas_imagenet(pretrained: bool = False, **kwargs: Any) -> DartsImageNetNet:
    """UNAS cell searched on ImageNet; ImageNet network C=46 (C=48 exceeds 600M multiply-adds), 14 cells."""
    kwargs.setdefault('init_channels', 46)
    return _create('unas_imagenet', DartsImageNetNet, 'unas_imagenet', pretrained, **kwargs)


@register_model
def darts_v1_cifar(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """DARTS first-order cell; CIFAR network C=36, 20 cells."""
    return _create('darts_v1_cifar', DartsCifarNet, 'darts_v1', pretrained, **kwargs)


@register_model
def darts_v2_cifar(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """DARTS second-order cell; CIFAR network C=36, 20 cells (3.35M params)."""
    return _create('darts_v2_cifar', DartsCifarNet, 'darts_v2', pretrained, **kwargs)


@register_model
def darts_v2_imagenet(pretrained: bool = False, **kwargs: Any) -> DartsImageNetNet:
    """DARTS second-order cell; ImageNet network C=48, 14 cells (4.7M params)."""
    return _create('darts_v2_imagenet', DartsImageNetNet, 'darts_v2', pretrained, **kwargs)


@register_model
def pdarts_cifar(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """P-DARTS cell; CIFAR network C=36, 20 cells (3.4M params)."""
    return _create('pdarts_cifar', DartsCifarNet, 'pdarts', pretrained, **kwargs)


@register_model
def pdarts_imagenet(pretrained: bool = False, **kwargs: Any) -> DartsImageNetNet:
    """P-DARTS cell; ImageNet network C=48, 14 cells (4.9M params)."""
    return _create('pdarts_imagenet', DartsImageNetNet, 'pdarts', pretrained, **kwargs)


@register_model
def pc_darts_cifar(pretrained: bool = False, **kwargs: Any) -> DartsCifarNet:
    """PC-DARTS cell; CIFAR network C=36, 20 cells (3.6M params)."""
    return _create('pc_darts_cifar', DartsCifarNet, 'pc_darts', pretrained, **kwargs)


@register_model
def darts_cell_cifar(pretrained: bool = False, genotype: Any = 'unas_cifar10', **kwargs: Any) -> DartsCifarNet:
    """Any darts genotype (zoo name, YAML path, dict or Genotype) in the CIFAR network; init_channels=, layers=."""
    return _create('darts_cell_cifar', DartsCifarNet, genotype, pretrained, **kwargs)


@register_model
def darts_cell_imagenet(pretrained: bool = False, genotype: Any = 'unas_imagenet', **kwargs: Any) -> DartsImageNetNet:
    """Any darts genotype (zoo name, YAML path, dict or Genotype) in the ImageNet network; init_channels=, layers=."""
    return _create('darts_cell_imagenet', DartsImageNetNet, genotype, pretrained, **kwargs)
