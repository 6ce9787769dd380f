"""The two steps of a UNAS iteration: the w step (supernet weights on L_train) and the φ step (one estimator step).

``w_step`` samples one discrete child (per batch or per example) so that only its ops run; ``phi_step`` asks the
estimator for an unbiased gradient of the objective with respect to the distribution's logits. Both take an optional
``grad_sync`` that averages gradients across processes (``processes.average_gradients``).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .distributions import ArchDistribution
from .estimators import Estimate, MovingAverageBaseline, RebarControl, estimate
from .objectives import Objective

__all__ = ['w_step', 'phi_step', 'GradSync']

GradSync = Callable[[list[Tensor]], None]


def _accuracy(logits: Tensor, targets: Tensor) -> float:
    return float((logits.argmax(-1) == targets).float().mean())


def w_step(supernet: nn.Module, dist: ArchDistribution, images: Tensor, targets: Tensor,
           optimizer: torch.optim.Optimizer, *, per_example: bool, generator: torch.Generator | None,
           grad_clip: float = 5.0, mode: str = 'sample', grad_sync: GradSync | None = None) -> dict[str, float]:
    """Update the supernet weights on L_train of one architecture sample.

    mode 'sample' (UNAS): a discrete child per batch (or per example), so only its ops run. mode 'darts': the dense
    softmax mixture of every op, as in DARTS (used with the 'darts' estimator and for comparisons).
    ``grad_sync`` averages gradients across processes (the loop passes one under torchrun).
    """
    with torch.no_grad():
        if mode == 'sample':
            indices = dist.sample(images.shape[0] if per_example else None, generator=generator)
            weights = dist.one_hot(indices)
        elif mode == 'darts':
            weights = {k: v.detach() for k, v in dist.probs().items()}
        else:
            raise ValueError(f"w_step: unknown mode {mode!r}; allowed values are ['sample', 'darts']")
    logits = supernet(images, weights)
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group['params']]
    if grad_sync is not None:
        grad_sync(params)
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return {'w_loss': float(loss.detach()), 'w_acc': _accuracy(logits.detach(), targets),
            'w_grad_norm': float(grad_norm)}


@contextlib.contextmanager
def _weights_frozen(module: nn.Module) -> Iterator[None]:
    """The φ step differentiates through the network but must not accumulate (or pay for) weight gradients."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _objective_fn(supernet: nn.Module, objective: Objective, train_batch: tuple[Tensor, Tensor],
                  val_batch: tuple[Tensor, Tensor], arch_samples: int | None) -> Callable[[dict], Tensor]:
    """The estimator's loss_fn: the objective of the weights' architecture(s) on this (train, validation) batch.

    Both batches run in one supernet call. Per-example weights ``[N, n]`` are repeated for every part, so that pair
    ``i`` runs the same child in both halves. With ``arch_samples`` (K) the weights are ``[K, n]``: K architectures,
    each run on the whole batch (its own batch-norm statistics), giving ``[K]`` objectives on the same data.
    """
    parts = ([train_batch] if objective.needs_train else []) + ([val_batch] if objective.needs_val else [])
    images = torch.cat([x for x, _ in parts])
    targets = torch.cat([y for _, y in parts])
    sizes = [x.shape[0] for x, _ in parts]

    def one_call(weights: dict[str, Tensor]) -> Tensor:
        run_weights = {k: torch.cat([w] * len(parts)) if w.dim() == 2 else w for k, w in weights.items()}
        losses = F.cross_entropy(supernet(images, run_weights), targets, reduction='none').split(sizes)
        return objective(weights, losses[0] if objective.needs_train else None,
                         losses[-1] if objective.needs_val else None)

    def per_architecture(weights: dict[str, Tensor]) -> Tensor:
        count = next(iter(weights.values())).shape[0]
        return torch.stack([one_call({k: w[i] for k, w in weights.items()}) for i in range(count)])

    return one_call if arch_samples is None else per_architecture


def phi_step(supernet: nn.Module, dist: ArchDistribution, train_batch: tuple[Tensor, Tensor],
             val_batch: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer, *, estimator: str = 'rebar',
             objective: Objective = Objective(), per_example: bool = False, temperature: float = 0.4,
             generator: torch.Generator | None = None, step: int = 0,
             baseline: MovingAverageBaseline | float | None = None, grad_sync: GradSync | None = None,
             arch_samples: int | None = None, control: RebarControl | None = None) -> dict[str, float]:
    """Update the architecture distribution with one estimator step on the objective.

    Sampling: one architecture for the batch (default); one per example pair (``per_example``: example ``i`` of the
    train and of the validation batch share it, so ``|L_val − L_train|`` is that architecture's gap); or
    ``arch_samples`` = K architectures each scored on the same batch, so that a leave-one-out baseline (``rloo``,
    ``control.loo_baseline``) also cancels the data noise. ``step`` drives the cost term's λ annealing; ``control``
    holds REBAR/RELAX's η, τ and their adaptation. Returns the estimator's loss, cost, φ's gradient norm and
    diagnostics.
    """
    if per_example and arch_samples is not None:
        raise ValueError('phi_step: arch_samples applies to one-architecture-per-batch sampling, not per_example')
    if per_example and train_batch[0].shape[0] != val_batch[0].shape[0]:
        raise ValueError(f'per-example pairs need equal train and validation batches, got {train_batch[0].shape[0]} '
                         f'and {val_batch[0].shape[0]}')
    loss_fn = _objective_fn(supernet, objective, train_batch, val_batch, arch_samples)
    num_samples = train_batch[0].shape[0] if per_example else arch_samples
    cost = objective.cost
    cost_kwargs = {}
    if cost is not None:
        cost_kwargs = dict(cost_fn=cost.hinge_fn, cost_surrogate=cost.hinge_surrogate, cost_weight=cost.weight(step))
    optimizer.zero_grad(set_to_none=True)
    with _weights_frozen(supernet):
        est: Estimate = estimate(estimator, dist, loss_fn, num_samples=num_samples, temperature=temperature,
                                 baseline=baseline, generator=generator, control=control, **cost_kwargs)
        est.objective.backward()
    if num_samples is not None and estimator != 'darts':
        est.gradient_variance()  # adds diagnostics['grad_variance'] from the per-sample estimates
    params = [p for group in optimizer.param_groups for p in group['params']]
    if grad_sync is not None:
        grad_sync(params)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params if p.grad is not None]))
    optimizer.step()
    stats = {'phi_loss': float(est.loss) if est.loss is not None else float('nan'), 'phi_grad_norm': float(grad_norm)}
    if est.cost is not None:
        stats['cost'] = float(est.cost)
        stats['cost_weight'] = float(cost_kwargs['cost_weight'])
    stats.update(est.diagnostics)
    return stats
