"""What a search leaves behind: per-epoch genotypes, probability history (JSON, CSV, plot), the epoch summary, the
genotype's provenance, and the argmax architecture's validation score that each epoch reports.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from unas_zoo._io import atomic_path, atomic_write_text
from unas_zoo.genotypes.schema import Genotype
from .config import SearchConfig, config_to_dict
from .distributions import ArchDistribution
from .streams import Stream

__all__ = ['FINAL_GENOTYPE', 'default_output', 'probabilities', 'search_genotype', 'write_epoch_outputs',
           'plot_probabilities', 'evaluate_argmax']

FINAL_GENOTYPE = 'genotype.yaml'


def default_output(cfg: SearchConfig) -> Path:
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    return Path('output') / 'search' / f'{stamp}-{cfg.dataset}-{cfg.space}'


@torch.no_grad()
def probabilities(dist: ArchDistribution) -> dict[str, list[float]]:
    return {name: [round(float(p), 6) for p in probs] for name, probs in dist.probs().items()}


def search_genotype(cfg: SearchConfig, dist: ArchDistribution, *, epoch: int, world_size: int, final: bool,
                    metrics: dict[str, float]) -> Genotype:
    """The argmax architecture with the run's provenance (the final one also carries the config and φ)."""
    provenance = {
        'method': 'UNAS (Vahdat et al., CVPR 2020) search with unas_zoo',
        'dataset': cfg.dataset, 'seed': cfg.seed, 'estimator': cfg.estimator, 'objective': cfg.objective,
        'epoch': epoch, 'date': datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
        'world_size': world_size, 'torch': str(torch.__version__),
    }
    if final:
        provenance['config'] = config_to_dict(cfg)
        provenance['probabilities'] = {name: dict(zip(map(str, dist.choices[name]), probs))
                                       for name, probs in probabilities(dist).items()}
    name = f'unas_search_{cfg.dataset}_{cfg.space}'
    return dist.to_genotype(name=name, provenance=provenance, metrics=metrics)


def write_epoch_outputs(out_dir: Path, genotype: Genotype, epoch: int, choices: dict[str, list[str]],
                        history: list[dict], epoch_log: list[dict]) -> None:
    """The epoch's genotype, the probability history (JSON, CSV, plot) and the summary table so far."""
    epochs_dir = out_dir / 'epochs'
    epochs_dir.mkdir(exist_ok=True)
    genotype.to_yaml(epochs_dir / f'genotype_epoch{epoch:03d}.yaml')
    atomic_write_text(out_dir / 'probabilities.json', json.dumps({'choices': choices, 'history': history}, indent=1))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(['epoch', 'variable', 'choice', 'probability'])
    for entry in history:
        for name, probs in entry['probabilities'].items():
            writer.writerows([entry['epoch'], name, label, p] for label, p in zip(choices[name], probs))
    atomic_write_text(out_dir / 'probabilities.csv', rows.getvalue())
    keys = list(dict.fromkeys(k for r in epoch_log for k in r))
    rows = io.StringIO()
    writer = csv.DictWriter(rows, fieldnames=keys)
    writer.writeheader()
    writer.writerows(epoch_log)
    atomic_write_text(out_dir / 'summary.csv', rows.getvalue())
    plot_probabilities(choices, history, out_dir / 'probabilities.png')


@contextlib.contextmanager
def batch_statistics(supernet: nn.Module) -> Iterator[None]:
    """Evaluate a child inside the supernet: BN normalises with batch statistics (the running ones mix every sampled
    child), everything else (dropout on the zero op) is in eval mode; buffers and the training mode are restored."""
    saved = {name: buffer.clone() for name, buffer in supernet.named_buffers()}
    was_training = supernet.training
    supernet.eval()
    for module in supernet.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()
    try:
        yield
    finally:
        for name, buffer in supernet.named_buffers():  # undo the running-statistics updates of this pass
            buffer.copy_(saved[name])
        supernet.train(was_training)


@torch.no_grad()
def evaluate_argmax(supernet: nn.Module, dist: ArchDistribution, stream: Stream, device: torch.device,
                    distributed: bool) -> tuple[float, float]:
    """Validation loss/accuracy of the current most likely architecture.

    Batch norm uses batch statistics (the running ones mix every sampled child) and its buffers are restored
    afterwards; everything else (dropout on the zero op) is in eval mode. No RNG is consumed.
    """
    weights = dist.one_hot({k: torch.tensor(v, device=device) for k, v in dist.argmax().items()})
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    with batch_statistics(supernet):
        for images, targets in stream.one_pass(0):
            images, targets = images.to(device), targets.to(device)
            logits = supernet(images, weights)
            totals += torch.tensor([float(F.cross_entropy(logits, targets, reduction='sum')),
                                    float((logits.argmax(-1) == targets).sum()), targets.shape[0]],
                                   dtype=torch.float64, device=device)
    if distributed:
        torch_dist.all_reduce(totals)
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


def plot_probabilities(choices: dict[str, list[str]], history: list[dict], path: Path) -> None:
    """One small panel per variable: the probability of each choice over epochs."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is an optional extra (pip install unas_zoo[demo])
        return
    names = list(choices)
    cols = min(8, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 1.8 * rows), sharex=True, sharey=True, squeeze=False)
    epochs = [h['epoch'] for h in history]
    # One colour per label across panels (ops, MBConv choices); variables with other labels (input selectors)
    # get a legend of their own.
    shared = [str(label) for label in max(choices.values(), key=len)]
    for ax, name in zip(axes.flat, names):
        series = np.array([h['probabilities'][name] for h in history])
        labels = [str(label) for label in choices[name]]
        own_legend = not set(labels) <= set(shared)
        for j, label in enumerate(labels):
            color = f'C{j % 10}' if own_legend else f'C{shared.index(label) % 10}'
            ax.plot(epochs, series[:, j], label=label, color=color, linewidth=1)
        if own_legend:
            ax.legend(fontsize=5, ncol=2, title='input', title_fontsize=5, loc='upper left')
        ax.set_title(name, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(names):]:
        ax.axis('off')
    handles = [plt.Line2D([], [], color=f'C{j % 10}', linewidth=1) for j in range(len(shared))]
    fig.legend(handles, shared, loc='lower center', ncol=min(8, len(shared)), fontsize=7)
    fig.suptitle('architecture probabilities per epoch', fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
