"""Gradient estimators of d/dphi E_{z ~ p_phi(z)}[L(z)] for a factorized architecture distribution (UNAS §3.1).

Every estimator builds a scalar *surrogate objective* whose ``.backward()`` leaves one Monte-Carlo estimate of that
gradient in the logits' ``.grad``. Writing f for the loss, H(b) for the one-hot discrete sample, zeta for its Gumbel-
softmax relaxation and zeta~ ~ p(zeta | b) for the conditional relaxation (see ``distributions.py``):

=============  ======================================================================================================
``reinforce``  (f(H(b)) - c) grad log q_b; c a constant or ``MovingAverageBaseline`` (Eq. 1/2, policy-gradient NAS).
``rloo``       REINFORCE over K >= 2 architectures, each with the mean of the other K - 1 rewards as its baseline
               (Kool et al. 2019): mean_k (f_k - mean_{j!=k} f_j) grad log q_{b_k}. Unbiased; one discrete pass per
               architecture, no relaxed pass, no backward through the network.
``gumbel``     grad f(zeta): SNAS. Low variance, biased (it differentiates the relaxed loss, not the discrete one).
``rebar``      Eq. 3 with control-variate scale eta (the paper: eta = 1):
               (f(H(b)) - eta f(zeta~)) grad log q_b - eta grad f(zeta~) + eta grad f(zeta). Unbiased for any eta.
``relax``      Eq. 5: as rebar with a differentiable surrogate g in the control variate, for a non-differentiable
               cost: (c(H(b)) - eta g(zeta~)) grad log q_b - eta grad g(zeta~) + eta grad g(zeta). Unbiased for any g.
``darts``      grad f(softmax(phi)): the deterministic mixture of DARTS, for comparison (not an estimate of the
               discrete objective's gradient).
=============  ======================================================================================================

``control=RebarControl(...)`` (``rebar_control.py``) extends rebar/relax, each option unbiased: ``eta``; a
leave-one-out baseline on the learning signal f(H(b_k)) - eta f(zeta~_k) over K samples; and eta (and tau) adapted
online by an optimizer step on the squared norm of each estimate, taken after the estimate is fixed. control=None is
the paper's estimator with unchanged numerics.

``estimate`` combines a differentiable loss and a non-differentiable cost on the *same* discrete sample, as in the
paper's latency objective E[L_gen] + lambda E[cost]: with ``rebar`` or ``relax`` the loss goes through Eq. 3 (f is
its own control variate) and the cost through Eq. 5 (``cost_surrogate`` is g); with ``reinforce`` the reward is
loss + cost_weight * cost; with ``gumbel``/``darts`` the cost enters only through ``cost_surrogate`` (FBNet style).
REBAR's zeta and zeta~ share their noise, so one relaxed forward pass x = zeta - zeta~ + zeta~.detach() gives both the
control variate's value f(zeta~) and the gradient grad f(zeta) - grad f(zeta~).

``single_sample_gradient`` runs the same code on plain logits tensors and returns the gradient: it exists for tests
(exact enumeration) and research.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import Tensor

from .distributions import ArchDistribution, entropy, log_prob, one_hot, relaxed_sample
from .rebar_control import RebarControl

__all__ = ['ESTIMATORS', 'SINGLE_SAMPLE_ESTIMATORS', 'MovingAverageBaseline', 'Estimate', 'RebarControl', 'estimate',
           'single_sample_gradient']

ESTIMATORS = ('reinforce', 'rloo', 'gumbel', 'rebar', 'relax', 'darts')
SINGLE_SAMPLE_ESTIMATORS = ('reinforce', 'gumbel', 'rebar', 'relax')

WeightsFn = Callable[[dict[str, Tensor]], Tensor]
IndicesFn = Callable[[dict[str, Tensor]], Tensor]


class MovingAverageBaseline:
    """Exponential moving average of REINFORCE's reward, used as its control variate c.

    A step uses the value from *before* its own update, so c does not depend on the current sample and REINFORCE
    stays unbiased. The state is a plain float (``state_dict`` for checkpoints); it starts at 0.
    """

    def __init__(self, decay: float = 0.9):
        if not 0 <= decay < 1:
            raise ValueError(f'decay must be in [0, 1), got {decay}')
        self.decay = decay
        self.value: float | None = None

    def __float__(self) -> float:
        return 0.0 if self.value is None else self.value

    def update(self, reward: float) -> None:
        reward = float(reward)
        self.value = reward if self.value is None else self.decay * self.value + (1 - self.decay) * reward

    def state_dict(self) -> dict[str, float | None]:
        return {'decay': self.decay, 'value': self.value}

    def load_state_dict(self, state: Mapping[str, float | None]) -> None:
        self.decay, self.value = float(state['decay']), state['value']


@dataclass
class Estimate:
    """What one estimator step returns.

    ``objective.backward()`` puts the gradient estimate into the distribution's logits' ``.grad``. It also sends
    gradient to network weights through the relaxed (``rebar``/``relax``/``gumbel``) or mixed (``darts``) pass of
    ``loss_fn``; the discrete pass runs under ``torch.no_grad()``. Zero the weights' gradients before their own step.
    ``reinforce``/``rloo`` and an adapting ``RebarControl`` (whose objective is linear in the logits, the estimate
    being computed already) send none.

    ``loss``/``cost``: detached means over the sample of the discrete loss and cost (``gumbel``: the relaxed loss,
    ``darts``: the mixture loss, which are what those estimators evaluate).
    ``diagnostics``: ``entropy`` (nats, before the step), ``distinct_archs`` (distinct architectures in the sample),
    and in per-example mode ``cv_correlation`` (Pearson correlation across examples of f(H(b_n)) and its control
    variate f(zeta~_n); ``cost_cv_correlation`` likewise for the cost and g) — near 1 means the control variate
    removes most of the REINFORCE variance. ``gradient_variance()`` adds ``grad_variance`` after the backward pass.
    """
    objective: Tensor
    loss: Tensor | None
    cost: Tensor | None
    indices: dict[str, Tensor]
    diagnostics: dict[str, float]
    _per_example: dict[str, Tensor] | None = field(default=None, repr=False)

    def per_example_gradients(self) -> dict[str, Tensor]:
        """After ``objective.backward()`` in per-example mode: name -> [N, K], example n's single-sample estimate.

        Their mean over n is the batch estimate; they are independent draws when loss_fn treats examples
        independently (e.g. BN in eval mode), coupled through batch statistics otherwise.
        """
        if self._per_example is None:
            raise RuntimeError('per-example gradients exist only for estimate(..., num_samples=N) with logits that '
                               'require grad, and not for darts')
        if all(delta.grad is None for delta in self._per_example.values()):
            raise RuntimeError('call objective.backward() first')
        # A variable the objective does not depend on gets no .grad: its estimate is zero.
        return {name: torch.zeros_like(delta) if delta.grad is None else delta.grad * delta.shape[0]
                for name, delta in self._per_example.items()}

    def gradient_variance(self) -> float:
        """Variance across examples of the per-example gradient estimates, summed over every logit.

        This is the variance of a single-sample estimate; the batch estimate's variance is about this / N.
        Also stored as ``diagnostics['grad_variance']``.
        """
        grads = self.per_example_gradients()
        value = float(sum(g.var(dim=0).sum() for g in grads.values()))
        self.diagnostics['grad_variance'] = value
        return value


def _check_shape(value: Tensor, like: Tensor, what: str) -> Tensor:
    if value.shape != like.shape:
        raise ValueError(f'{what} returned shape {tuple(value.shape)}; expected {tuple(like.shape)} '
                         '(a scalar for one architecture per batch, [N] for one per example)')
    return value


def _as_reward(value, like: Tensor, what: str) -> Tensor:
    return _check_shape(torch.as_tensor(value, dtype=like.dtype, device=like.device).detach(), like, what)


def _correlation(a: Tensor, b: Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def _leave_one_out(signal: Tensor) -> Tensor:
    """signal_k - mean_{j != k} signal_j: each sample's baseline is independent of it, so no bias."""
    return signal - (signal.sum() - signal) / (signal.shape[0] - 1)


def _control_variate_part(hard_value: Tensor, surrogate: WeightsFn, x: dict[str, Tensor], log_p: Tensor,
                          eta: float | Tensor, loo: bool, what: str) -> tuple[Tensor, Tensor, Tensor]:
    """Eq. 3/5 with scale eta from the single relaxed pass g(x) (value g(zeta~), gradient grad g(zeta) - grad g(zeta~)).

    Returns the surrogate-objective term (signal.detach() log q_b + eta g(x)), the learning signal
    f(H(b)) - eta g(zeta~) (minus the others' mean with ``loo``; still attached, for eta/tau adaptation) and g(x).
    """
    g_x = _check_shape(surrogate(x), log_p, what)
    signal = hard_value - eta * g_x
    if loo:
        signal = _leave_one_out(signal)
    return signal.detach() * log_p + eta * g_x, signal, g_x


def _check_arguments(name: str, loss_fn, cost_fn, cost_surrogate, num_samples: int | None,
                     control: RebarControl | None) -> None:
    if name not in ESTIMATORS:
        raise ValueError(f'unknown estimator {name!r}; choose one of {list(ESTIMATORS)}')
    if num_samples is not None and num_samples < 1:
        raise ValueError(f'num_samples must be >= 1 or None, got {num_samples}')
    if loss_fn is None and cost_fn is None and cost_surrogate is None:
        raise ValueError('nothing to estimate: give loss_fn and/or cost_fn (+ cost_surrogate)')
    if name in ('reinforce', 'rloo') and cost_surrogate is not None and cost_fn is None:
        raise ValueError(f"{name} scores the measured cost: give cost_fn (cost_surrogate is not used)")
    if name in ('gumbel', 'darts') and cost_fn is not None and cost_surrogate is None:
        raise ValueError(f'{name} differentiates the cost, so it needs cost_surrogate (cost_fn is only reported)')
    if name in ('rebar', 'relax') and (cost_fn is None) != (cost_surrogate is None):
        raise ValueError(f'{name} estimates the cost term with RELAX (Eq. 5): give both cost_fn and cost_surrogate')
    if name == 'rloo' and (num_samples is None or num_samples < 2):
        raise ValueError(f'rloo needs num_samples >= 2 (its baseline is the other samples\' mean), got {num_samples}')
    if control is not None and name not in ('rebar', 'relax'):
        raise ValueError(f"control= applies to 'rebar' and 'relax' only, not {name!r}")
    if control is not None and control.loo_baseline and (num_samples is None or num_samples < 2):
        raise ValueError(f'RebarControl(loo_baseline=True) needs num_samples >= 2, got {num_samples}')


def _darts(logits: Mapping[str, Tensor], loss_fn: WeightsFn | None, num_samples: int | None,
           cost_fn: IndicesFn | None, cost_surrogate: WeightsFn | None, cost_weight: float,
           diagnostics: dict[str, float]) -> Estimate:
    """The DARTS mixture softmax(phi), for comparison (deterministic)."""
    weights = {k: torch.softmax(t, dim=-1) for k, t in logits.items()}
    if num_samples is not None:
        weights = {k: w.expand(num_samples, -1) for k, w in weights.items()}
    indices = {k: t.detach().argmax(-1) for k, t in logits.items()}
    objective, loss, cost = 0, None, None
    if loss_fn is not None:
        mixed = loss_fn(weights)
        objective, loss = mixed.mean(), mixed.detach().mean()
    if cost_surrogate is not None:
        objective = objective + cost_weight * cost_surrogate(weights).mean()
    if cost_fn is not None:
        cost = torch.as_tensor(cost_fn(indices)).detach().float().mean()
    diagnostics['distinct_archs'] = 1.0
    return Estimate(objective, loss, cost, indices, diagnostics)


def _adapted_objective(control: RebarControl, logits: Mapping[str, Tensor], leaves: Mapping[str, Tensor],
                       log_p: Tensor, signal: Tensor, relaxed_value: Tensor) -> Tensor:
    """REBAR's eta/tau adaptation: build g = signal grad log q_b + grad relaxed_value with its graph in (eta, tau),
    step the control on the mean squared norm of the per-example estimates, and return the linear surrogate
    sum(logits * g.detach()) whose backward leaves exactly this g (computed before the step: no bias).

    ``leaves`` are the per-example offsets ([N, K]: row n is example n's estimate) or the logits themselves.
    """
    names = list(leaves)
    scale = log_p.numel()
    score = torch.autograd.grad(log_p.sum(), [leaves[k] for k in names], retain_graph=True)
    pathwise = torch.autograd.grad(relaxed_value.sum(), [leaves[k] for k in names], create_graph=True,
                                   allow_unused=True)
    coefficient = signal.unsqueeze(-1)
    estimates = {k: coefficient * s + (0 if p is None else p) for k, s, p in zip(names, score, pathwise)}
    control.step(sum(e.pow(2).sum() for e in estimates.values()) / scale)
    return sum((logits[k] * estimates[k].detach()).sum() for k in names) / scale


def _route_per_example(logits: Mapping[str, Tensor], num_samples: int | None
                       ) -> tuple[Mapping[str, Tensor], dict[str, Tensor] | None]:
    """Per-example mode: route the logits through a zero offset per example, so that the backward pass also yields
    every example's own single-sample estimate (for the gradient variance) at no extra cost."""
    if num_samples is None or not any(t.requires_grad for t in logits.values()):
        return logits, None
    per_example = {k: torch.zeros(num_samples, t.shape[-1], dtype=t.dtype, device=t.device, requires_grad=True)
                   for k, t in logits.items()}
    return {k: t + per_example[k] for k, t in logits.items()}, per_example


def _control_settings(control: RebarControl | None, temperature: float, logits: Mapping[str, Tensor],
                      diagnostics: dict[str, float]) -> tuple[float | Tensor, bool, bool, float | Tensor]:
    """(eta, leave-one-out, adapts, tau) for this step: the paper's (1, False, False, temperature) without control."""
    if control is None:
        return 1.0, False, False, temperature
    tau = control.temperature if control.adapt_temperature else temperature
    diagnostics.update(eta=float(control.eta.detach()), temperature=float(torch.as_tensor(tau).detach()))
    if control.adapts and not all(t.requires_grad for t in logits.values()):
        raise ValueError('RebarControl adaptation needs logits that require grad')
    return control.eta, control.loo_baseline, control.adapts, tau


def _score_function_term(name: str, reward: Tensor, log_p: Tensor,
                         baseline: float | MovingAverageBaseline | None) -> Tensor:
    """(reward - c) log q_b: c the given baseline (reinforce) or the other samples' mean reward (rloo)."""
    if name == 'rloo':
        return _leave_one_out(reward) * log_p
    term = (reward - (0.0 if baseline is None else float(baseline))) * log_p
    if isinstance(baseline, MovingAverageBaseline):
        baseline.update(reward.mean())
    return term


def _estimate(name: str, logits: Mapping[str, Tensor], loss_fn: WeightsFn | None, *, num_samples: int | None,
              temperature: float, baseline: float | MovingAverageBaseline | None, cost_fn: IndicesFn | None,
              cost_surrogate: WeightsFn | None, cost_weight: float, generator: torch.Generator | None,
              control: RebarControl | None = None) -> Estimate:
    """The one implementation behind ``estimate`` and ``single_sample_gradient``."""
    _check_arguments(name, loss_fn, cost_fn, cost_surrogate, num_samples, control)
    diagnostics = {'entropy': float(entropy(logits).detach())}
    if name == 'darts':
        return _darts(logits, loss_fn, num_samples, cost_fn, cost_surrogate, cost_weight, diagnostics)

    logits, per_example = _route_per_example(logits, num_samples)
    eta, loo, adapts, temperature = _control_settings(control, temperature, logits, diagnostics)

    sample = relaxed_sample(logits, num_samples, temperature, generator)
    log_p = log_prob(logits, sample.indices)
    x = sample.single_pass() if name in ('rebar', 'relax') else None
    term = torch.zeros_like(log_p)
    reward = torch.zeros_like(log_p).detach()
    signal = relaxed_value = torch.zeros_like(log_p)
    loss = cost = None

    if loss_fn is not None:
        if name == 'gumbel':
            relaxed_loss = _check_shape(loss_fn(sample.relaxed), log_p, 'loss_fn')
            term = term + relaxed_loss
            loss = relaxed_loss.detach().mean()
        else:
            with torch.no_grad():
                hard_loss = _as_reward(loss_fn(sample.one_hot), log_p, 'loss_fn')
            loss = hard_loss.mean()
            if name in ('reinforce', 'rloo'):
                reward = reward + hard_loss
            else:
                cv_term, signal, g_x = _control_variate_part(hard_loss, loss_fn, x, log_p, eta, loo, 'loss_fn')
                term, relaxed_value = term + cv_term, eta * g_x
                if num_samples is not None and num_samples > 1:
                    diagnostics['cv_correlation'] = _correlation(hard_loss, g_x.detach())

    if cost_fn is not None or cost_surrogate is not None:
        hard_cost = None
        if cost_fn is not None:
            hard_cost = _as_reward(cost_fn(sample.indices), log_p, 'cost_fn')
            cost = hard_cost.mean()
        if name in ('reinforce', 'rloo'):
            reward = reward + cost_weight * hard_cost
        elif name == 'gumbel':
            term = term + cost_weight * _check_shape(cost_surrogate(sample.relaxed), log_p, 'cost_surrogate')
        else:
            cv_term, cost_signal, g_x = _control_variate_part(hard_cost, cost_surrogate, x, log_p, eta, loo,
                                                              'cost_surrogate')
            term = term + cost_weight * cv_term
            signal, relaxed_value = signal + cost_weight * cost_signal, relaxed_value + cost_weight * eta * g_x
            if num_samples is not None and num_samples > 1:
                diagnostics['cost_cv_correlation'] = _correlation(hard_cost, g_x.detach())

    if name in ('reinforce', 'rloo'):
        term = term + _score_function_term(name, reward, log_p, baseline)

    stacked = torch.stack([i.reshape(-1) for i in sample.indices.values()], dim=-1)
    diagnostics['distinct_archs'] = float(torch.unique(stacked, dim=0).shape[0])
    objective = term.mean()
    if adapts:
        objective = _adapted_objective(control, logits, per_example or logits, log_p, signal, relaxed_value)
    return Estimate(objective, loss, cost, sample.indices, diagnostics, per_example)


def estimate(name: str, dist: ArchDistribution, loss_fn: WeightsFn | None, *, num_samples: int | None = None,
             temperature: float = 0.4, baseline: float | MovingAverageBaseline | None = None,
             cost_fn: IndicesFn | None = None, cost_surrogate: WeightsFn | None = None, cost_weight: float = 1.0,
             generator: torch.Generator | None = None, control: RebarControl | None = None) -> Estimate:
    """One estimator step on ``dist``; ``estimate(...).objective.backward()`` fills ``dist``'s logits' grads.

    loss_fn(weights) -> scalar (weights [K], one architecture per batch) or [N] (weights [N, K] with
    num_samples=N, one architecture per example or, for ``rloo``, N architectures scored on the same batch);
    differentiable in the weights. cost_fn(indices) -> the same shape, non-differentiable (e.g. measured latency
    hinge); cost_surrogate(weights) its differentiable stand-in, added with weight cost_weight on the same discrete
    sample. ``baseline`` is REINFORCE's c (ignored by the others); a ``MovingAverageBaseline`` is updated with this
    step's mean reward. ``control`` (rebar/relax only): eta, tau, leave-one-out baseline and their online adaptation;
    None is the paper's estimator (eta = 1, tau = ``temperature``).
    """
    return _estimate(name, dist.logits_dict(), loss_fn, num_samples=num_samples, temperature=temperature,
                     baseline=baseline, cost_fn=cost_fn, cost_surrogate=cost_surrogate, cost_weight=cost_weight,
                     generator=generator, control=control)


def single_sample_gradient(name: str, logits: Mapping[str, Tensor], loss_fn: WeightsFn, *,
                           surrogate: WeightsFn | None = None, temperature: float = 0.4, baseline: float = 0.0,
                           generator: torch.Generator | None = None, control: RebarControl | None = None
                           ) -> dict[str, Tensor]:
    """One Monte-Carlo estimate of d E_{z ~ softmax(logits)}[loss_fn(z)] / d logits (logits are not modified).

    loss_fn gets one-hot vectors (and, for rebar/gumbel, relaxed ones); with 'relax' it may be non-differentiable
    (even return a plain float tensor) because only ``surrogate`` is evaluated on relaxed vectors.
    """
    if name not in SINGLE_SAMPLE_ESTIMATORS:
        raise ValueError(f'unknown single-sample estimator {name!r}; choose one of {list(SINGLE_SAMPLE_ESTIMATORS)}')
    if (surrogate is not None) != (name == 'relax'):
        raise ValueError("'relax' needs a surrogate, and only 'relax' uses one")
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in logits.items()}
    common = dict(num_samples=None, temperature=temperature, baseline=baseline, cost_weight=1.0, generator=generator,
                  control=control)
    if name == 'relax':
        sizes = {k: v.shape[-1] for k, v in leaves.items()}
        dtype = next(iter(leaves.values())).dtype
        est = _estimate(name, leaves, None, cost_fn=lambda idx: loss_fn(one_hot(idx, sizes, dtype)),
                        cost_surrogate=surrogate, **common)
    else:
        est = _estimate(name, leaves, loss_fn, cost_fn=None, cost_surrogate=None, **common)
    grads = torch.autograd.grad(est.objective, list(leaves.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
