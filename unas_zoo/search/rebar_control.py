"""REBAR's control-variate settings, optionally adapted online (Tucker et al. 2017, §3.3).

The paper's REBAR uses eta = 1 and a fixed temperature. REBAR is unbiased for any eta and tau, so both may be tuned
to reduce variance: E[g^2] = Var[g] + E[g]^2 and E[g] does not depend on (eta, tau), so a stochastic gradient step on
the squared norm of each estimate g minimises its variance. ``estimate('rebar'|'relax', ..., control=RebarControl())``
uses this object; the estimator computes g, then calls ``step`` with ||g||^2, after g is fixed (no bias).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['RebarControl']


class RebarControl(nn.Module):
    """eta (the control variate's scale in Eq. 3), tau, a leave-one-out baseline flag, and their Adam optimizer.

    ``loo_baseline``: subtract from each sample's learning signal the mean of the other samples' signals (needs
    num_samples >= 2). ``adapt_eta`` / ``adapt_temperature``: learn eta / log tau by minimising ||g||^2 with Adam(lr).
    ``state_dict()`` includes the optimizer state (tensors and plain values: ``torch.load(weights_only=True)`` reads
    it), so a resumed search continues the adaptation exactly.
    """

    def __init__(self, eta: float = 1.0, loo_baseline: bool = False, adapt_eta: bool = False,
                 adapt_temperature: bool = False, temperature: float = 0.4, lr: float = 1e-2):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f'RebarControl: temperature must be > 0, got {temperature}')
        if lr <= 0:
            raise ValueError(f'RebarControl: lr must be > 0, got {lr}')
        self.loo_baseline, self.adapt_eta, self.adapt_temperature = bool(loo_baseline), bool(adapt_eta), \
            bool(adapt_temperature)
        self.eta_param = nn.Parameter(torch.tensor(float(eta)), requires_grad=self.adapt_eta)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)),
                                            requires_grad=self.adapt_temperature)
        adapted = [p for p in (self.eta_param, self.log_temperature) if p.requires_grad]
        self.optimizer = torch.optim.Adam(adapted, lr=lr) if adapted else None

    @property
    def adapts(self) -> bool:
        return self.optimizer is not None

    @property
    def eta(self) -> Tensor:
        """A scalar tensor; it carries gradient only when adapt_eta is on."""
        return self.eta_param

    @property
    def temperature(self) -> Tensor:
        """The control's tau (the one the estimator uses when adapt_temperature is on)."""
        return self.log_temperature.exp()

    def step(self, squared_norm: Tensor) -> None:
        """One Adam step on eta / log tau down the gradient of ``squared_norm`` (built with create_graph=True)."""
        params = [p for p in (self.eta_param, self.log_temperature) if p.requires_grad]
        grads = torch.autograd.grad(squared_norm, params, allow_unused=True)
        for p, g in zip(params, grads):
            p.grad = torch.zeros_like(p) if g is None else g.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        state = super().state_dict(*args, **kwargs)
        if self.optimizer is not None and not args and 'prefix' not in kwargs:
            state['optimizer'] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        state = dict(state_dict)
        optimizer_state = state.pop('optimizer', None)
        result = super().load_state_dict(state, strict=strict, assign=assign)
        if self.optimizer is not None and optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)
        elif strict and (self.optimizer is None) != (optimizer_state is None):
            raise ValueError('RebarControl.load_state_dict: the optimizer state does not match adapt_eta / '
                             'adapt_temperature of this control')
        return result

    def extra_repr(self) -> str:
        return (f'eta={float(self.eta.detach()):.4g}, temperature={float(self.temperature.detach()):.4g}, '
                f'loo_baseline={self.loo_baseline}, adapt_eta={self.adapt_eta}, '
                f'adapt_temperature={self.adapt_temperature}')
