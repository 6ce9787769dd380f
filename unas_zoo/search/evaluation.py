"""Judging a search: random architectures, one stand-alone training protocol, percentiles and rank correlation.

A searched cell means something only next to cells drawn at random from the space the search started from, all
trained the same way and tested on data the search never saw (Li & Talwalkar 2019; Yang et al. 2020). This module
holds the pieces ``bench/search_vs_random.py`` assembles:

* ``random_genotypes``: uniform draws from ``DartsCellDistribution`` with zero logits (the search's starting point);
* ``DigitsTask``: scikit-learn's bundled digits as in-memory tensors, made harder in documented, deterministic ways
  (resolution, fewer training images, label noise on the training labels only) so that architectures differ;
* ``TrainProtocol`` / ``train_and_test``: the zoo model ``darts_cell_cifar`` trained from scratch with timm's
  optimizer and scheduler (``unas_zoo.training``'s components) and tested on the held-out test split;
* ``supernet_accuracy``: a cell's test accuracy with weights inherited from a search supernet (batch-statistics BN,
  as the search's ``evaluate_argmax`` does);
* ``percentile``, ``kendall_tau``, ``mean_std``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from ..data import DigitsDataset, dataset_info
from ..genotypes import CIFAR_SEARCH_OPS, DartsGenotype
from ..training import create_model, evaluate
from .distributions import DartsCellDistribution
from .outputs import batch_statistics

__all__ = ['random_genotypes', 'DigitsTask', 'TrainProtocol', 'train_and_test', 'supernet_accuracy', 'percentile',
           'kendall_tau', 'mean_std']


def random_genotypes(count: int, seed: int, ops: Sequence[str] = CIFAR_SEARCH_OPS) -> list[DartsGenotype]:
    """``count`` cells drawn uniformly (zero logits) with a generator seeded by ``seed``."""
    dist = DartsCellDistribution(tuple(ops))
    generator = torch.Generator().manual_seed(seed)
    return [dist.to_genotype(dist.sample(generator=generator), name=f'random_{seed}_{i}') for i in range(count)]


@dataclasses.dataclass(frozen=True)
class DigitsTask:
    """The digits train/test split as normalised tensors.

    ``train_images`` keeps the first N of a seeded permutation of the train split (None: all 1438);
    ``label_noise`` replaces that fraction of the kept training labels by a seeded random *other* class. The test
    split (359 images) is never changed and never seen by the search.
    """
    image_size: int = 8
    train_images: int | None = None
    label_noise: float = 0.0
    seed: int = 0

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(x_train, y_train, x_test, y_test) on the CPU."""
        if not 0.0 <= self.label_noise < 1.0:
            raise ValueError(f'DigitsTask.label_noise: must lie in [0, 1), got {self.label_noise}')
        info = dataset_info('digits')
        mean = torch.tensor(info['mean']).view(1, 3, 1, 1)
        std = torch.tensor(info['std']).view(1, 3, 1, 1)

        def load(split: str) -> tuple[Tensor, Tensor]:
            ds = DigitsDataset(split, image_size=self.image_size)
            x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in ds.images])) / 255.0
            return (x.permute(0, 3, 1, 2) - mean) / std, torch.tensor(ds.targets)

        x_train, y_train = load('train')
        x_test, y_test = load('test')
        rng = np.random.default_rng(self.seed)
        if self.train_images is not None:
            if not 10 <= self.train_images <= len(y_train):
                raise ValueError(f'DigitsTask.train_images: must lie in 10..{len(y_train)}, got {self.train_images}')
            keep = torch.from_numpy(rng.permutation(len(y_train))[:self.train_images])
            x_train, y_train = x_train[keep], y_train[keep]
        if self.label_noise:
            flip = torch.from_numpy(rng.random(len(y_train)) < self.label_noise)
            shift = torch.from_numpy(rng.integers(1, 10, len(y_train)))
            y_train = torch.where(flip, (y_train + shift) % 10, y_train)
        return x_train, y_train, x_test, y_test


@dataclasses.dataclass(frozen=True)
class TrainProtocol:
    """One fixed stand-alone training recipe (timm SGD + cosine per step, no augmentation, no drop-path)."""
    epochs: int = 4
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 3e-4
    init_channels: int = 8
    layers: int = 5
    opt: str = 'sgd'
    warmup_epochs: int = 0


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)


def train_and_test(genotype: DartsGenotype | Mapping, task_tensors: Sequence[Tensor], protocol: TrainProtocol,
                   seed: int, device: torch.device | str = 'cpu') -> float:
    """Train ``genotype`` in ``darts_cell_cifar`` from scratch (``seed``: init and data order); test top-1 in %."""
    device = torch.device(device)
    x_train, y_train, x_test, y_test = task_tensors
    genotype = genotype.to_dict() if isinstance(genotype, DartsGenotype) else dict(genotype)
    _set_seed(seed)
    model = create_model('darts_cell_cifar', num_classes=10, model_kwargs=dict(
        genotype=genotype, init_channels=protocol.init_channels, layers=protocol.layers)).to(device)
    optimizer = create_optimizer_v2(model, opt=protocol.opt, lr=protocol.lr, weight_decay=protocol.weight_decay,
                                    momentum=0.9)
    steps_per_epoch = len(y_train) // protocol.batch_size
    scheduler, _ = create_scheduler_v2(optimizer, sched='cosine', num_epochs=protocol.epochs,
                                       warmup_epochs=protocol.warmup_epochs, min_lr=protocol.lr * 0.01,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    order_rng = torch.Generator().manual_seed(seed)
    x_train, y_train = x_train.to(device), y_train.to(device)
    model.train()
    updates = 0
    for _ in range(protocol.epochs):
        order = torch.randperm(len(y_train), generator=order_rng).to(device)
        for i in range(steps_per_epoch):
            batch = order[i * protocol.batch_size:(i + 1) * protocol.batch_size]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
    loader = DataLoader(TensorDataset(x_test, y_test), batch_size=256)
    return float(evaluate(model, loader, device)['top1'])


@torch.no_grad()
def supernet_accuracy(supernet: nn.Module, dist: DartsCellDistribution, genotype: DartsGenotype, x: Tensor,
                      y: Tensor, batch_size: int = 256) -> float:
    """Top-1 (%) of ``genotype`` with the supernet's weights: one-hot architecture, BN on batch statistics.

    The running statistics mix every child the search sampled, so (as the search's ``evaluate_argmax``) BN
    normalises with the statistics of each test batch; the buffers are restored afterwards.
    """
    device = next(supernet.parameters()).device
    weights = dist.one_hot({k: torch.tensor(v, device=device) for k, v in dist.encode(genotype).items()})
    correct = 0
    with batch_statistics(supernet):
        for i in range(0, len(y), batch_size):
            logits = supernet(x[i:i + batch_size].to(device), weights)
            correct += int((logits.argmax(-1).cpu() == y[i:i + batch_size]).sum())
    return 100.0 * correct / len(y)


def percentile(value: float, population: Sequence[float]) -> float:
    """Percent of ``population`` below ``value``, ties counting half (the median of the population scores 50)."""
    if not population:
        raise ValueError('percentile: the population of random accuracies is empty')
    below = sum(p < value for p in population)
    ties = sum(p == value for p in population)
    return 100.0 * (below + 0.5 * ties) / len(population)


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-b (ties in either ranking shrink it); NaN when either side is constant."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError(f'kendall_tau: needs two equally long sequences of >= 2 values, got {len(a)} and {len(b)}')
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else float('nan')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = [float(v) for v in values]
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
