"""Cost and gradient variance of every φ estimator of the search, measured side by side on one supernet and batch.

For each estimator variant it prints (issue 8):
  φ step        median seconds of one ``loop.phi_step`` (estimate + backward + Adam step)
  iteration     w step (a sampled child, or the dense mixture for darts) + φ step, relative to a DARTS first-order
                iteration (dense w step + dense α step): the issue's target for the cheapest unbiased estimator is
                <= 0.35
  variance      trace of the covariance of the φ gradient that one φ step applies, over repeated draws on the same
                batch and state (what the optimizer sees: batch means for per-example and K-sample estimators)
  var x cost    variance x φ-step seconds relative to REBAR: the figure of merit (lower is better)
and, as before, the forward-pass ratios of the supernet (discrete sample vs dense mixture vs derived child).

Everything runs through the library (``loop.w_step`` / ``loop.phi_step`` / ``estimators.RebarControl``), with the
variants interleaved so that a change in machine load hits them alike.

    python bench/search_step.py --threads 1           # CIFAR search supernet (C=16, 8 cells, 7 ops), batch 16, 32x32
    python bench/search_step.py --device cuda --batch 64 --repeats 10
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torchvision.transforms as T

from unas_zoo.data import create_dataset, dataset_info
from unas_zoo.search.distributions import DartsCellDistribution
from unas_zoo.search.estimators import MovingAverageBaseline, RebarControl
from unas_zoo.search.loop import phi_step, w_step
from unas_zoo.search.objectives import Objective
from unas_zoo.search.supernets import DartsSupernet


@dataclass
class Variant:
    """One row: an estimator with its sampling mode and options, as the search config would set them."""
    label: str
    estimator: str
    per_example: bool = False
    arch_samples: int | None = None      # per batch: K architectures scored on the same batch
    control: dict | None = None          # RebarControl options
    baseline: bool = False               # REINFORCE's moving-average baseline
    unbiased: bool = True
    objective: Objective = field(default_factory=Objective)


VARIANTS = [
    Variant('reinforce, moving-average baseline (per batch)', 'reinforce', baseline=True),
    Variant('rloo, K=4 on the same batch (per batch)', 'rloo', arch_samples=4),
    Variant('rloo, K=8 on the same batch (per batch)', 'rloo', arch_samples=8),
    Variant('rloo, one architecture per example', 'rloo', per_example=True),
    Variant('rebar, the paper (per batch)', 'rebar'),
    Variant('rebar, one architecture per example (paper CIFAR setting)', 'rebar', per_example=True),
    Variant('rebar + leave-one-out baseline (per example)', 'rebar', per_example=True,
            control=dict(loo_baseline=True)),
    Variant('rebar, eta and tau adapted online (per batch)', 'rebar',
            control=dict(adapt_eta=True, adapt_temperature=True)),
    Variant('gumbel-softmax, SNAS (per batch; biased)', 'gumbel', unbiased=False),
    Variant('darts first order (alpha on L_val; biased, deterministic)', 'darts', unbiased=False,
            objective=Objective(kind='val', arch_lambda=0.0)),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--batch', type=int, default=16, help='train and validation batch size (each)')
    p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--init-channels', type=int, default=16)
    p.add_argument('--layers', type=int, default=8)
    p.add_argument('--warmup', type=int, default=1, help='untimed runs of each variant')
    p.add_argument('--repeats', type=int, default=3, help='timed runs of each variant (median reported)')
    p.add_argument('--samples', type=int, default=3, help='architectures for the forward-pass ratios')
    p.add_argument('--pretrain-steps', type=int, default=10, help='w steps before measuring (gives the loss shape)')
    p.add_argument('--variance-estimates', type=int, default=16, help='φ-gradient draws per variant')
    p.add_argument('--amp', action='store_true', help='CUDA: run the steps under bf16 autocast')
    p.add_argument('--only', nargs='+', default=None, help='labels (substrings) of the variants to run')
    p.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_medians(fns: dict[str, Callable[[], object]], warmup: int, repeats: int,
                        device: torch.device) -> dict[str, float]:
    """Median seconds of each fn; the fns take turns so that load drift affects them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def load_batches(batch: int, image_size: int, device: torch.device, generator: torch.Generator):
    """A fixed train and validation batch of real digits (bundled with scikit-learn, no download)."""
    info = dataset_info('digits')
    transform = T.Compose([T.ToTensor(), T.Normalize(info['mean'], info['std'])])
    data = create_dataset('digits', split='train', image_size=image_size, transform=transform)
    order = torch.randperm(len(data), generator=generator)[:2 * batch].tolist()
    images = torch.stack([data[i][0] for i in order])
    targets = torch.tensor([data[i][1] for i in order])
    images, targets = images.to(device), targets.to(device)
    return (images[:batch], targets[:batch]), (images[batch:], targets[batch:])


class Bench:
    """One supernet, one distribution and one pair of batches; every measurement starts from the same state."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device = args, device
        self.generator = torch.Generator(device=device).manual_seed(args.seed)
        self.train_batch, self.val_batch = load_batches(args.batch, args.image_size, device,
                                                        torch.Generator().manual_seed(args.seed))
        self.supernet = DartsSupernet(10, init_channels=args.init_channels, layers=args.layers).to(device)
        self.dist = DartsCellDistribution(self.supernet.ops).to(device)
        self.w_opt = torch.optim.Adam(self.supernet.parameters(), lr=6e-4, weight_decay=3e-4)
        self.phi_opt = torch.optim.Adam(self.dist.parameters(), lr=2e-3, weight_decay=1e-6)
        self.frozen_opt = torch.optim.SGD(self.dist.parameters(), lr=0.0)  # φ steps that leave φ as it is
        self.supernet.train()
        for _ in range(args.pretrain_steps):  # move away from the random init: the loss depends on the cell
            w_step(self.supernet, self.dist, *self.train_batch, self.w_opt, per_example=False,
                   generator=self.generator)
        self.state = [{k: v.clone() for k, v in m.state_dict().items()} for m in (self.supernet, self.dist)]
        self.controls = {v.label: RebarControl(**v.control) for v in VARIANTS if v.control}
        self.control_states = {k: {n: t.clone() if isinstance(t, torch.Tensor) else t
                                   for n, t in c.state_dict().items()} for k, c in self.controls.items()}

    def restore(self) -> None:
        self.supernet.load_state_dict(self.state[0])
        self.dist.load_state_dict(self.state[1])

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.amp)

    def phi(self, v: Variant, optimizer: torch.optim.Optimizer, baseline=None) -> dict:
        with self.autocast():
            return phi_step(self.supernet, self.dist, self.train_batch, self.val_batch, optimizer,
                            estimator=v.estimator, objective=v.objective, per_example=v.per_example,
                            arch_samples=v.arch_samples, control=self.controls.get(v.label),
                            generator=self.generator, baseline=baseline)

    def w(self, v: Variant) -> None:
        with self.autocast():
            w_step(self.supernet, self.dist, *self.train_batch, self.w_opt, per_example=v.per_example,
                   generator=self.generator, mode='darts' if v.estimator == 'darts' else 'sample')

    def timings(self, variants: list[Variant]) -> dict[str, tuple[float, float]]:
        """(φ step, whole iteration) median seconds per variant, plus the DARTS first-order iteration."""
        fns = {}
        for v in variants:
            fns['phi ' + v.label] = lambda v=v: (self.restore(), self.phi(v, self.phi_opt, self._baseline(v)))
            fns['iter ' + v.label] = lambda v=v: (self.restore(), self.w(v),
                                                  self.phi(v, self.phi_opt, self._baseline(v)))
        medians = interleaved_medians(fns, self.args.warmup, self.args.repeats, self.device)
        self.restore()
        return {v.label: (medians['phi ' + v.label], medians['iter ' + v.label]) for v in variants}

    def _baseline(self, v: Variant):
        if not v.baseline:
            return None
        baseline = MovingAverageBaseline()
        baseline.value = self.mean_loss
        return baseline

    def variance(self, v: Variant) -> float:
        """Trace of the covariance of the φ gradient one step applies, over draws on the same batch and state."""
        grads = []
        if v.label in self.controls:  # every variant's draws start from the same adaptive state
            self.controls[v.label].load_state_dict(self.control_states[v.label])
        for _ in range(self.args.variance_estimates):
            self.restore()
            self.phi(v, self.frozen_opt, self._baseline(v))
            grads.append(torch.cat([p.grad.flatten() for p in self.dist.logits_dict().values()]))
        self.restore()
        return float(torch.stack(grads).double().var(dim=0).sum())

    def estimate_mean_loss(self) -> float:
        """REINFORCE's moving average after many steps: the mean L_gen of sampled children on these batches."""
        v = Variant('', 'rloo', arch_samples=self.args.variance_estimates)
        stats = self.phi(v, self.frozen_opt)
        self.restore()
        return float(stats['phi_loss'])

    @torch.no_grad()
    def forward_ratios(self) -> dict[str, float]:
        """Forward passes (train-mode BN, as in the search; no autograd graph)."""
        x, dist, g, n = self.train_batch[0], self.dist, self.generator, self.args.samples
        samples = [dist.sample(generator=g) for _ in range(n)]
        children = [self.supernet.child(dist.to_genotype(s)) for s in samples]
        per_example = dist.one_hot(dist.sample(x.shape[0], generator=g))
        dense = dist.probs()
        fns = {'dense': lambda: self.supernet(x, dense), 'per_example': lambda: self.supernet(x, per_example)}
        for i, (s, child) in enumerate(zip(samples, children)):
            fns[f'discrete{i}'] = lambda w=dist.one_hot(s): self.supernet(x, w)
            fns[f'child{i}'] = lambda c=child: c(x)
        t = interleaved_medians(fns, self.args.warmup, self.args.repeats, self.device)
        self.restore()
        discrete = statistics.mean(t[f'discrete{i}'] for i in range(n))
        child = statistics.mean(t[f'child{i}'] for i in range(n))
        return {'discrete/dense': discrete / t['dense'], 'discrete/child': discrete / child,
                'per_example/dense': t['per_example'] / t['dense']}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    bench = Bench(args, device)
    variants = [v for v in VARIANTS if args.only is None or v.estimator == 'darts'
                or any(s in v.label for s in args.only)]
    print(f'DARTS CIFAR-search supernet: C={args.init_channels}, {args.layers} cells, {len(bench.supernet.ops)} ops, '
          f'batch {args.batch} (+{args.batch} val) at {args.image_size}x{args.image_size}, device {device}'
          f'{" (bf16 autocast)" if args.amp else ""}, {torch.get_num_threads()} threads; objective L_gen '
          f'(darts: L_val); medians of {args.repeats} runs after {args.warmup} warm-up; variance over '
          f'{args.variance_estimates} draws', flush=True)
    started = time.perf_counter()
    bench.mean_loss = bench.estimate_mean_loss()
    times = bench.timings(variants)
    darts_iteration = times[next(v.label for v in variants if v.estimator == 'darts')][1]
    variances = {}
    for v in variants:
        variances[v.label] = bench.variance(v)
        print(f'  measured {v.label}', flush=True)
    reference = next((v.label for v in variants if v.label.startswith('rebar, the paper')), None)
    merit_ref = variances[reference] * times[reference][0] if reference else float('nan')

    print(f'\n{"estimator":<62}{"φ step":>10}{"iter/DARTS":>12}{"variance":>11}{"var x cost":>12}')
    print(f'{"":<62}{"ms":>10}{"(<= 0.35)":>12}{"":>11}{"vs REBAR":>12}')
    for v in variants:
        phi_s, iter_s = times[v.label]
        merit = variances[v.label] * phi_s / merit_ref
        print(f'{v.label:<62}{1e3 * phi_s:10.1f}{iter_s / darts_iteration:12.3f}{variances[v.label]:11.4g}'
              f'{merit:12.4g}')
    print(f'DARTS first-order iteration: {1e3 * darts_iteration:.1f} ms; mean sampled L_gen {bench.mean_loss:.3f}')
    cheapest = min((v for v in variants if v.unbiased and variances[v.label] <= variances.get(reference, 0)),
                   key=lambda v: times[v.label][1], default=None)
    if cheapest is not None:
        ratio = times[cheapest.label][1] / darts_iteration
        print(f'cheapest unbiased estimator with variance <= REBAR\'s: {cheapest.label}: iteration {ratio:.3f} x '
              f'DARTS first order (target <= 0.35: {"met" if ratio <= 0.35 else "MISSED"})')
    else:
        print('no unbiased estimator reached REBAR\'s variance')
    ratios = bench.forward_ratios()
    print('\nForward passes (median)')
    print(f'  discrete-sample forward / dense mixed forward      {ratios["discrete/dense"]:7.3f}  (target <= 0.25)')
    print(f'  discrete-sample forward / derived child forward    {ratios["discrete/child"]:7.3f}  (target <= 1.2)')
    print(f'  per-example discrete forward / dense mixed forward {ratios["per_example/dense"]:7.3f}')
    print(f'\ntotal {time.perf_counter() - started:.0f} s')


if __name__ == '__main__':
    main()
