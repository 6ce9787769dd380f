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
from .estimators import Estimate, MovingAverageBaseline, estimate
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
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return {'w_loss': float(loss.detach()), 'w_acc': _accuracy(logits.detach(), targets)}


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


def phi_step(supernet: nn.Module, dist: ArchDistribution, train_batch: tuple[Tensor, Tensor],
             val_batch: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer, *, estimator: str = 'rebar',
             objective: Objective = Objective(), per_example: bool = False, temperature: float = 0.4,
             generator: torch.Generator | None = None, step: int = 0,
             baseline: MovingAverageBaseline | float | None = None,
             grad_sync: GradSync | None = None) -> dict[str, float]:
    """Update the architecture distribution with one estimator step on the objective.

    Example ``i`` of the train batch and example ``i`` of the validation batch share one architecture (per-example
    mode) so that ``|L_val − L_train|`` is the gap of that architecture; both batches run in one supernet call.
    ``step`` drives the cost term's λ annealing. Returns the estimator's loss, cost and diagnostics.
    """
    (x_train, y_train), (x_val, y_val) = train_batch, val_batch
    if per_example and x_train.shape[0] != x_val.shape[0]:
        raise ValueError(f'per-example pairs need equal train and validation batches, got {x_train.shape[0]} and '
                         f'{x_val.shape[0]}')
    parts = ([(x_train, y_train)] if objective.needs_train else []) + ([(x_val, y_val)] if objective.needs_val else [])
    images = torch.cat([x for x, _ in parts])
    targets = torch.cat([y for _, y in parts])
    sizes = [x.shape[0] for x, _ in parts]

    def loss_fn(weights: dict[str, Tensor]) -> Tensor:
        # Repeat a per-example architecture for every part, so that pair i runs the same child in both halves.
        run_weights = {k: torch.cat([w] * len(parts)) if w.dim() == 2 else w for k, w in weights.items()}
        losses = F.cross_entropy(supernet(images, run_weights), targets, reduction='none').split(sizes)
        train_losses = losses[0] if objective.needs_train else None
        val_losses = losses[-1] if objective.needs_val else None
        return objective(weights, train_losses, val_losses)

    cost = objective.cost
    cost_kwargs = {}
    if cost is not None:
        cost_kwargs = dict(cost_fn=cost.hinge_fn, cost_surrogate=cost.hinge_surrogate, cost_weight=cost.weight(step))
    optimizer.zero_grad(set_to_none=True)
    with _weights_frozen(supernet):
        est: Estimate = estimate(estimator, dist, loss_fn, num_samples=sizes[0] if per_example else None,
                                 temperature=temperature, baseline=baseline, generator=generator, **cost_kwargs)
        est.objective.backward()
    if per_example:
        est.gradient_variance()  # adds diagnostics['grad_variance'] from the per-example estimates
    params = [p for group in optimizer.param_groups for p in group['params']]
    if grad_sync is not None:
        grad_sync(params)
    optimizer.step()
    stats = {'phi_loss': float(est.loss) if est.loss is not None else float('nan')}
    if est.cost is not None:
        stats['cost'] = float(est.cost)
        stats['cost_weight'] = float(cost_kwargs['cost_weight'])
    stats.update(est.diagnostics)
    return stats
