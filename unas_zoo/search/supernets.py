"""Search supernets: every candidate op of a space, run only where the architecture weights are non-zero.

Both supernets are built from the modules of the evaluation networks (one definition of each op):

* ``DartsSupernet`` is the zoo's DARTS network (``DartsCifarNet`` / ``DartsImageNetNet``: stem, cell-input
  preprocessing, reduction schedule, classifier head) with every node replaced by a mixed node that holds one
  ``unas_zoo.ops`` module per (input edge, op). BN has no affine and pools get a non-affine BN, as in DARTS search.
  UNAS factorizes each node into two input selectors i, i' and two op selectors o, o' (paper §4.1, Fig. 2); the two
  branches share the edge's op modules and the weight of (input m, op k) is ``i[m] o[k] + i'[m] o'[k]``.
* ``MBConvSupernet`` holds, per layer of the ProxylessNAS backbone, the timm blocks (``InvertedResidual``) of all
  six MBConv choices, built by timm's EfficientNet builder exactly as ``unas_zoo.models.mbconv`` builds the eval
  net, plus 'zero' (the identity, with optional dropout: paper App. E.1) on layers that keep width and stride.

The weights (from ``ArchDistribution.one_hot`` or a relaxation) are ``[K]`` for one architecture per batch or
``[N, K]`` for one per example. Ops whose weight is zero are not run: a one-hot sample costs what its child costs,
and per-example samples run each op only on the examples that chose it (``index_select`` / ``index_add``).
``child(genotype)`` builds the eval-net-structured child with the supernet's weights copied in; with a one-hot
sample the supernet and the child compute the same function.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..genotypes import (
    CIFAR_SEARCH_OPS, DARTS_OPS, MBCONV_CHOICES, NODES_PER_CELL, Branch, Cell, DartsGenotype, Genotype,
    MBConvBackbone, MBConvGenotype, load)
from ..genotypes.schema import BRANCHES_PER_NODE
from ..models.darts_cells import DartsCifarNet, DartsImageNetNet, DartsNet
from ..models.mbconv import build_mbconv
from ..ops import make_op
from .config import SUBSET_BN
from .distributions import CELL_TYPES, darts_choices, mbconv_choices

__all__ = ['DartsSupernet', 'MBConvSupernet', 'edge_weights']


GenotypeLike = Union[str, os.PathLike, dict, Genotype]
STEMS = {'cifar': DartsCifarNet, 'imagenet': DartsImageNetNet}


# ------------------------------------------------------------------------------------------------- active ops

@dataclass
class _Term:
    """One op to run: choice ``choice`` scaled by ``weight`` (None: exactly 1, skip the multiply) on the examples
    ``index`` (None: the whole batch). ``weight`` is [] or [n, 1, 1, 1]."""
    choice: int
    weight: Tensor | None
    index: Tensor | None


def _active_terms(weights: Sequence[Tensor]) -> list[list[_Term]]:
    """For each weight tensor ([J] or [N, J]) the choices with a non-zero weight, found with a single host sync.

    Per-example choices taken by every example run on the whole batch; the others get the indices of the examples
    that took them (all indices travel to the device in one copy). Constant weights equal to 1 (one-hot samples
    that need no gradient) skip the multiply, so a one-hot sample runs exactly the child's ops.
    """
    flat = torch.cat([w.detach().reshape(-1, w.shape[-1]) for w in weights], dim=-1).cpu()
    per_example = weights[0].dim() == 2
    found, subsets, offset = [], [], 0  # found: (tensor, choice, unit weight, position in subsets or None)
    for i, w in enumerate(weights):
        values = flat[:, offset:offset + w.shape[-1]]
        offset += w.shape[-1]
        for j in values.ne(0).any(0).nonzero().flatten().tolist():
            chosen = values[:, j].ne(0)
            unit = not w.requires_grad and bool(values[:, j][chosen].eq(1).all())
            subset = None
            if per_example and not bool(chosen.all()):
                subset = len(subsets)
                subsets.append(chosen.nonzero().flatten())
            found.append((i, j, unit, subset))
    on_device = (torch.cat(subsets).to(weights[0].device, non_blocking=True).split([len(s) for s in subsets])
                 if subsets else ())
    plans: list[list[_Term]] = [[] for _ in weights]
    for i, j, unit, subset in found:
        w = weights[i]
        index = None if subset is None else on_device[subset]
        if unit:
            weight = None
        elif not per_example:
            weight = w[j]
        else:
            weight = (w[:, j] if index is None else w[index, j]).view(-1, 1, 1, 1)
        plans[i].append(_Term(j, weight, index))
    return plans


def _bn_on_running_statistics(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Training: fold this input's statistics into the running ones, then normalise with the running ones."""
    if bn.training:
        with torch.no_grad():
            dims = [0] + list(range(2, x.dim()))
            count = x.numel() // x.shape[1]
            momentum = bn.momentum if bn.momentum is not None else 1.0 / (int(bn.num_batches_tracked) + 1)
            bn.running_mean.lerp_(x.mean(dims), momentum)
            if count > 1:
                bn.running_var.lerp_(x.var(dims, correction=1), momentum)
            bn.num_batches_tracked += 1
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@contextlib.contextmanager
def _running_statistics(op: nn.Module):
    """Within the block, every BN of ``op`` normalises with (and updates) its running statistics."""
    norms = [m for m in op.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    for bn in norms:
        bn.forward = lambda x, bn=bn: _bn_on_running_statistics(bn, x)
    try:
        yield
    finally:
        for bn in norms:
            del bn.forward


def _run(op: nn.Module, x: Tensor, term: _Term, out: Tensor | None, subset_bn: str = 'subset') -> Tensor:
    """out + weight * op(x), restricted to the term's examples.

    ``subset_bn`` (``config.SUBSET_BN``): with per-example samples an op runs on the 2-4 examples that chose it;
    'subset' normalises with their statistics (DARTS-style BN, the paper's behaviour), 'running' with the op's
    running statistics, which each subset updates (momentum), so a handful of examples never sets the scale alone.
    """
    if term.index is None:
        y = op(x)
        if term.weight is not None:
            y = y * term.weight
        return y if out is None else out + y
    with _running_statistics(op) if subset_bn == 'running' else contextlib.nullcontext():
        y = op(x.index_select(0, term.index))
    if term.weight is not None:
        y = y * term.weight
    if out is None:
        out = y.new_zeros((x.shape[0], *y.shape[1:]))
    return out.index_add(0, term.index, y)


def _check_weights(weights: Mapping[str, Tensor], sizes: Mapping[str, int], batch_size: int, owner: str) -> None:
    """Validate names and shapes: every variable [K], or every variable [N, K] with N the batch size."""
    missing = [name for name in sizes if name not in weights]
    if missing:
        raise ValueError(f'{owner}: weights lack {missing[:4]}{" ..." if len(missing) > 4 else ""} '
                         f'(expected the variables of its architecture distribution)')
    dims = {weights[name].dim() for name in sizes}
    if dims - {1, 2} or len(dims) != 1:
        raise ValueError(f'{owner}: weights must all be [K] (one architecture per batch) or all [N, K] (one per '
                         f'example); got {sorted(dims)}-D tensors')
    for name, size in sizes.items():
        shape = tuple(weights[name].shape)
        if shape[-1] != size or (len(shape) == 2 and shape[0] != batch_size):
            wanted = f'[{size}]' if len(shape) == 1 else f'[{batch_size}, {size}]'
            raise ValueError(f'{owner}: weights[{name!r}] has shape {list(shape)}, expected {wanted}')


# --------------------------------------------------------------------------------------------------- DARTS

def edge_weights(weights: Mapping[str, Tensor], cell: str, node: int) -> Tensor:
    """Weight of (input m, op k) for a node: ``i[m] o[k] + i'[m] o'[k]`` (paper Fig. 2); [M, K] or [N, M, K]."""
    total = 0
    for b in range(BRANCHES_PER_NODE):
        inputs, ops = weights[f'{cell}_node{node}_input{b}'], weights[f'{cell}_node{node}_op{b}']
        total = total + inputs.unsqueeze(-1) * ops.unsqueeze(-2)
    return total


class _MixedNode(nn.Module):
    """A node of the supernet: one module per (input edge, op); runs the (edge, op) pairs its terms name."""

    def __init__(self, node: int, ops: Sequence[str], channels: int, reduction: bool, subset_bn: str = 'subset'):
        super().__init__()
        self.ops, self.subset_bn = tuple(ops), subset_bn
        # Input m of node n: the cell inputs (m < 2, strided in a reduction cell) and nodes 0 .. n-1.
        self.edges = nn.ModuleList([
            nn.ModuleDict({op: make_op(op, channels, 2 if reduction and m < 2 else 1, affine=False, pool_bn=True)
                           for op in ops})
            for m in range(node + 2)])

    def forward(self, states: list[Tensor], terms: list[_Term]) -> Tensor:
        out = None
        for term in terms:
            m, k = divmod(term.choice, len(self.ops))
            out = _run(self.edges[m][self.ops[k]], states[m], term, out, self.subset_bn)
        assert out is not None, 'every node has at least one active (input, op) pair'
        return out


def _placeholder_genotype() -> DartsGenotype:
    """A genotype reading both cell inputs: building the eval net with it gives every cell both preprocessings."""
    node = (Branch('skip_connect', 0), Branch('skip_connect', 1))
    cell = Cell((node,) * NODES_PER_CELL)
    return DartsGenotype(normal=cell, reduce=cell, name='supernet')


class DartsSupernet(nn.Module):
    """The DARTS factorized-cell supernet (UNAS §4.1); the zoo's eval network with mixed nodes.

    Args:
        num_classes: classifier outputs.
        init_channels: C of the first cells (16 for the CIFAR search).
        layers: number of cells (8 for CIFAR, 14 for ImageNet); reductions at 1/3 and 2/3 of the depth.
        ops: candidate ops, in the order of the distribution's op labels.
        stem: 'cifar' (conv3x3 + BN, ``stem_multiplier`` x C) or 'imagenet' (three stride-2 convs).
        subset_bn: how ops run on a subset of the batch (per-example samples) normalise; see ``SUBSET_BN``.
    """

    def __init__(self, num_classes: int, init_channels: int = 16, layers: int = 8,
                 ops: Sequence[str] = CIFAR_SEARCH_OPS, stem: str = 'cifar', in_chans: int = 3,
                 stem_multiplier: int = 3, subset_bn: str = 'subset'):
        super().__init__()
        ops = tuple(ops)
        if not ops or set(ops) - set(DARTS_OPS) or len(set(ops)) != len(ops):
            raise ValueError(f'DartsSupernet: ops must be distinct names from {list(DARTS_OPS)}; got {list(ops)}')
        if stem not in STEMS:
            raise ValueError(f'DartsSupernet: unknown stem {stem!r}; allowed values are {list(STEMS)}')
        if subset_bn not in SUBSET_BN:
            raise ValueError(f'DartsSupernet: unknown subset_bn {subset_bn!r}; allowed values are {list(SUBSET_BN)}')
        self.ops, self.stem = ops, stem
        self.net_kwargs = dict(num_classes=num_classes, in_chans=in_chans, init_channels=init_channels, layers=layers,
                               bn_affine=False, pool_bn=True)
        if stem == 'cifar':
            self.net_kwargs['stem_multiplier'] = stem_multiplier
        # The eval net supplies stem, preprocessing, channel schedule and head; its nodes become mixed nodes.
        self.net: DartsNet = STEMS[stem](_placeholder_genotype(), **self.net_kwargs)
        for cell in self.net.cells:
            channels = cell.out_channels // len(cell.concat)
            cell.nodes = nn.ModuleList([_MixedNode(n, ops, channels, cell.reduction, subset_bn)
                                        for n in range(NODES_PER_CELL)])
        self.sizes = {name: len(labels) for name, labels in darts_choices(ops).items()}

    def forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        """Logits of the architecture(s) ``weights`` (one-hot or relaxed, [K] or [N, K] per variable)."""
        _check_weights(weights, self.sizes, x.shape[0], type(self).__name__)
        matrices = [edge_weights(weights, kind, n).flatten(-2) for kind in CELL_TYPES for n in range(NODES_PER_CELL)]
        plans = _active_terms(matrices)
        plan = {kind: plans[i * NODES_PER_CELL:(i + 1) * NODES_PER_CELL] for i, kind in enumerate(CELL_TYPES)}
        s0, s1 = self.net.forward_stem(x)
        for cell in self.net.cells:
            states = [cell.preprocess0(s0), cell.preprocess1(s1)]
            for node, terms in zip(cell.nodes, plan['reduce' if cell.reduction else 'normal']):
                states.append(node(states, terms))
            s0, s1 = s1, torch.cat([states[i] for i in cell.concat], dim=1)
        return self.net.forward_head(s1)

    def child(self, genotype: GenotypeLike) -> DartsNet:
        """The eval-net-structured child (no auxiliary head, the supernet's BN settings) with copied weights."""
        genotype = load(genotype)
        if not isinstance(genotype, DartsGenotype):
            raise ValueError(f'DartsSupernet.child: needs a darts genotype, got space {genotype.space!r}')
        foreign = sorted({b.op for kind in CELL_TYPES for _, b in getattr(genotype, kind).branches} - set(self.ops))
        if foreign:
            raise ValueError(f'DartsSupernet.child: op(s) {foreign} are not in this supernet; its ops are '
                             f'{list(self.ops)}')
        child = STEMS[self.stem](genotype, **self.net_kwargs).to(next(self.parameters()).device)
        shared = {k: v for k, v in self.net.state_dict().items() if not k.startswith('cells.')}
        missing, unexpected = child.load_state_dict(shared, strict=False)
        assert not unexpected and all(k.startswith('cells.') for k in missing), (missing, unexpected)
        for cell, source in zip(child.cells, self.net.cells):
            for name in ('preprocess0', 'preprocess1'):
                if not isinstance(getattr(cell, name), nn.Identity):  # an unread input has no preprocessing
                    getattr(cell, name).load_state_dict(getattr(source, name).state_dict())
            kind = genotype.reduce if cell.reduction else genotype.normal
            for node, mixed, branches in zip(cell.nodes, source.nodes, kind.nodes):
                for op, branch in zip(node.ops, branches):
                    op.load_state_dict(mixed.edges[branch.input][branch.op].state_dict())
        return child.train(self.training)


# -------------------------------------------------------------------------------------------------- MBConv

class MBConvSupernet(nn.Module):
    """The ProxylessNAS-space supernet: per layer the six MBConv blocks and, where allowed, 'zero' (identity).

    Blocks, stem and head are those of timm EfficientNets built by ``build_mbconv`` (one per MBConv choice, every
    layer set to it), so they match the eval net's blocks exactly (activation, BN eps 1e-3, padding, residuals).

    Args:
        zero_dropout: dropout on the 'zero' (identity) path in training; the paper's latency search uses 0.1 so
            that the cheap identity is not over-selected.
    """

    def __init__(self, num_classes: int, backbone: MBConvBackbone = MBConvBackbone(), zero_dropout: float = 0.0,
                 in_chans: int = 3):
        super().__init__()
        if not 0 <= zero_dropout < 1:
            raise ValueError(f'MBConvSupernet: zero_dropout must be in [0, 1), got {zero_dropout}')
        self.backbone, self.num_classes, self.in_chans = backbone, num_classes, in_chans
        blocks = {}
        for choice in MBCONV_CHOICES[1:]:
            net = self._build(MBConvGenotype(layers=(choice,) * backbone.num_layers, backbone=backbone))
            blocks[choice] = [block for stage in net.blocks for block in stage]
        # Stem, first block and head are the same in every net: keep the last one's.
        self.conv_stem, self.bn1, self.first_block = net.conv_stem, net.bn1, blocks[choice][0]
        self.conv_head, self.bn2, self.global_pool, self.classifier = (
            net.conv_head, net.bn2, net.global_pool, net.classifier)
        variables = mbconv_choices(backbone)
        self.layer_choices = tuple(variables.values())
        self.layers = nn.ModuleList([
            nn.ModuleDict({c: nn.Dropout(zero_dropout) if c == 'zero' else blocks[c][i + 1] for c in choices})
            for i, choices in enumerate(self.layer_choices)])
        self.sizes = {name: len(choices) for name, choices in variables.items()}

    def _build(self, genotype: MBConvGenotype) -> nn.Module:
        return build_mbconv(genotype, num_classes=self.num_classes, in_chans=self.in_chans)

    def forward(self, x: Tensor, weights: Mapping[str, Tensor]) -> Tensor:
        """Logits of the architecture(s) ``weights`` (one-hot or relaxed, [K] or [N, K] per layer)."""
        _check_weights(weights, self.sizes, x.shape[0], type(self).__name__)
        plans = _active_terms([weights[name] for name in self.sizes])
        x = self.first_block(self.bn1(self.conv_stem(x)))
        for layer, choices, terms in zip(self.layers, self.layer_choices, plans):
            out = None
            for term in terms:
                out = _run(layer[choices[term.choice]], x, term, out)
            x = out
        return self.classifier(self.global_pool(self.bn2(self.conv_head(x))))

    def child(self, genotype: GenotypeLike) -> nn.Module:
        """The timm EfficientNet of ``genotype`` (as ``create_model('mbconv_net', genotype=...)``), weights copied."""
        genotype = load(genotype)
        if not isinstance(genotype, MBConvGenotype):
            raise ValueError(f'MBConvSupernet.child: needs an mbconv genotype, got space {genotype.space!r}')
        if genotype.backbone != self.backbone:
            raise ValueError(f'MBConvSupernet.child: the genotype backbone {genotype.backbone} differs from the '
                             f'supernet backbone {self.backbone}')
        child = self._build(genotype).to(next(self.parameters()).device)
        for name in ('conv_stem', 'bn1', 'conv_head', 'bn2', 'classifier'):
            getattr(child, name).load_state_dict(getattr(self, name).state_dict())
        sources = [self.first_block] + [layer[c] for layer, c in zip(self.layers, genotype.layers) if c != 'zero']
        targets = [block for stage in child.blocks for block in stage]
        assert len(sources) == len(targets), (len(sources), len(targets))
        for target, source in zip(targets, sources):
            target.load_state_dict(source.state_dict())
        return child.train(self.training)
