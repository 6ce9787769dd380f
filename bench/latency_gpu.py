#!/usr/bin/env python3
"""GPU figures for the latency-aware search (issue 4), in one run of a few minutes.

1. Latency of unas_mbconv_gpu, proxylessnas_gpu and timm's mobilenetv2_100 at batch 32 (224x224) in fp32, fp32 +
   channels_last and bf16 (autocast) + channels_last; the whole measurement repeated 5 times to show its spread
   (coefficient of variation of the 5 medians).
2. 50 steps of the latency search on the full ProxylessNAS-GPU supernet (random images, measured latency with
   RELAX, REBAR for the loss): the surrogate's held-out error, time per step and in latency measurement, and how
   the expected latency moved.

    python bench/latency_gpu.py                         # CUDA, < 5 minutes on an H100
    python bench/latency_gpu.py --device cpu --quick    # the same code path, small, on a CPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import unas_zoo  # noqa: E402,F401  (registers the zoo with timm)
from unas_zoo.latency import REFERENCE_MODELS, TimingSpec, device_name, time_model  # noqa: E402
from unas_zoo.search.config import config_from_dict  # noqa: E402
from unas_zoo.search.loop import build_search, phi_step, w_step  # noqa: E402

QUICK_BACKBONE = {'stem_width': 8, 'first_block_width': 8, 'stage_widths': [8, 16, 24, 32, 48, 64],
                  'head_width': 128}


def reference_latency(device: str, batch: int, size: int, reps: int, warmup: int, repeats: int) -> list[dict]:
    """Each reference model x precision setting, the whole measurement repeated ``reps`` times."""
    import timm

    variants = (('fp32', 'float32', False), ('fp32+cl', 'float32', True), ('bf16+cl', 'bfloat16', True))
    rows = []
    for name in REFERENCE_MODELS:
        model = timm.create_model(name)
        for label, dtype, channels_last in variants:
            spec = TimingSpec(device=device, batch_size=batch, input_size=(3, size, size), dtype=dtype,
                              channels_last=channels_last, warmup=warmup, repeats=repeats)
            timings = [time_model(model, spec) for _ in range(reps)]
            medians = [t.median_ms for t in timings]
            mean = statistics.fmean(medians)
            rows.append({'model': name, 'variant': label, 'median_ms': statistics.median(medians), 'mean_ms': mean,
                         'cv_percent': 100 * statistics.pstdev(medians) / mean,
                         'iqr_ms': statistics.fmean(t.iqr_ms for t in timings), 'runs': medians})
    return rows


def latency_search(device: str, quick: bool, steps: int, work: Path) -> dict:
    """``steps`` iterations (w step + φ step) of the latency search on random data, timed."""
    size, batch, classes = (32, 8, 10) if quick else (224, 32, 1000)
    cost = {
        'name': 'latency', 'target_quantile': 0.25, 'weight': 0.5, 'anneal_steps': max(1, steps // 2),
        'device': device, 'batch_size': batch, 'warmup': 2 if quick else 5, 'repeats': 5 if quick else 15,
        'cache': str(work / 'latency_cache.json'),
        'surrogate': {'samples': 24 if quick else 300, 'holdout': 0.2},
    }
    cfg = config_from_dict({
        'space': 'mbconv', 'backbone': QUICK_BACKBONE if quick else {}, 'image_size': size, 'batch_size': batch,
        'device': device, 'zero_dropout': 0.1, 'estimator': 'rebar', 'arch_lambda': 0.0, 'phi_lr': 1e-2,
        'cost': cost}, 'bench')
    start = time.perf_counter()
    parts = build_search(cfg, classes, device, total_phi_steps=steps, output_dir=work, log=None)
    setup_s = time.perf_counter() - start
    term = parts.objective.cost
    measuring = [0.0]
    cost_fn = term.cost_fn

    def timed_cost_fn(indices):
        t0 = time.perf_counter()
        out = cost_fn(indices)
        measuring[0] += time.perf_counter() - t0
        return out
    term.cost_fn = timed_cost_fn

    def expected_latency() -> float:  # E_p[g(z)] is exact for a linear g: g at the probabilities
        with torch.no_grad():
            return float(term.surrogate({k: v.float() for k, v in parts.dist.probs().items()}))

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(classes, (batch,), device=device)
    initial_argmax = term.measure(parts.dist.to_genotype())
    initial_expected = expected_latency()
    step_times, hinge = [], []
    for step in range(steps):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        w_step(parts.supernet, parts.dist, x, y, parts.w_optimizer, per_example=False, generator=gen)
        stats = phi_step(parts.supernet, parts.dist, (x, y), (x, y), parts.phi_optimizer, estimator='rebar',
                         objective=parts.objective, generator=gen, step=step)
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        step_times.append(time.perf_counter() - t0)
        hinge.append(stats['cost'])
    final = parts.dist.to_genotype()
    head = max(1, steps // 5)
    return {
        'setup_s': setup_s, 'surrogate': term.info['surrogate'], 'target_ms': term.target,
        'step_s_median': statistics.median(step_times), 'measure_s_total': measuring[0], 'steps': steps,
        'loop_s_total': sum(step_times),
        'hinge_first': statistics.fmean(hinge[:head]), 'hinge_last': statistics.fmean(hinge[-head:]),
        'expected_ms_start': initial_expected, 'expected_ms_end': expected_latency(),
        'argmax_ms_start': initial_argmax, 'argmax_ms_end': term.measure(final),
        'final_layers': list(final.layers), 'summary': term.summary(final) if not quick else
        term.summary(final, references=('mobilenetv2_100',)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--quick', action='store_true', help='small sizes (for CPU checks)')
    parser.add_argument('--steps', type=int, default=None, help='search steps (default 50; quick 6)')
    parser.add_argument('--json', default=None, help='also write every number to this JSON file')
    parser.add_argument('--threads', type=int, default=1,
                        help='CPU intra-op threads (default 1: on small shared VMs more threads mostly wait)')
    args = parser.parse_args(argv)
    if not args.device.startswith('cuda'):
        torch.set_num_threads(args.threads)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        print('bench/latency_gpu.py: CUDA is not available here; run with --device cpu --quick', file=sys.stderr)
        return 2
    steps = args.steps or (6 if args.quick else 50)
    began = time.perf_counter()
    print(f'device: {device_name(args.device)} | torch {torch.__version__} | '
          f'cudnn.benchmark {torch.backends.cudnn.benchmark} | CPU threads {torch.get_num_threads()}')

    batch, size, reps = (8, 64, 2) if args.quick else (32, 224, 5)
    rows = reference_latency(args.device, batch, size, reps, warmup=2 if args.quick else 10,
                             repeats=5 if args.quick else 30)
    print(f'\n[1] reference latency, batch {batch}, {size}x{size}, {reps} repetitions of the whole measurement')
    print(f'{"model":<18} {"variant":<8} {"median ms":>10} {"CV %":>6} {"IQR ms":>7}   runs (ms)')
    for r in rows:
        print(f'{r["model"]:<18} {r["variant"]:<8} {r["median_ms"]:>10.2f} {r["cv_percent"]:>6.2f} '
              f'{r["iqr_ms"]:>7.3f}   {" ".join(f"{v:.2f}" for v in r["runs"])}')

    with tempfile.TemporaryDirectory() as work:
        search = latency_search(args.device, args.quick, steps, Path(work))
    held = search['surrogate'].get('holdout', {})
    print(f'\n[2] latency search, {steps} steps (w step + φ step, REBAR + RELAX latency term), random data')
    print(f'setup (supernet + surrogate on {search["surrogate"]["samples"]} random archs): {search["setup_s"]:.1f} s; '
          f'surrogate held-out MAE {held.get("mae", float("nan")):.3f} ms, relative error '
          f'{100 * held.get("relative_error", float("nan")):.2f} %, R² {held.get("r2", float("nan")):.3f}')
    print(f'target {search["target_ms"]:.2f} ms (25% quantile of random archs) | step {search["step_s_median"]:.3f} s '
          f'median | latency measurement {search["measure_s_total"]:.1f} s of {search["loop_s_total"]:.1f} s')
    print(f'hinge max(0, lat - target): first steps {search["hinge_first"]:.2f} -> last steps {search["hinge_last"]:.2f} ms')
    print(f'E[latency] by surrogate: {search["expected_ms_start"]:.2f} -> {search["expected_ms_end"]:.2f} ms | '
          f'argmax architecture measured: {search["argmax_ms_start"]:.2f} -> {search["argmax_ms_end"]:.2f} ms')
    print(search['summary'])
    total = time.perf_counter() - began
    print(f'\ntotal {total:.0f} s')
    if args.json:
        Path(args.json).write_text(json.dumps({'device': device_name(args.device), 'references': rows,
                                               'search': search, 'total_s': total}, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
