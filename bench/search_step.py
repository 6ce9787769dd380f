"""Cost and gradient variance of a UNAS search step, measured side by side on one supernet and one batch.

Prints (issue 3, "Done when"):
  (a) UNAS-REBAR iteration (w step + phi step) / DARTS first-order iteration      target <= 1.1
  (b) discrete-sample forward / dense mixed forward                              target <= 0.25
  (c) discrete-sample forward / derived child forward                            target <= 1.2
  (d) REBAR / REINFORCE variance of the phi gradient (many estimates, one batch)  (lower is better)

Everything runs through the library: ``loop.w_step`` / ``loop.phi_step`` for the iterations, ``estimators.estimate``
for the variance, ``DartsSupernet`` / ``DartsCellDistribution`` for the model. Timings are medians over repeats after
warm-up, with the variants interleaved so that a change in machine load hits them alike.

    python bench/search_step.py                  # CIFAR search supernet (C=16, 8 cells, 7 ops), batch 16, 32x32
    python bench/search_step.py --per-example    # one architecture per example, as in the paper's CIFAR search
    python bench/search_step.py --device cuda --batch 64 --repeats 10
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms as T

from unas_zoo.data import create_dataset, dataset_info
from unas_zoo.search.distributions import DartsCellDistribution
from unas_zoo.search.estimators import estimate
from unas_zoo.search.loop import phi_step, w_step
from unas_zoo.search.objectives import Objective
from unas_zoo.search.supernets import DartsSupernet


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='cpu', help='cpu or cuda')
    p.add_argument('--batch', type=int, default=16, help='train and validation batch size (each)')
    p.add_argument('--image-size', type=int, default=32)
    p.add_argument('--init-channels', type=int, default=16)
    p.add_argument('--layers', type=int, default=8)
    p.add_argument('--per-example', action='store_true', help='one architecture per example (the CIFAR setting)')
    p.add_argument('--warmup', type=int, default=1, help='untimed runs of each variant')
    p.add_argument('--repeats', type=int, default=3, help='timed runs of each variant (median reported)')
    p.add_argument('--samples', type=int, default=3, help='architectures for the forward-pass ratios')
    p.add_argument('--pretrain-steps', type=int, default=10, help='w steps before measuring (gives the loss shape)')
    p.add_argument('--variance-estimates', type=int, default=16, help='gradient estimates per estimator for (d)')
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


def gradient_variance(dist, loss_fn, name: str, estimates: int, generator: torch.Generator,
                      baseline=None) -> float:
    """Trace of the covariance of ``estimates`` single-step estimates of the phi gradient."""
    grads = []
    for _ in range(estimates):
        dist.zero_grad(set_to_none=True)
        estimate(name, dist, loss_fn, baseline=baseline, generator=generator).objective.backward()
        grads.append(torch.cat([p.grad.flatten() for p in dist.logits_dict().values()]))
    return float(torch.stack(grads).var(dim=0).sum())


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    cpu_generator = torch.Generator().manual_seed(args.seed)
    train_batch, val_batch = load_batches(args.batch, args.image_size, device, cpu_generator)

    supernet = DartsSupernet(10, init_channels=args.init_channels, layers=args.layers).to(device)
    dist = DartsCellDistribution(supernet.ops).to(device)
    w_opt = torch.optim.Adam(supernet.parameters(), lr=6e-4, weight_decay=3e-4)
    phi_opt = torch.optim.Adam(dist.parameters(), lr=2e-3, weight_decay=1e-6)
    print(f'DARTS CIFAR-search supernet: C={args.init_channels}, {args.layers} cells, {len(supernet.ops)} ops, '
          f'batch {args.batch} (+{args.batch} val) at {args.image_size}x{args.image_size}, device {device}, '
          f'{torch.get_num_threads()} threads, '
          f'{"one architecture per example" if args.per_example else "one architecture per batch"}; '
          f'medians of {args.repeats} runs after {args.warmup} warm-up')

    supernet.train()
    for _ in range(args.pretrain_steps):  # move away from the random init so the loss depends on the architecture
        w_step(supernet, dist, *train_batch, w_opt, per_example=args.per_example, generator=generator)

    # Both optimizers step in the timed runs: snapshot and restore, so that every variant sees the same state.
    state = [{k: v.clone() for k, v in module.state_dict().items()} for module in (supernet, dist)]

    def restore():
        supernet.load_state_dict(state[0])
        dist.load_state_dict(state[1])

    def unas_iteration():
        w_step(supernet, dist, *train_batch, w_opt, per_example=args.per_example, generator=generator)
        phi_step(supernet, dist, train_batch, val_batch, phi_opt, estimator='rebar', objective=Objective(),
                 per_example=args.per_example, generator=generator)

    def unas_iteration_val():
        w_step(supernet, dist, *train_batch, w_opt, per_example=args.per_example, generator=generator)
        phi_step(supernet, dist, train_batch, val_batch, phi_opt, estimator='rebar',
                 objective=Objective(kind='val', arch_lambda=0.0), per_example=args.per_example, generator=generator)

    def darts_iteration():  # first-order DARTS: w on L_train, alpha on L_val, both through the dense mixture
        w_step(supernet, dist, *train_batch, w_opt, per_example=False, generator=generator, mode='darts')
        phi_step(supernet, dist, train_batch, val_batch, phi_opt, estimator='darts',
                 objective=Objective(kind='val', arch_lambda=0.0), per_example=False, generator=generator)

    iterations = interleaved_medians(
        {'unas': lambda: (restore(), unas_iteration()), 'unas_val': lambda: (restore(), unas_iteration_val()),
         'darts': lambda: (restore(), darts_iteration())}, args.warmup, args.repeats, device)
    restore()

    # Forward passes (train-mode BN, as in the search; no autograd graph).
    x = train_batch[0]
    samples = [dist.sample(generator=generator) for _ in range(args.samples)]
    children = [supernet.child(dist.to_genotype(s)) for s in samples]
    per_example_weights = dist.one_hot(dist.sample(x.shape[0], generator=generator))
    dense = dist.probs()
    fns = {'dense': lambda: supernet(x, dense), 'per_example': lambda: supernet(x, per_example_weights)}
    for i, (s, child) in enumerate(zip(samples, children)):
        weights = dist.one_hot(s)
        fns[f'discrete{i}'] = lambda w=weights: supernet(x, w)
        fns[f'child{i}'] = lambda c=child: c(x)
    with torch.no_grad():
        forwards = interleaved_medians(fns, args.warmup, args.repeats, device)
    restore()
    discrete = statistics.mean(forwards[f'discrete{i}'] for i in range(args.samples))
    child = statistics.mean(forwards[f'child{i}'] for i in range(args.samples))

    # Gradient variance of phi on a fixed batch: many estimates, each with its own architecture sample.
    for p in supernet.parameters():
        p.requires_grad_(False)
    images, targets = val_batch

    def loss_fn(weights):
        return F.cross_entropy(supernet(images, weights), targets)

    with torch.no_grad():  # REINFORCE's best constant baseline, estimated from separate samples
        mean_loss = statistics.mean(float(loss_fn(dist.one_hot(dist.sample(generator=generator))))
                                    for _ in range(args.variance_estimates))
    start = time.perf_counter()
    var_rebar = gradient_variance(dist, loss_fn, 'rebar', args.variance_estimates, generator)
    var_reinforce = gradient_variance(dist, loss_fn, 'reinforce', args.variance_estimates, generator)
    var_reinforce_b = gradient_variance(dist, loss_fn, 'reinforce', args.variance_estimates, generator,
                                        baseline=mean_loss)
    variance_seconds = time.perf_counter() - start

    def row(label: str, value: str) -> None:
        print(f'  {label:<72}{value}')

    def ms(seconds: float) -> str:
        return f'{1e3 * seconds:10.1f} ms'

    def check(value: float, target: float) -> str:
        return f'{value:7.3f}  (target <= {target}: {"met" if value <= target else "MISSED"})'

    print('\nTimes (median)')
    row('UNAS-REBAR iteration (w step on a sampled child + phi step, L_gen)', ms(iterations['unas']))
    row('UNAS-REBAR iteration with the DARTS objective (L_val)', ms(iterations['unas_val']))
    row('DARTS first-order iteration (dense w step + dense alpha step, L_val)', ms(iterations['darts']))
    row('dense mixed forward', ms(forwards['dense']))
    row(f'discrete-sample forward (mean over {args.samples} architectures)', ms(discrete))
    row('derived child forward (the same architectures)', ms(child))
    row(f'per-example discrete forward ({x.shape[0]} architectures)', ms(forwards['per_example']))
    print('\nRatios')
    row('(a) UNAS-REBAR iteration / DARTS first-order iteration', check(iterations['unas'] / iterations['darts'], 1.1))
    row('    the same with the same objective (L_val)', check(iterations['unas_val'] / iterations['darts'], 1.1))
    row('(b) discrete-sample forward / dense mixed forward', check(discrete / forwards['dense'], 0.25))
    row('(c) discrete-sample forward / derived child forward', check(discrete / child, 1.2))
    row('    per-example discrete forward / dense mixed forward', f'{forwards["per_example"] / forwards["dense"]:7.3f}')
    print(f'\nGradient variance of phi: trace of the covariance of {args.variance_estimates} estimates per estimator '
          f'on a fixed batch of {images.shape[0]} (mean loss {mean_loss:.3f}; {variance_seconds:.0f} s)')
    row('REBAR', f'{var_rebar:10.4g}')
    row('REINFORCE, no baseline', f'{var_reinforce:10.4g}')
    row('REINFORCE, constant baseline = mean loss', f'{var_reinforce_b:10.4g}')
    row('(d) REBAR / REINFORCE (no baseline)', f'{var_rebar / var_reinforce:10.4g}')
    row('    REBAR / REINFORCE (mean-loss baseline)', f'{var_rebar / var_reinforce_b:10.4g}')

if __name__ == '__main__':
    main()
