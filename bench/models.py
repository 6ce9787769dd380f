"""CPU forward-pass time of the zoo's ImageNet nets next to timm's mobilenetv2_140, measured in one run.

    python bench/models.py                      # batch 8, 224x224, median of 10 interleaved repeats
    python bench/models.py --threads 1 --repeats 20

Models are timed round-robin (one forward of each per repeat) so that load changes on a shared machine hit all of
them alike; the report is the median per model and its ratio to mobilenetv2_140.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import unas_zoo  # noqa: F401  (registers the zoo's models)

MODELS = ('unas_imagenet', 'unas_mbconv_gpu', 'proxylessnas_gpu', 'mobilenetv2_140')
BASELINE = 'mobilenetv2_140'


def time_forward(names: tuple[str, ...], batch_size: int = 8, img_size: int = 224, repeats: int = 10,
                 warmup: int = 2) -> dict[str, list[float]]:
    """Seconds per eval-mode forward pass of each model, ``repeats`` samples each after ``warmup`` passes."""
    torch.manual_seed(0)
    models = {name: timm.create_model(name).eval() for name in names}
    x = torch.randn(batch_size, 3, img_size, img_size)
    times: dict[str, list[float]] = {name: [] for name in names}
    with torch.inference_mode():
        for model in models.values():
            for _ in range(warmup):
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch intra-op threads (default: torch default)')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    times = time_forward(MODELS, args.batch_size, args.img_size, args.repeats, args.warmup)
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f'CPU forward, batch {args.batch_size}, {args.img_size}x{args.img_size}, {torch.get_num_threads()} '
          f'thread(s), median of {args.repeats} (torch {torch.__version__}, timm {timm.__version__})')
    print(f'{"model":<20}{"median ms":>12}{"min ms":>10}{"ratio":>8}')
    for name in MODELS:
        print(f'{name:<20}{medians[name] * 1e3:>12.1f}{min(times[name]) * 1e3:>10.1f}'
              f'{medians[name] / medians[BASELINE]:>8.2f}')


if __name__ == '__main__':
    main()
