"""What the architecture (φ) step minimises: L_train, L_val, the generalization loss and the architecture penalty.

The paper's search objective (Eq. 8) is ``L_gen = L_train + λ |L_val − L_train|``, taken per example *pair*: example
``i`` of the train batch and example ``i`` of the validation batch run the same sampled architecture, so the gap is
measured for that architecture (as the authors' released code does). Eq. 8 writes the gap of the architecture's
losses; with one architecture per batch, ``gen_gap='batch'`` takes that literally: ``|mean ℓ_val − mean ℓ_train|``.
App. A.2 adds ``λ_arch Σ_n tr([i_n ⊗ o_n][i'_n ⊗ o'_n]^T)``, which is 1 for every node whose two branches pick the
same (input, op) pair. A non-differentiable cost (latency, issue 4) plugs in through
``Objective.cost`` and is estimated with RELAX by the estimator, not here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from .costs import CostTerm

__all__ = ['OBJECTIVES', 'GEN_GAPS', 'Objective', 'generalization_loss', 'architecture_penalty']

OBJECTIVES = ('gen', 'train', 'val')
GEN_GAPS = ('pair', 'batch')
# A node's first input selector; its three siblings share the prefix (see distributions.py for the names).
_NODE_INPUT0 = re.compile(r'^(?P<node>.+_node\d+)_input0$')


def generalization_loss(train_losses: Tensor, val_losses: Tensor, gen_lambda: float = 0.5) -> Tensor:
    """Per-pair ``L_train + λ |L_val − L_train|``; inputs and output have the same shape."""
    return train_losses + gen_lambda * (val_losses - train_losses).abs()


def architecture_penalty(weights: dict[str, Tensor]) -> Tensor:
    """Σ over nodes of ``tr([i ⊗ o][i' ⊗ o']^T) = (i · i')(o · o')``.

    Exactly the number of duplicated branches for one-hot weights and a smooth overlap for relaxed ones. Weights of
    shape ``[K]`` give a scalar, ``[N, K]`` (one architecture per example) give ``[N]``. A space without
    input/op selectors (MBConv) has no duplicate branches and gets zero.
    """
    total: Tensor | None = None
    for name in weights:
        match = _NODE_INPUT0.match(name)
        if match is None:
            continue
        node = match['node']
        inputs = (weights[f'{node}_input0'] * weights[f'{node}_input1']).sum(-1)
        ops = (weights[f'{node}_op0'] * weights[f'{node}_op1']).sum(-1)
        term = inputs * ops
        total = term if total is None else total + term
    if total is None:
        first = next(iter(weights.values()))
        return first.new_zeros(first.shape[:-1])
    return total


@dataclass
class Objective:
    """The φ step's loss, configurable as in the paper's ablations (Table 2: L_train, L_val, L_gen).

    Attributes:
        kind: 'gen' (Eq. 8), 'train' or 'val'.
        gen_lambda: λ of the generalization gap.
        arch_lambda: λ_arch of the duplicate-branch penalty (0 disables it).
        cost: an optional non-differentiable cost term (``costs.CostTerm``) the estimator adds with RELAX.
        gen_gap: 'pair' (mean of per-pair gaps) or 'batch' (gap of the batch means; one architecture per batch only).
    """
    kind: str = 'gen'
    gen_lambda: float = 0.5
    arch_lambda: float = 0.2
    cost: 'CostTerm | None' = None
    gen_gap: str = 'pair'

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ValueError(f'objective: unknown kind {self.kind!r}; allowed values are {list(OBJECTIVES)}')
        if self.gen_gap not in GEN_GAPS:
            raise ValueError(f'objective: unknown gen_gap {self.gen_gap!r}; allowed values are {list(GEN_GAPS)}')
        for name in ('gen_lambda', 'arch_lambda'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f'objective: {name} must be a number >= 0, got {value!r}')

    @property
    def needs_train(self) -> bool:
        return self.kind in ('gen', 'train')

    @property
    def needs_val(self) -> bool:
        return self.kind in ('gen', 'val')

    def data_loss(self, train_losses: Tensor | None, val_losses: Tensor | None) -> Tensor:
        """Per-example loss from per-example cross-entropies (only those ``needs_train``/``needs_val`` ask for)."""
        if self.kind == 'train':
            return train_losses
        if self.kind == 'val':
            return val_losses
        return generalization_loss(train_losses, val_losses, self.gen_lambda)

    def __call__(self, weights: dict[str, Tensor], train_losses: Tensor | None,
                 val_losses: Tensor | None) -> Tensor:
        """The loss the estimator differentiates: ``[N]`` for per-example weights, a scalar for ``[K]`` weights."""
        per_example = next(iter(weights.values())).dim() == 2
        if self.gen_gap == 'batch' and self.kind == 'gen':
            if per_example:
                raise ValueError("objective: gen_gap 'batch' needs one architecture per batch ([K] weights); "
                                 "per-example weights take gen_gap 'pair'")
            loss = generalization_loss(train_losses.mean(), val_losses.mean(), self.gen_lambda)
        else:
            loss = self.data_loss(train_losses, val_losses)
            if not per_example:
                loss = loss.mean()
        if self.arch_lambda:
            loss = loss + self.arch_lambda * architecture_penalty(weights)
        return loss
