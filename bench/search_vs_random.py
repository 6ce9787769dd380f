"""Does the search find better cells than picking one at random? Searched vs random DARTS cells on embedded digits.

The instrument of issue 9 (and the paper's Table 2 questions), on scikit-learn's bundled digits (no download):

1. R random genotypes, drawn uniformly from the space the search starts from (``DartsCellDistribution`` with zero
   logits, seeded), each trained from scratch with one fixed protocol (``unas_zoo.search.evaluation``: the zoo model
   ``darts_cell_cifar``, timm's optimizer and cosine scheduler) and tested on the digits test split, which no search
   ever sees (searches split the train split 90/10 into train/validation).
2. The protocol's accuracy of a cell is the mean over ``--train-seeds`` N training seeds (init and data order).
   ``spread`` (std of the random cells' protocol accuracy) is compared with ``seed_noise``, the std of one cell's
   protocol accuracy across training seeds: the std over its N single-seed accuracies, averaged over the random
   cells, divided by √N. The task discriminates between architectures only when spread / seed_noise >= 3. On plain
   digits one training seed gives ratios of 1.5-2 in every regime tried (short or converged training, fewer images,
   label noise, narrower nets: architectures differ by about as much as seeds do), so the protocol averages seeds.
   Harder variants stay available: ``--image-size``, ``--train-images``, ``--label-noise`` (training labels of the
   stand-alone protocol only), ``--train-epochs``.
3. For every configuration (estimator x objective x sampling) and seed, a search with the same budget through the
   public ``run_search``; each found cell is trained with the same protocol; reported: test accuracy (mean ± std
   over seeds), mean percentile among the random cells, search wall time.
4. Kendall τ between each random cell's accuracy inside a configuration's seed-0 supernet (inherited weights,
   batch-statistics BN) and its stand-alone accuracy; the JSON's ``kendall_tau`` is the default
   configuration's (the project's default search: RLOO, K=4 per batch, L_gen), the summary holds every
   configuration's. Comparing per-example with per-batch sampling, and
   ``subset_bn: running`` with the paper's subset statistics, measures what the few-example BatchNorm of
   per-example sampling costs (issue 9 item 2).

    python bench/search_vs_random.py --quick --results-file quick.json      # <= 10 min on 2 idle cores
    python bench/search_vs_random.py --results-file full.json               # R=16, S=3, 8 configurations
    python bench/search_vs_random.py --device cuda --channels 16 --layers 8 --image-size 16 --results-file gpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from unas_zoo.genotypes import load as load_genotype
from unas_zoo.search.config import SearchConfig, config_from_dict
from unas_zoo.search.evaluation import (
    DigitsTask, TrainProtocol, kendall_tau, mean_std, percentile, random_genotypes, supernet_accuracy,
    train_and_test)
from unas_zoo.search.loop import CHECKPOINT, build_search, run_search

# Configurations compared: config keys over the shared search settings. The first is the project's default
# (the paper's UNAS: REBAR + L_gen, one architecture per batch).
CONFIGS: dict[str, dict[str, Any]] = {
    'rloo4_gen': dict(estimator='rloo', objective='gen', arch_samples=4),   # the project's default (search.py)
    'rloo4_batch_gap': dict(estimator='rloo', objective='gen', arch_samples=4, gen_gap='batch'),  # Eq. 8 literally
    'rebar_gen': dict(estimator='rebar', objective='gen'),                  # the paper's UNAS: REBAR + L_gen
    'rebar_val': dict(estimator='rebar', objective='val'),
    'gumbel_gen': dict(estimator='gumbel', objective='gen'),
    'darts': dict(estimator='darts', objective='val'),                  # DARTS first order: α on L_val
    'reinforce_gen': dict(estimator='reinforce', objective='gen'),      # moving-average baseline (the loop's)
    'rloo_example_gen': dict(estimator='rloo', objective='gen', sampling='per_example'),
    'rebar_example_gen': dict(estimator='rebar', objective='gen', sampling='per_example'),
    # Issue 9 item 2: BN of ops run on the few examples that chose them normalises with running statistics.
    'rloo_example_running_bn': dict(estimator='rloo', objective='gen', sampling='per_example', subset_bn='running'),
}
QUICK_CONFIGS = ('rloo4_gen', 'reinforce_gen')
# --configs only: per-example REBAR costs several times the others (a relaxed pass through every op per example);
# the batch-level gap is a variant of the default, compared on its own.
FULL_CONFIGS = tuple(name for name in CONFIGS if name not in ('rebar_example_gen', 'rloo4_batch_gap'))
DEFAULT_CONFIG = 'rloo4_gen'


@dataclasses.dataclass
class Settings:
    """What one run of the bench does (``--quick`` and the full mode differ only here)."""
    random_cells: int
    train_seeds: int
    search_seeds: int
    configs: tuple[str, ...]
    search_epochs: int
    warmup_epochs: int
    task: DigitsTask
    protocol: TrainProtocol
    device: str
    threads: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument('--quick', action='store_true', help='fewer random cells, seeds and configurations (<= 10 min)')
    p.add_argument('--random-cells', type=int, help='R (default 16; quick 8)')
    p.add_argument('--search-seeds', type=int, help='S (default 3; quick 2)')
    p.add_argument('--configs', nargs='+', choices=list(CONFIGS), help='configurations to search with')
    p.add_argument('--train-seeds', type=int, help='training seeds averaged per cell, >= 2 (default 6)')
    p.add_argument('--search-epochs', type=int, help='epochs with φ steps (default 3; quick 2)')
    p.add_argument('--warmup-epochs', type=int, help='w-only epochs before them (default 6; quick 3)')
    p.add_argument('--image-size', type=int, default=8, help='digits rendered at this size (search and training)')
    p.add_argument('--train-images', type=int, help='stand-alone training images (default: all 1438)')
    p.add_argument('--label-noise', type=float, default=0.0, help='fraction of stand-alone training labels replaced')
    p.add_argument('--train-epochs', type=int, default=2, help='stand-alone training epochs')
    p.add_argument('--train-lr', type=float, default=1e-3, help='stand-alone learning rate (timm adam)')
    p.add_argument('--channels', type=int, default=8, help='C of the supernet and of the stand-alone networks')
    p.add_argument('--layers', type=int, default=5, help='cells of the supernet and of the stand-alone networks')
    p.add_argument('--device', default='cpu', help='cpu | cuda')
    p.add_argument('--threads', type=int, default=1, help='torch intra-op threads (2 collapse with a busy neighbour)')
    p.add_argument('--results-file', type=Path, help='write the results as JSON here')
    p.add_argument('--plot', type=Path, help='histogram PNG (default: next to --results-file, else none)')
    p.add_argument('--work-dir', type=Path, help='keep the search outputs here (default: a temporary folder)')
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Quick and full defaults, overridden by whatever was given explicitly."""
    def pick(value, quick, full):
        return value if value is not None else (quick if args.quick else full)

    configs = tuple(args.configs or (QUICK_CONFIGS if args.quick else FULL_CONFIGS))
    missing = [c for c in configs if not _config_available(c)]
    if missing:
        print(f'skipping {missing}: this checkout\'s search config lacks their keys or estimator', flush=True)
        configs = tuple(c for c in configs if c not in missing)
    train_seeds = args.train_seeds if args.train_seeds is not None else 6
    if train_seeds < 2:
        raise SystemExit(f'--train-seeds: must be >= 2 (the seed noise is measured from them), got {train_seeds}')
    return Settings(
        random_cells=pick(args.random_cells, 8, 16), train_seeds=train_seeds,
        search_seeds=pick(args.search_seeds, 2, 3), configs=configs,
        search_epochs=pick(args.search_epochs, 2, 3), warmup_epochs=pick(args.warmup_epochs, 3, 6),
        task=DigitsTask(image_size=args.image_size, train_images=args.train_images, label_noise=args.label_noise),
        protocol=TrainProtocol(epochs=args.train_epochs, batch_size=32, lr=args.train_lr, opt='adam',
                               weight_decay=0.0, init_channels=args.channels, layers=args.layers),
        device=args.device, threads=args.threads)


def _config_available(name: str) -> bool:
    try:
        config_from_dict(CONFIGS[name])
    except ValueError:
        return False
    return True


def search_config(s: Settings, name: str, seed: int, output: Path) -> SearchConfig:
    """The shared search budget (data, supernet, epochs, learning rates of the demo) with the configuration's keys."""
    base = dict(dataset='digits', image_size=s.task.image_size, init_channels=s.protocol.init_channels,
                layers=s.protocol.layers, epochs=s.warmup_epochs + s.search_epochs, warmup_epochs=s.warmup_epochs,
                device=s.device, threads=s.threads, seed=seed, output=str(output), log_every=10 ** 6)
    return config_from_dict({**base, **CONFIGS[name]}, f'search_vs_random:{name}')


def _log(message: str, started: float) -> None:
    print(f'[{time.time() - started:6.0f}s] {message}', flush=True)


def protocol_accuracies(s: Settings, genotype, tensors) -> list[float]:
    """Test accuracy (%) of ``genotype`` trained from scratch with each of the protocol's training seeds."""
    return [train_and_test(genotype, tensors, s.protocol, seed=seed, device=s.device) for seed in range(s.train_seeds)]


def train_random(s: Settings, tensors, started: float) -> tuple[list, list[list[float]], float, float]:
    """(genotypes, per-seed accuracies, spread, seed_noise) of the random cells."""
    genotypes = random_genotypes(s.random_cells, seed=0)
    runs = []
    for i, genotype in enumerate(genotypes):
        t = time.time()
        runs.append(protocol_accuracies(s, genotype, tensors))
        _log(f'random cell {i + 1}/{len(genotypes)}: test acc {statistics.fmean(runs[-1]):.1f}% (seeds: '
             f'{", ".join(f"{a:.1f}" for a in runs[-1])}; {time.time() - t:.0f}s)', started)
    spread = mean_std([statistics.fmean(r) for r in runs])[1]
    single_seed = statistics.fmean(mean_std(r)[1] for r in runs)
    _log(f'one seed: std {single_seed:.2f} pts across seeds (ratio {spread / single_seed:.1f} if the protocol used '
         f'one seed)', started)
    return genotypes, runs, spread, single_seed / math.sqrt(s.train_seeds)


def run_searches(s: Settings, tensors, random_accs: list[float], work: Path, started: float) -> list[dict]:
    """Every (configuration, seed): search, train the found cell, place it among the random cells."""
    rows = []
    for seed in range(s.search_seeds):
        for name in s.configs:
            cfg = search_config(s, name, seed, work / f'{name}_seed{seed}')
            t = time.time()
            genotype = load_genotype(run_search(cfg, progress=False))
            seconds = time.time() - t
            seeds = protocol_accuracies(s, genotype, tensors)
            accuracy = statistics.fmean(seeds)
            rows.append(dict(config=name, seed=seed, accuracy=accuracy, percentile=percentile(accuracy, random_accs),
                             seed_accuracies=seeds, search_seconds=round(seconds, 1),
                             genotype=_plain(genotype.to_dict())))
            _log(f'search {name} seed {seed}: {seconds:.0f}s; found cell test acc {accuracy:.1f}% '
                 f'(percentile {rows[-1]["percentile"]:.0f})', started)
    return rows


def _plain(data: Any) -> Any:
    """JSON-safe (provenance dates become text)."""
    return json.loads(json.dumps(data, default=str))


def supernet_ranking(s: Settings, name: str, genotypes: list, tensors, work: Path) -> list[float]:
    """Test accuracy of each random cell inside configuration ``name``'s seed-0 supernet (inherited weights)."""
    cfg = search_config(s, name, 0, work / f'{name}_seed0')
    state = torch.load(Path(cfg.output) / CHECKPOINT, map_location=s.device, weights_only=True)
    parts = build_search(cfg, num_classes=10, device=s.device, log=None)
    parts.supernet.load_state_dict(state['supernet'])
    _, _, x_test, y_test = tensors
    return [supernet_accuracy(parts.supernet, parts.dist, g, x_test, y_test) for g in genotypes]


def summarize(rows: list[dict], taus: dict[str, float]) -> dict[str, dict]:
    """Per configuration: found cells' accuracy (mean, std over seeds), mean percentile, search seconds, and the
    Kendall τ of its seed-0 supernet's ranking of the random cells."""
    out = {}
    for name in dict.fromkeys(r['config'] for r in rows):
        mine = [r for r in rows if r['config'] == name]
        mean, std = mean_std([r['accuracy'] for r in mine])
        out[name] = dict(mean=round(mean, 2), std=round(std, 2), seeds=len(mine),
                         mean_percentile=round(statistics.fmean(r['percentile'] for r in mine), 1),
                         search_seconds=round(statistics.fmean(r['search_seconds'] for r in mine), 1),
                         kendall_tau=round(taus[name], 3) if name in taus else None)
    return out


def report(results: dict) -> str:
    """The markdown table and the answers to the paper's questions, as measured."""
    random_accs = [r['accuracy'] for r in results['random']]
    lo, hi = min(random_accs), max(random_accs)
    lines = [f'random cells: R={len(random_accs)}, test acc mean {statistics.fmean(random_accs):.1f}% '
             f'(min {lo:.1f}, median {statistics.median(random_accs):.1f}, max {hi:.1f})',
             f'spread {results["spread"]:.2f} pts, seed_noise {results["seed_noise"]:.2f} pts, ratio '
             f'{results["spread"] / results["seed_noise"]:.1f} (required >= 3)',
             f'Kendall tau (supernet {DEFAULT_CONFIG} seed 0 vs stand-alone, {len(random_accs)} random cells): '
             f'{results["kendall_tau"]:.2f}', '',
             '| configuration | found cells test acc (%) | mean percentile among random | search s | seeds '
             '| supernet τ |', '|---|---|---|---|---|---|']
    for name, row in results['summary'].items():
        lines.append(f'| {name} | {row["mean"]:.1f} ± {row["std"]:.1f} | {row["mean_percentile"]:.0f} | '
                     f'{row["search_seconds"]:.0f} | {row["seeds"]} | {row["kendall_tau"]:.2f} |')
    lines += [''] + _questions(results['summary'])
    return '\n'.join(lines)


def _questions(summary: dict) -> list[str]:
    pairs = [('REBAR vs Gumbel-Softmax (L_gen)', 'rebar_gen', 'gumbel_gen'),
             ('L_gen vs L_val (REBAR)', 'rebar_gen', 'rebar_val'),
             ('per-batch vs per-example sampling (REBAR)', 'rebar_gen', 'rebar_example_gen'),
             ('per-batch K=4 vs per-example (RLOO)', 'rloo4_gen', 'rloo_example_gen'),
             ('L_gen gap per example pair vs of the batch means (RLOO K=4)', 'rloo4_gen', 'rloo4_batch_gap'),
             ('per-example BN: running vs subset statistics (RLOO)', 'rloo_example_running_bn', 'rloo_example_gen')]
    out = []
    for title, a, b in pairs:
        if a in summary and b in summary:
            sa, sb = summary[a], summary[b]
            diff = sa['mean'] - sb['mean']
            noise = max(sa['std'], sb['std'])
            verdict = 'within noise' if abs(diff) <= noise else (f'{a} better' if diff > 0 else f'{b} better')
            out.append(f'{title}: {sa["mean"]:.1f} vs {sb["mean"]:.1f} (percentile {sa["mean_percentile"]:.0f} vs '
                       f'{sb["mean_percentile"]:.0f}): {verdict}')
    return out


def plot(results: dict, path: Path) -> None:
    """Histogram of the random cells' accuracy with each configuration's found cells marked above it."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    random_accs = [r['accuracy'] for r in results['random']]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(random_accs, bins=max(5, len(random_accs) // 2), color='0.75', label='random cells')
    top = ax.get_ylim()[1]
    for i, name in enumerate(results['summary']):
        accs = [r['accuracy'] for r in results['searched'] if r['config'] == name]
        ax.scatter(accs, [top * (1.02 + 0.06 * i)] * len(accs), marker='v', color=f'C{i % 10}', label=name, zorder=3)
    ax.set_ylim(0, top * (1.1 + 0.06 * len(results['summary'])))
    ax.set_xlabel('stand-alone test accuracy (%)')
    ax.set_ylabel('random cells')
    ax.legend(fontsize=7, loc='center left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(settings: Settings, work: Path, log_started: float | None = None) -> dict:
    """The whole bench; returns the results mapping (the JSON's keys)."""
    started = log_started or time.time()
    torch.set_num_threads(settings.threads)
    tensors = settings.task.tensors()
    _log(f'task: {settings.task}; protocol: {settings.protocol}; {len(tensors[1])} train / {len(tensors[3])} test '
         f'images; configurations {list(settings.configs)} x {settings.search_seeds} seed(s)', started)
    genotypes, runs, spread, seed_noise = train_random(settings, tensors, started)
    accuracies = [statistics.fmean(r) for r in runs]
    _log(f'spread {spread:.2f} pts vs seed_noise {seed_noise:.2f} pts: ratio {spread / seed_noise:.1f}', started)
    rows = run_searches(settings, tensors, accuracies, work, started)
    inherited = {name: supernet_ranking(settings, name, genotypes, tensors, work) for name in settings.configs}
    taus = {name: kendall_tau(accs, accuracies) for name, accs in inherited.items()}
    default = inherited.get(DEFAULT_CONFIG, [None] * len(genotypes))
    random_rows = [dict(genotype=_plain(g.to_dict()), accuracy=a, seed_accuracies=r, supernet_accuracy=s)
                   for g, a, r, s in zip(genotypes, accuracies, runs, default)]
    return dict(random=random_rows, searched=rows, summary=summarize(rows, taus),
                kendall_tau=taus.get(DEFAULT_CONFIG, float('nan')), spread=spread, seed_noise=seed_noise)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix='search_vs_random_') as tmp:
        work = args.work_dir or Path(tmp)
        results = run(settings, work, started)
    print(report(results))
    print(f'total {time.time() - started:.0f}s')
    if args.results_file:
        args.results_file.write_text(json.dumps(results, indent=1))
    plot_path = args.plot or (args.results_file.with_suffix('.png') if args.results_file else None)
    if plot_path:
        plot(results, plot_path)
        print(f'plot: {plot_path}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
