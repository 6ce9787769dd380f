"""Factorized categorical distributions over architectures, and their Gumbel relaxations.

An architecture is a set of independent categorical variables (UNAS §3.1, §4.1). Each variable owns a 1-D logits
``nn.Parameter`` (zero-initialised: every choice equally likely) so that an optimizer, a checkpoint and DDP can own
them like any other weight.

All relaxation maths of the package lives in this module (``estimators.py`` only combines the pieces):

* Gumbel-max: ``z = log q + g``, ``b = argmax z`` is an exact sample of ``Cat(q)``;
* Gumbel-softmax: ``zeta = softmax(z / tau)``, differentiable in the logits with the noise held fixed;
* the conditional sample ``zeta~ ~ p(zeta | b)`` of REBAR, built from the *same* noise (see
  ``/work/shared/reference/estimators.md``): ``zeta~`` equals ``zeta`` in value but has its own gradient path, so one
  relaxed forward pass of the loss serves both the Gumbel term and the correction term.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from unas_zoo.genotypes.schema import (
    BRANCHES_PER_NODE, CIFAR_SEARCH_OPS, DARTS_OPS, MBCONV_CHOICES, NODES_PER_CELL, Branch, Cell, DartsGenotype,
    Genotype, MBConvBackbone, MBConvGenotype, load)

__all__ = [
    'RelaxedSample', 'gumbel_max', 'relaxed_sample', 'one_hot', 'log_prob', 'entropy',
    'ArchDistribution', 'DartsCellDistribution', 'MBConvDistribution', 'darts_choices', 'mbconv_choices',
]

CELL_TYPES = ('normal', 'reduce')


# ----------------------------------------------------------------------------------------------- relaxation maths

def _sample_shape(logits: Tensor, num_samples: int | None) -> tuple[int, ...]:
    """[K] for one architecture per batch, [N, K] for one per example (logits may already be [N, K])."""
    if num_samples is None:
        return tuple(logits.shape)
    return (num_samples, logits.shape[-1])


def _perturb(logits: Tensor, num_samples: int | None, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Gumbel-perturbed log-probabilities ``z = log q + g``; returns (log q, z). z carries the logits' gradient."""
    log_q = F.log_softmax(logits, dim=-1)
    u = torch.rand(_sample_shape(logits, num_samples), generator=generator, device=logits.device,
                   dtype=logits.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
    return log_q, log_q + gumbel


def gumbel_max(logits: Mapping[str, Tensor], num_samples: int | None = None,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """One exact sample per variable: LongTensor of shape [] (num_samples=None) or [N]."""
    with torch.no_grad():
        return {name: _perturb(theta, num_samples, generator)[1].argmax(-1) for name, theta in logits.items()}


@dataclass
class RelaxedSample:
    """A discrete sample b and its two relaxations, per variable.

    ``relaxed`` (zeta) and ``conditional`` (zeta~ ~ p(zeta | b)) have the same value (noise reuse) and different
    gradient paths to the logits.
    """
    indices: dict[str, Tensor]      # b: [] or [N] long
    one_hot: dict[str, Tensor]      # H(b): [K] or [N, K]
    relaxed: dict[str, Tensor]      # zeta = softmax((log q + g) / tau)
    conditional: dict[str, Tensor]  # zeta~ = softmax(z~ / tau), z~ ~ p(z | argmax z = b)
    perturbed: dict[str, Tensor] = field(default_factory=dict)  # z = log q + g, detached
    temperature: float | Tensor = 0.4

    def single_pass(self) -> dict[str, Tensor]:
        """x = zeta - zeta~ + zeta~.detach(): f(x) has the value f(zeta~), backpropagates grad f(zeta) - grad f(zeta~).

        This is what makes REBAR/RELAX cost one relaxed forward pass instead of two. When the temperature is a
        tensor that requires grad (REBAR's tau adaptation), the detached zeta~ keeps its tau path, so f(x) is also
        differentiable in tau as f(zeta~) is.
        """
        tau = self.temperature
        if isinstance(tau, Tensor) and tau.requires_grad:
            return {k: self.relaxed[k] - self.conditional[k] + torch.softmax(self.perturbed[k] / tau, dim=-1)
                    for k in self.relaxed}
        return {k: self.relaxed[k] - self.conditional[k] + self.conditional[k].detach() for k in self.relaxed}


def _conditional_logits(log_q: Tensor, z: Tensor, index: Tensor) -> Tensor:
    """z~ ~ p(z | argmax z = b), differentiable in log q, with the noise recovered from z (so that z~ == z in value).

    With a_i = -log v_i: z~_b = -log a_b and z~_i = -log(a_i / q_i + a_b). Recovering v from u gives
    a_b = exp(-z_b) and a_i = q_i (exp(-z_i) - exp(-z_b)); a (i.e. v) is held fixed (detached), q carries the gradient.
    """
    z = z.detach()
    mask = F.one_hot(index, z.shape[-1]).bool()
    z_b = z.gather(-1, index.unsqueeze(-1))
    log_a_b = -z_b
    # log a_i = log q_i - z_i + log(1 - exp(z_i - z_b)); at i = b this is -inf, which the mask below discards
    # (and logaddexp(-inf, .) has a zero, finite gradient, so nothing leaks through torch.where).
    log_a = log_q.detach() - z + torch.log1p(-torch.exp((z - z_b).clamp_max(0)))
    z_cond = -torch.logaddexp(log_a - log_q, log_a_b)
    return torch.where(mask, z_b.expand_as(z), z_cond)


def relaxed_sample(logits: Mapping[str, Tensor], num_samples: int | None = None, temperature: float | Tensor = 0.4,
                   generator: torch.Generator | None = None) -> RelaxedSample:
    """Draw b by Gumbel-max and build zeta and zeta~ from the same noise (same indices as ``gumbel_max``).

    ``temperature`` may be a scalar tensor requiring grad (REBAR's tau adaptation): both relaxations depend on it.
    """
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {float(temperature)}')
    indices, hard, relaxed, conditional, perturbed = {}, {}, {}, {}, {}
    for name, theta in logits.items():
        log_q, z = _perturb(theta, num_samples, generator)
        b = z.detach().argmax(-1)
        indices[name] = b
        hard[name] = F.one_hot(b, theta.shape[-1]).to(theta.dtype)
        relaxed[name] = torch.softmax(z / temperature, dim=-1)
        conditional[name] = torch.softmax(_conditional_logits(log_q, z, b) / temperature, dim=-1)
        perturbed[name] = z.detach()
    return RelaxedSample(indices, hard, relaxed, conditional, perturbed, temperature)


def one_hot(indices: Mapping[str, Tensor], sizes: Mapping[str, int], dtype: torch.dtype = torch.float32
            ) -> dict[str, Tensor]:
    """Indices ([] or [N]) -> float one-hot weight vectors ([K] or [N, K])."""
    return {name: F.one_hot(torch.as_tensor(idx).long(), sizes[name]).to(dtype) for name, idx in indices.items()}


def log_prob(logits: Mapping[str, Tensor], indices: Mapping[str, Tensor]) -> Tensor:
    """log p(b) summed over variables: [] or [N]. Logits may be [K] or per example [N, K]."""
    total = 0
    for name, theta in logits.items():
        log_q = F.log_softmax(theta, dim=-1)
        idx = torch.as_tensor(indices[name], device=theta.device).long()
        log_q = log_q.expand(*idx.shape, log_q.shape[-1])
        total = total + log_q.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    return total


def entropy(logits: Mapping[str, Tensor]) -> Tensor:
    """Entropy of the factorized distribution (sum over variables), in nats."""
    total = 0
    for theta in logits.values():
        log_q = F.log_softmax(theta, dim=-1)
        total = total - (log_q.exp() * log_q).sum(-1)
    return total


# --------------------------------------------------------------------------------------------------- distributions

def darts_choices(ops: Sequence[str]) -> dict[str, tuple]:
    """The DARTS space's variables (paper §4.1) and their labels: per cell and node, two input selectors over the
    node's 2 + n predecessors and two op selectors over ``ops``. Supernets size their weights from this too."""
    choices: dict[str, tuple] = {}
    for cell in CELL_TYPES:
        for n in range(NODES_PER_CELL):
            for b in range(BRANCHES_PER_NODE):
                choices[f'{cell}_node{n}_input{b}'] = tuple(range(n + 2))
                choices[f'{cell}_node{n}_op{b}'] = tuple(ops)
    return choices


def mbconv_choices(backbone: MBConvBackbone) -> dict[str, tuple]:
    """The MBConv space's variables: ``layer01``.. one per layer (1-based as in the paper), without 'zero' where
    width or stride changes."""
    fixed = set(backbone.fixed_layers)
    return {f'layer{i + 1:02d}': MBCONV_CHOICES[1:] if i in fixed else MBCONV_CHOICES
            for i in range(backbone.num_layers)}


class ArchDistribution(nn.Module):
    """Independent categorical variables with zero-initialised logits; ``choices`` maps name -> labels in order.

    Subclasses map indices to and from a zoo ``Genotype``; this base class is usable on its own for any small
    factorized problem (e.g. the estimator tests).
    """

    def __init__(self, choices: Mapping[str, Sequence]):
        super().__init__()
        self.choices: dict[str, tuple] = {}
        for name, labels in choices.items():
            if '.' in name or not name:
                raise ValueError(f'variable name {name!r} must be non-empty and contain no "."')
            if len(labels) < 1:
                raise ValueError(f'variable {name!r} needs at least one choice')
            self.choices[name] = tuple(labels)
        self.logits = nn.ParameterDict({name: nn.Parameter(torch.zeros(len(labels)))
                                        for name, labels in self.choices.items()})

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(labels) for name, labels in self.choices.items()}

    def logits_dict(self) -> dict[str, Tensor]:
        """name -> 1-D logits; the Parameters themselves (gradients land in them)."""
        return {name: self.logits[name] for name in self.choices}

    def probs(self) -> dict[str, Tensor]:
        return {name: torch.softmax(theta, dim=-1) for name, theta in self.logits_dict().items()}

    def sample(self, num_samples: int | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """One architecture (LongTensors of shape []) or one per example (shape [N])."""
        return gumbel_max(self.logits_dict(), num_samples, generator)

    def relaxed_sample(self, num_samples: int | None = None, temperature: float = 0.4,
                       generator: torch.Generator | None = None) -> RelaxedSample:
        return relaxed_sample(self.logits_dict(), num_samples, temperature, generator)

    def one_hot(self, indices: Mapping[str, Tensor]) -> dict[str, Tensor]:
        dtype = next(iter(self.logits.values())).dtype
        device = next(iter(self.logits.values())).device
        return {k: v.to(device) for k, v in one_hot(indices, self.sizes, dtype).items()}

    def log_prob(self, indices: Mapping[str, Tensor]) -> Tensor:
        return log_prob(self.logits_dict(), indices)

    def entropy(self) -> Tensor:
        return entropy(self.logits_dict())

    def argmax(self) -> dict[str, int]:
        """The most likely choice of every variable: the architecture the search reports."""
        return {name: int(theta.argmax()) for name, theta in self.logits_dict().items()}

    def labels(self, indices: Mapping[str, int | Tensor] | None = None) -> dict[str, object]:
        """Indices (default: argmax) -> the chosen labels."""
        indices = self.argmax() if indices is None else indices
        missing = set(self.choices) - set(indices)
        if missing:
            raise ValueError(f'indices lack variable(s) {sorted(missing)}')
        out = {}
        for name, labels in self.choices.items():
            idx = indices[name]
            if isinstance(idx, Tensor) and idx.numel() != 1:
                raise ValueError(f'{name}: expected one index (one architecture), got shape {tuple(idx.shape)}')
            idx = int(idx)
            if not 0 <= idx < len(labels):
                raise ValueError(f'{name}: index {idx} out of range 0..{len(labels) - 1}')
            out[name] = labels[idx]
        return out

    def to_genotype(self, indices: Mapping[str, int | Tensor] | None = None, **meta) -> Genotype:
        """Indices (default: argmax) -> the zoo's Genotype; meta (name, provenance, metrics) is passed through."""
        raise NotImplementedError(f'{type(self).__name__} has no genotype; use DartsCellDistribution or '
                                  'MBConvDistribution')

    def encode(self, genotype) -> dict[str, int]:
        """Genotype (or anything ``unas_zoo.genotypes.load`` accepts) -> indices; the inverse of ``to_genotype``."""
        raise NotImplementedError(f'{type(self).__name__} has no genotype')

    def _index(self, name: str, label, genotype_name: str) -> int:
        labels = self.choices[name]
        if label not in labels:
            raise ValueError(f'{genotype_name}: {name} = {label!r} is not in this search space; '
                             f'allowed values are {list(labels)}')
        return labels.index(label)


class DartsCellDistribution(ArchDistribution):
    """Factorized cells (UNAS §4.1): per cell type and node, two input selectors and two op selectors.

    Node n reads two of its 2 + n predecessors (the two cell inputs and nodes 0..n-1), so the derived cell has exactly
    two inputs per node with no post-search pruning.
    """

    def __init__(self, ops: Sequence[str] = CIFAR_SEARCH_OPS):
        ops = tuple(ops)
        unknown = [op for op in ops if op not in DARTS_OPS]
        if not ops or unknown or len(set(ops)) != len(ops):
            raise ValueError(f'ops must be distinct names from {list(DARTS_OPS)}; got {list(ops)}')
        super().__init__(darts_choices(ops))
        self.ops = ops

    def to_genotype(self, indices: Mapping[str, int | Tensor] | None = None, **meta) -> DartsGenotype:
        chosen = self.labels(indices)

        def cell(kind: str) -> Cell:
            return Cell(tuple(
                tuple(Branch(chosen[f'{kind}_node{n}_op{b}'], chosen[f'{kind}_node{n}_input{b}'])
                      for b in range(BRANCHES_PER_NODE))
                for n in range(NODES_PER_CELL)))
        return DartsGenotype(normal=cell('normal'), reduce=cell('reduce'), **meta)

    def encode(self, genotype) -> dict[str, int]:
        genotype = load(genotype)
        label = genotype.name or '<genotype>'
        if not isinstance(genotype, DartsGenotype):
            raise ValueError(f'{label}: expected a darts-space genotype, got space {genotype.space!r}')
        out = {}
        for kind in CELL_TYPES:
            for n, node in enumerate(getattr(genotype, kind).nodes):
                for b, branch in enumerate(node):
                    out[f'{kind}_node{n}_input{b}'] = self._index(f'{kind}_node{n}_input{b}', branch.input, label)
                    out[f'{kind}_node{n}_op{b}'] = self._index(f'{kind}_node{n}_op{b}', branch.op, label)
        return out


class MBConvDistribution(ArchDistribution):
    """One choice per layer of the ProxylessNAS backbone; 'zero' is excluded where width or stride changes."""

    def __init__(self, backbone: MBConvBackbone = MBConvBackbone()):
        super().__init__(mbconv_choices(backbone))
        self.backbone = backbone

    def to_genotype(self, indices: Mapping[str, int | Tensor] | None = None, **meta) -> MBConvGenotype:
        chosen = self.labels(indices)
        return MBConvGenotype(layers=tuple(chosen[name] for name in self.choices), backbone=self.backbone, **meta)

    def encode(self, genotype) -> dict[str, int]:
        genotype = load(genotype)
        label = genotype.name or '<genotype>'
        if not isinstance(genotype, MBConvGenotype):
            raise ValueError(f'{label}: expected an mbconv-space genotype, got space {genotype.space!r}')
        if genotype.backbone != self.backbone:
            raise ValueError(f'{label}: its backbone {genotype.backbone} differs from the searched one {self.backbone}')
        return {name: self._index(name, choice, label) for name, choice in zip(self.choices, genotype.layers)}
