"""ONNX Runtime latency as the search cost: RELAX vs a surrogate-only search on the digits MBConv latency demo.

Both runs are the latency demo search (``hparams/search_latency_demo.yaml``: digits at 16x16, the narrow 21-layer
MBConv space, REBAR for L_gen, λ_lat annealed) with one change each:

* relax           cost ``ort_latency``: every sampled child exported to ONNX and timed in ONNX Runtime on one
                  pinned CPU thread; the linear surrogate is only RELAX's control variate.
* surrogate-only  the cost is the linear surrogate's prediction itself (what a latency-table search optimises);
                  same surrogate file, same target.

ORT fuses layers (conv + BN + activation, ...), so its latency is not a sum of per-layer costs. Printed: the
surrogate's held-out error, the target, and per run the final architecture's measured ORT latency and accuracy, and
the mean measured ORT latency of architectures sampled from the final distribution (vs the random ones').

    python bench/ort_latency_search.py --output output/ort_demo           # ~15 min on 2 shared cores
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import timm
import torch

import unas_zoo  # noqa: F401  (registers mbconv_net)
from unas_zoo.genotypes import load
from unas_zoo.latency import LatencyCache, LatencyMeter, LinearSurrogate, TimingSpec
from unas_zoo.search.config import load_config, mbconv_backbone
from unas_zoo.search.costs import build_cost
from unas_zoo.search.distributions import MBConvDistribution
from unas_zoo.search.loop import run_search

DEMO = Path(__file__).resolve().parents[1] / 'hparams' / 'search_latency_demo.yaml'
_SURROGATE_ENV = 'UNAS_BENCH_SURROGATE'


@functools.cache
def _surrogate(path: str) -> LinearSurrogate:
    return LinearSurrogate.load(path)


def surrogate_ms(indices: dict[str, int]) -> float:
    """The surrogate-only run's cost: the linear surrogate's prediction (loaded from the file the bench wrote)."""
    return float(_surrogate(os.environ[_SURROGATE_ENV]).predict({k: torch.tensor(v) for k, v in indices.items()}))


def _sampled_latencies(run_dir: Path, dist: MBConvDistribution, meter: LatencyMeter, num: int) -> list[float]:
    """Measured ORT latency of ``num`` architectures drawn from the run's final architecture probabilities."""
    final = json.loads((run_dir / 'probabilities.json').read_text())['history'][-1]['probabilities']
    with torch.no_grad():
        for name, probs in final.items():
            dist.logits_dict()[name].copy_(torch.tensor(probs).log())
    generator = torch.Generator().manual_seed(0)
    return [meter(dist.to_genotype(dist.sample(generator=generator))) for _ in range(num)]


def _ort_section(args: argparse.Namespace, out: Path, **extra) -> dict:
    return {'name': 'ort_latency', 'batch_size': 32, 'num_threads': 1, 'warmup': 2, 'repeats': 10,
            'statistic': 'min', 'num_classes': 10, 'weight': args.weight, 'anneal': 0.5,
            'cache': str(out / 'ort_cache.json'),
            'surrogate': {'samples': args.samples, 'holdout': 0.2, 'path': str(out / 'ort_surrogate.safetensors')},
            **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--output', default='output/ort_latency_search')
    parser.add_argument('--samples', type=int, default=200, help='random architectures the surrogate is fitted on')
    parser.add_argument('--target-quantile', type=float, default=0.25)
    parser.add_argument('--epochs', type=int, default=None, help='default: the demo config\'s')
    parser.add_argument('--weight', type=float, default=0.5, help='final λ_lat per ms above the target (demo: 0.5)')
    parser.add_argument('--eval-samples', type=int, default=12, help='architectures drawn from each final φ')
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    demo = load_config(DEMO)
    dist = MBConvDistribution(mbconv_backbone(demo.backbone))
    size = (3, demo.image_size, demo.image_size)

    started = time.time()
    term = build_cost(_ort_section(args, out, target_quantile=args.target_quantile), dist=dist, input_size=size,
                      num_classes=10)
    term.flush()
    held = term.info['surrogate']['holdout']
    print(f'surrogate: {args.samples} random architectures in {time.time() - started:.0f}s; held-out MAE '
          f'{held["mae"]:.4g} ms, relative error {held["relative_error"]:.1%}, R² {held["r2"]:.3f}; '
          f'target {term.target:.4g} ms')

    os.environ[_SURROGATE_ENV] = str(out / 'ort_surrogate.safetensors')
    costs = {
        'relax': _ort_section(args, out, target=term.target),
        'surrogate-only': {'name': 'ort_latency_search:surrogate_ms', 'call_with': 'indices', 'target': term.target,
                           'weight': args.weight, 'anneal': 0.5, 'surrogate': {'samples': 300, 'holdout': 0.2}},
    }
    meter = LatencyMeter(lambda g: timm.create_model('mbconv_net', genotype=g, num_classes=10),
                         TimingSpec(batch_size=32, input_size=size, num_threads=1, warmup=2, repeats=10,
                                    statistic='min', runtime='onnxruntime'),
                         LatencyCache(out / 'ort_cache.json'), model_tag='mbconv_net/classes=10')
    random_ms = term.surrogate_model.initial_costs()
    report = {'target_ms': term.target, 'weight': args.weight, 'epochs': args.epochs or demo.epochs,
              'surrogate_holdout': held, 'samples': args.samples,
              'random_mean_ms': float(random_ms.mean()), 'runs': {}}
    for name, cost in costs.items():
        overrides = {'cost': cost, 'output': str(out / name), 'device': 'cpu'}
        if args.epochs:
            overrides['epochs'] = args.epochs
        started = time.time()
        genotype = load(run_search(load_config(DEMO, overrides), progress=False))
        latency = meter(genotype)
        sampled = _sampled_latencies(out / name, dist, meter, args.eval_samples)
        report['runs'][name] = {'ort_latency_ms': latency, 'val_acc': genotype.metrics.get('val_acc'),
                                'meets_target': latency <= term.target, 'seconds': round(time.time() - started),
                                'sampled_mean_ms': sum(sampled) / len(sampled),
                                'sampled_meet_target': sum(v <= term.target for v in sampled) / len(sampled),
                                'layers': list(genotype.layers)}
        print(f'{name}: ORT latency {latency:.4g} ms (target {term.target:.4g}: '
              f'{"met" if latency <= term.target else "missed"}), search val acc {genotype.metrics.get("val_acc")}; '
              f'{len(sampled)} samples of the final φ: mean {sum(sampled) / len(sampled):.4g} ms (random '
              f'architectures: {random_ms.mean():.4g} ms)')
    meter.flush()
    (out / 'report.json').write_text(json.dumps(report, indent=1))
    print(json.dumps(report['runs'], indent=1))


if __name__ == '__main__':
    main()
