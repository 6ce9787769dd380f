"""The UNAS search loop: warm-up, alternating φ and w steps, logging, checkpoints, resume and many processes.

One iteration (after ``warmup_epochs`` of w-only training) is

1. a **φ step** (``phi_step``): the estimator (REBAR by default) draws architectures, the supernet computes the
   per-example objective (``Objective``: L_gen of each (train, validation) example pair + λ_arch · duplicate
   branches [+ a cost term]) and Adam updates the distribution's logits;
2. a **w step** (``w_step``): one discrete child is sampled (per batch or per example) and only its ops run; Adam
   updates the supernet weights on L_train, gradients clipped to norm 5.

Schedules are ``CosineAnnealingLR`` stepped once per step (w: over every step of the run, φ: over the φ steps), from
``*_lr`` down to ``*_lr_min``.

Reproducibility: every random draw is seeded. Data order is a pure function of (seed, epoch, position) through
``DistributedSampler`` + explicit batch lists, augmentation is seeded per (seed, epoch, example), architecture samples
come from a dedicated ``torch.Generator`` (seed + rank). A checkpoint stores the weights, φ, both optimizers and
schedulers, the REINFORCE baseline, every RNG state of every rank and the position (epoch, step in epoch), so a run
stopped mid-epoch and resumed ends bit-for-bit where an uninterrupted run ends (CPU).

Many processes: launch with ``torchrun``. Each rank draws its own architectures, so the set of parameters that
received a gradient differs between ranks; instead of DDP's wrapper (whose ``find_unused_parameters`` would also fire
on the φ step's relaxed passes) the loop all-reduces the gradients of w and φ after each backward, averaging over
ranks, and keeps a parameter's gradient ``None`` only when no rank used it — exactly what one process does, so Adam
treats unused ops the same at any world size. Rank 0 writes every output.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.optim.lr_scheduler import CosineAnnealingLR
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from unas_zoo._io import atomic_path, atomic_write_text
from unas_zoo.data import create_dataset, dataset_info, split_train_val
from .config import SearchConfig, SearchConfigError, config_to_dict, mbconv_backbone
from .distributions import ArchDistribution, DartsCellDistribution, MBConvDistribution
from .estimators import Estimate, MovingAverageBaseline, estimate
from .objectives import Objective

__all__ = ['w_step', 'phi_step', 'run_search', 'build_search', 'SearchParts', 'CHECKPOINT', 'FINAL_GENOTYPE']

CHECKPOINT = 'checkpoint.pt'
FINAL_GENOTYPE = 'genotype.yaml'
CONFIG_FILE = 'config.yaml'
# Keys that may differ when a run is resumed: they change where or how fast it runs, not what it computes.
RESUME_MUTABLE = ('data_dir', 'download', 'num_workers', 'device', 'output', 'log_every', 'checkpoint_every',
                  'stop_after_steps', 'save_rank_state')
GradSync = Callable[[list[Tensor]], None]


# --------------------------------------------------------------------------------------------------- the two steps

def _accuracy(logits: Tensor, targets: Tensor) -> float:
    return float((logits.argmax(-1) == targets).float().mean())


def w_step(supernet: nn.Module, dist: ArchDistribution, images: Tensor, targets: Tensor,
           optimizer: torch.optim.Optimizer, *, per_example: bool, generator: torch.Generator | None,
           grad_clip: float = 5.0, mode: str = 'sample', grad_sync: GradSync | None = None) -> dict[str, float]:
    """Update the supernet weights on L_train of one architecture sample.

    mode 'sample' (UNAS): a discrete child per batch (or per example), so only its ops run. mode 'darts': the dense
    softmax mixture of every op, as in DARTS (used with the 'darts' estimator and for comparisons).
    ``grad_sync`` averages gradients across processes (the loop passes one under torchrun).
    """
    with torch.no_grad():
        if mode == 'sample':
            indices = dist.sample(images.shape[0] if per_example else None, generator=generator)
            weights = dist.one_hot(indices)
        elif mode == 'darts':
            weights = {k: v.detach() for k, v in dist.probs().items()}
        else:
            raise ValueError(f"w_step: unknown mode {mode!r}; allowed values are ['sample', 'darts']")
    logits = supernet(images, weights)
    loss = F.cross_entropy(logits, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group['params']]
    if grad_sync is not None:
        grad_sync(params)
    torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], grad_clip)
    optimizer.step()
    return {'w_loss': float(loss.detach()), 'w_acc': _accuracy(logits.detach(), targets)}


@contextlib.contextmanager
def _weights_frozen(module: nn.Module) -> Iterator[None]:
    """The φ step differentiates through the network but must not accumulate (or pay for) weight gradients."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def phi_step(supernet: nn.Module, dist: ArchDistribution, train_batch: tuple[Tensor, Tensor],
             val_batch: tuple[Tensor, Tensor], optimizer: torch.optim.Optimizer, *, estimator: str = 'rebar',
             objective: Objective = Objective(), per_example: bool = False, temperature: float = 0.4,
             generator: torch.Generator | None = None, step: int = 0,
             baseline: MovingAverageBaseline | float | None = None,
             grad_sync: GradSync | None = None) -> dict[str, float]:
    """Update the architecture distribution with one estimator step on the objective.

    Example ``i`` of the train batch and example ``i`` of the validation batch share one architecture (per-example
    mode) so that ``|L_val − L_train|`` is the gap of that architecture; both batches run in one supernet call.
    ``step`` drives the cost term's λ annealing. Returns the estimator's loss, cost and diagnostics.
    """
    (x_train, y_train), (x_val, y_val) = train_batch, val_batch
    if per_example and x_train.shape[0] != x_val.shape[0]:
        raise ValueError(f'per-example pairs need equal train and validation batches, got {x_train.shape[0]} and '
                         f'{x_val.shape[0]}')
    parts = ([(x_train, y_train)] if objective.needs_train else []) + ([(x_val, y_val)] if objective.needs_val else [])
    images = torch.cat([x for x, _ in parts])
    targets = torch.cat([y for _, y in parts])
    sizes = [x.shape[0] for x, _ in parts]

    def loss_fn(weights: dict[str, Tensor]) -> Tensor:
        # Repeat a per-example architecture for every part, so that pair i runs the same child in both halves.
        run_weights = {k: torch.cat([w] * len(parts)) if w.dim() == 2 else w for k, w in weights.items()}
        losses = F.cross_entropy(supernet(images, run_weights), targets, reduction='none').split(sizes)
        train_losses = losses[0] if objective.needs_train else None
        val_losses = losses[-1] if objective.needs_val else None
        return objective(weights, train_losses, val_losses)

    cost = objective.cost
    cost_kwargs = {}
    if cost is not None:
        cost_kwargs = dict(cost_fn=cost.hinge_fn, cost_surrogate=cost.hinge_surrogate, cost_weight=cost.weight(step))
    optimizer.zero_grad(set_to_none=True)
    with _weights_frozen(supernet):
        est: Estimate = estimate(estimator, dist, loss_fn, num_samples=sizes[0] if per_example else None,
                                 temperature=temperature, baseline=baseline, generator=generator, **cost_kwargs)
        est.objective.backward()
    if per_example:
        est.gradient_variance()  # adds diagnostics['grad_variance'] from the per-example estimates
    params = [p for group in optimizer.param_groups for p in group['params']]
    if grad_sync is not None:
        grad_sync(params)
    optimizer.step()
    stats = {'phi_loss': float(est.loss) if est.loss is not None else float('nan')}
    if est.cost is not None:
        stats['cost'] = float(est.cost)
        stats['cost_weight'] = float(cost_kwargs['cost_weight'])
    stats.update(est.diagnostics)
    return stats


# ------------------------------------------------------------------------------------------------ processes, RNG

@dataclasses.dataclass
class _Processes:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _resolve_device(name: str) -> torch.device:
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise SearchConfigError(f'device: {name!r} was asked for but CUDA is not available; use cpu or auto')
    return torch.device(name)


def _init_processes(device_name: str) -> _Processes:
    """Join the process group torchrun describes (env vars); a plain ``python search.py`` is world size 1."""
    device = _resolve_device(device_name)
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return _Processes(device=device)
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return _Processes(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), device=device)


def _average_gradients(world_size: int) -> GradSync:
    """All-reduce mean of gradients; a gradient stays ``None`` only where no rank produced one."""
    def sync(params: list[Tensor]) -> None:
        if not params:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                         + [torch.tensor([float(p.grad is not None) for p in params], device=params[0].device)])
        torch_dist.all_reduce(flat)
        flat /= world_size
        offset = 0
        for p in params:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        for p, used in zip(params, flat[offset:].tolist()):
            if used == 0:
                p.grad = None
    return sync


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG this process uses, as tensors and plain values (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    return {
        'python': random.getstate(),
        'numpy': {'keys': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                  'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])},
        'torch': torch.get_rng_state(),
        'cuda': torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        'arch_generator': generator.get_state(),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    generator.set_state(state['arch_generator'])


# ---------------------------------------------------------------------------------------------------------- data

class _SeededView(Dataset):
    """A dataset with its transform applied under an RNG seeded by (seed, pass, index).

    Random augmentation then depends only on which example is drawn in which pass, not on worker processes or on
    where a resumed run restarted.
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int, random_transform: bool):
        self.dataset, self.transform, self.seed, self.random_transform = dataset, transform, seed, random_transform
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        if not self.random_transform:
            return self.transform(image), target
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2 ** 63)
            return self.transform(image), target


def _transforms(cfg: SearchConfig, image_size: int, mean, std) -> tuple[Callable, Callable]:
    """(search transform, evaluation transform)."""
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    if cfg.dataset == 'imagefolder':
        plain = [T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size)]
        augmented = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        plain = [] if cfg.dataset == 'digits' else [T.Resize(image_size)]
        # Mirrored digits are different symbols: digits get the crop only.
        flip = [] if cfg.dataset == 'digits' else [T.RandomHorizontalFlip()]
        augmented = plain + [T.RandomCrop(image_size, padding=4)] + flip
    search = T.Compose((augmented if cfg.augment else plain) + normalize)
    return search, T.Compose(plain + normalize)


@dataclasses.dataclass
class _Stream:
    """Deterministic batches of one split for one rank: pass ``p`` is a pure function of (seed, p)."""
    view: _SeededView
    sampler: DistributedSampler
    batch_size: int
    loader_kwargs: dict

    @property
    def batches_per_pass(self) -> int:
        return len(self.sampler) // self.batch_size

    def one_pass(self, pass_index: int, skip: int = 0) -> Iterator:
        self.sampler.set_epoch(pass_index)
        self.view.epoch = pass_index
        order = list(self.sampler)
        batches = [order[i * self.batch_size:(i + 1) * self.batch_size]
                   for i in range(skip, self.batches_per_pass)]
        return iter(DataLoader(self.view, batch_sampler=batches, **self.loader_kwargs))

    def endless(self, start_batch: int) -> Iterator:
        """Batches from position ``start_batch`` of the concatenated passes, forever."""
        pass_index, skip = divmod(start_batch, self.batches_per_pass)
        while True:
            yield from self.one_pass(pass_index, skip)
            pass_index, skip = pass_index + 1, 0


def _build_streams(cfg: SearchConfig, procs: _Processes) -> tuple[_Stream, _Stream, _Stream, int]:
    """(train stream, validation stream for φ, validation stream for evaluation, num_classes)."""
    info = dataset_info(cfg.dataset)
    image_size = cfg.image_size or info['image_size']
    def load(download: bool) -> Dataset:
        return create_dataset(cfg.dataset, cfg.data_dir, split='train', download=download,
                              image_size=image_size if cfg.dataset == 'digits' else None, seed=cfg.seed)

    if procs.distributed and cfg.download:  # one rank downloads, the others read what it fetched
        if procs.is_main:
            load(True)
        torch_dist.barrier()
    base = load(cfg.download and not procs.distributed)
    num_classes = info['num_classes'] or len(base.classes)
    train_set, val_set = split_train_val(base, cfg.val_fraction, seed=cfg.seed)
    search_tf, eval_tf = _transforms(cfg, image_size, info['mean'], info['std'])
    kwargs = dict(num_workers=cfg.num_workers, pin_memory=procs.device.type == 'cuda')

    def stream(subset, transform, seed_offset: int, shuffle: bool, random_transform: bool) -> _Stream:
        sampler = DistributedSampler(subset, num_replicas=procs.world_size, rank=procs.rank, shuffle=shuffle,
                                     seed=cfg.seed + seed_offset)
        return _Stream(_SeededView(subset, transform, cfg.seed + seed_offset, random_transform), sampler,
                       cfg.batch_size, kwargs)

    train = stream(train_set, search_tf, 0, True, cfg.augment)
    val = stream(val_set, search_tf, 1, True, cfg.augment)
    evaluation = stream(val_set, eval_tf, 2, False, False)
    for name, s, n in (('train', train, len(train_set)), ('validation', val, len(val_set))):
        if s.batches_per_pass < 1:
            raise SearchConfigError(
                f'batch_size: {cfg.batch_size} is larger than the {name} split of one process '
                f'({n} examples over {procs.world_size} process(es)); lower batch_size or val_fraction')
    return train, val, evaluation, num_classes


# ----------------------------------------------------------------------------------------------- model and state

@dataclasses.dataclass
class SearchParts:
    """Everything a search step needs, built from a config (also used by the benchmark and tests)."""
    supernet: nn.Module
    dist: ArchDistribution
    objective: Objective
    w_optimizer: torch.optim.Optimizer
    phi_optimizer: torch.optim.Optimizer


def build_search(cfg: SearchConfig, num_classes: int, device: torch.device | str = 'cpu', *,
                 total_phi_steps: int | None = None, output_dir: Path | None = None,
                 log: Callable[[str], None] | None = print) -> SearchParts:
    """Supernet, distribution, objective (with its cost term) and both Adam optimizers for ``cfg``.

    ``total_phi_steps`` turns the cost's ``anneal`` fraction into steps; ``output_dir`` receives its fitted surrogate.
    """
    from .supernets import DartsSupernet, MBConvSupernet

    device = torch.device(device)
    if cfg.space == 'darts':
        supernet = DartsSupernet(num_classes, init_channels=cfg.init_channels, layers=cfg.layers,
                                 ops=tuple(cfg.ops), stem=cfg.stem)
        dist = DartsCellDistribution(tuple(cfg.ops))
    else:
        backbone = mbconv_backbone(cfg.backbone)
        supernet = MBConvSupernet(num_classes, backbone=backbone, zero_dropout=cfg.zero_dropout)
        dist = MBConvDistribution(backbone)
    supernet.to(device)
    dist.to(device)
    cost = None
    if cfg.cost is not None:
        cost = _build_cost(cfg, dist, num_classes, device, total_phi_steps, output_dir, log)
    objective = Objective(cfg.objective, cfg.gen_lambda, cfg.arch_lambda, cost)
    w_optimizer = torch.optim.Adam(supernet.parameters(), lr=cfg.w_lr, weight_decay=cfg.w_weight_decay)
    phi_optimizer = torch.optim.Adam(dist.parameters(), lr=cfg.phi_lr, weight_decay=cfg.phi_weight_decay)
    return SearchParts(supernet, dist, objective, w_optimizer, phi_optimizer)


def _build_cost(cfg: SearchConfig, dist: ArchDistribution, num_classes: int, device: torch.device,
                total_phi_steps: int, output_dir: Path | None, log: Callable[[str], None] | None):
    """The config's ``cost:`` mapping goes verbatim to ``costs.build_cost`` (which validates it)."""
    from .costs import build_cost

    size = cfg.image_size or dataset_info(cfg.dataset)['image_size']
    return build_cost(dict(cfg.cost), dist=dist, device=device, input_size=(3, size, size), num_classes=num_classes,
                      total_steps=total_phi_steps, output_dir=output_dir, source='config', log=log)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


@torch.no_grad()
def _probabilities(dist: ArchDistribution) -> dict[str, list[float]]:
    return {name: [round(float(p), 6) for p in probs] for name, probs in dist.probs().items()}


# ------------------------------------------------------------------------------------------------ the search run

class _Run:
    """State of one search process; ``run_search`` drives it."""

    def __init__(self, cfg: SearchConfig, procs: _Processes, out_dir: Path, progress: bool):
        self.cfg, self.procs, self.out_dir, self.progress = cfg, procs, out_dir, progress
        self.train, self.val, self.evaluation, self.num_classes = _build_streams(cfg, procs)
        self.steps_per_epoch = self.train.batches_per_pass
        _seed_all(cfg.seed)  # identical initial weights and φ on every rank
        self.parts = build_search(cfg, self.num_classes, procs.device,
                                  total_phi_steps=cfg.search_epochs * self.steps_per_epoch,
                                  output_dir=out_dir if procs.is_main else None, log=self._log)
        total = cfg.epochs * self.steps_per_epoch
        self.w_scheduler = CosineAnnealingLR(self.parts.w_optimizer, T_max=total, eta_min=cfg.w_lr_min)
        self.phi_scheduler = CosineAnnealingLR(self.parts.phi_optimizer,
                                               T_max=max(1, cfg.search_epochs * self.steps_per_epoch),
                                               eta_min=cfg.phi_lr_min)
        self.baseline = MovingAverageBaseline()
        _seed_all(cfg.seed + procs.rank)  # dropout etc. differ between ranks from here on
        self.generator = torch.Generator(device=procs.device).manual_seed(cfg.seed + procs.rank)
        self.grad_sync = _average_gradients(procs.world_size) if procs.distributed else None
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict] = [{'epoch': 0, 'probabilities': _probabilities(self.parts.dist)}]
        self.epoch_log: list[dict] = []
        self.running: dict[str, list[float]] = {}
        self.finished = False
        self.started = time.time()
        if procs.distributed:
            self._broadcast_state()

    # ---- bookkeeping
    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    @property
    def phi_steps(self) -> int:
        return max(0, self.global_step - self.cfg.warmup_epochs * self.steps_per_epoch)

    def _modules(self) -> list[nn.Module]:
        return [self.parts.supernet, self.parts.dist]

    def _broadcast_state(self) -> None:
        for module in self._modules():
            for tensor in list(module.parameters()) + list(module.buffers()):
                torch_dist.broadcast(tensor.data, 0)

    def _average_buffers(self) -> None:
        """Batch-norm running statistics saw different data on each rank; keep their mean everywhere."""
        for buffer in self.parts.supernet.buffers():
            if buffer.is_floating_point():
                torch_dist.all_reduce(buffer)
                buffer /= self.procs.world_size

    # ---- checkpoint
    def _per_rank_state(self) -> list[dict]:
        state = {'rng': _rng_state(self.generator), 'baseline': self.baseline.state_dict()}
        if not self.procs.distributed:
            return [state]
        gathered: list[Any] = [None] * self.procs.world_size
        torch_dist.all_gather_object(gathered, state)
        return gathered

    def save_checkpoint(self) -> None:
        per_rank = self._per_rank_state()
        if not self.procs.is_main:
            return
        p = self.parts
        _atomic_save({
            'format': 'unas_zoo.search/1',
            'config': config_to_dict(self.cfg),
            'world_size': self.procs.world_size,
            'epoch': self.epoch, 'step_in_epoch': self.step_in_epoch, 'finished': self.finished,
            'supernet': p.supernet.state_dict(), 'dist': p.dist.state_dict(),
            'w_optimizer': p.w_optimizer.state_dict(), 'phi_optimizer': p.phi_optimizer.state_dict(),
            'w_scheduler': self.w_scheduler.state_dict(), 'phi_scheduler': self.phi_scheduler.state_dict(),
            'per_rank': per_rank, 'history': self.history, 'epoch_log': self.epoch_log,
            'running': self.running, 'elapsed': time.time() - self.started,
        }, self.out_dir / CHECKPOINT)

    def load_checkpoint(self) -> None:
        path = self.out_dir / CHECKPOINT
        try:
            state = torch.load(path, map_location=self.procs.device, weights_only=True)
        except (OSError, RuntimeError, EOFError) as e:
            raise SearchConfigError(f'{path}: cannot load the checkpoint to resume ({e})') from None
        current = config_to_dict(self.cfg)
        differing = sorted(k for k in set(current) | set(state['config'])
                           if k not in RESUME_MUTABLE and state['config'].get(k) != current.get(k))
        if differing:
            raise SearchConfigError(f'{path}: the run was started with different values of {differing}; resume with '
                                    f'the run\'s own {CONFIG_FILE} (only {list(RESUME_MUTABLE)} may change)')
        if state['world_size'] != self.procs.world_size:
            raise SearchConfigError(f'{path}: written by {state["world_size"]} process(es); resume with the same '
                                    f'number (got {self.procs.world_size}) so that data shards and samples match')
        p = self.parts
        p.supernet.load_state_dict(state['supernet'])
        p.dist.load_state_dict(state['dist'])
        p.w_optimizer.load_state_dict(state['w_optimizer'])
        p.phi_optimizer.load_state_dict(state['phi_optimizer'])
        self.w_scheduler.load_state_dict(state['w_scheduler'])
        self.phi_scheduler.load_state_dict(state['phi_scheduler'])
        mine = state['per_rank'][self.procs.rank]
        self.baseline.load_state_dict(mine['baseline'])
        _set_rng_state(mine['rng'], self.generator)
        self.epoch, self.step_in_epoch, self.finished = state['epoch'], state['step_in_epoch'], state['finished']
        self.history, self.epoch_log, self.running = state['history'], state['epoch_log'], state['running']
        self.started = time.time() - state['elapsed']

    # ---- logging and outputs
    def _log(self, message: str) -> None:
        if self.progress and self.procs.is_main:
            print(message, flush=True)

    def _record(self, stats: dict[str, float]) -> None:
        for key, value in stats.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.running.setdefault(key, []).append(float(value))

    def _means(self) -> dict[str, float]:
        return {k: sum(v) / len(v) for k, v in self.running.items() if v}

    def _progress_line(self) -> str:
        m = self._means()
        parts = [f'epoch {self.epoch + 1}/{self.cfg.epochs}', f'step {self.step_in_epoch}/{self.steps_per_epoch}',
                 f'w loss {m.get("w_loss", float("nan")):.3f} acc {m.get("w_acc", float("nan")):.3f}']
        if 'phi_loss' in m:
            parts.append(f'φ loss {m["phi_loss"]:.3f}')
        if 'cost' in m:
            parts.append(f'cost {m["cost"]:.4g}')
        parts.append(f'H {float(self.parts.dist.entropy().detach()):.2f}')
        parts.append(f'{time.time() - self.started:.0f}s')
        return ' | '.join(parts)

    @torch.no_grad()
    def evaluate_argmax(self) -> tuple[float, float]:
        """Validation loss/accuracy of the current most likely architecture.

        Batch norm uses batch statistics (the running ones mix every sampled child) and its buffers are restored
        afterwards; everything else (dropout on the zero op) is in eval mode. No RNG is consumed.
        """
        supernet, dist = self.parts.supernet, self.parts.dist
        weights = dist.one_hot({k: torch.tensor(v, device=self.procs.device) for k, v in dist.argmax().items()})
        saved = {name: buffer.clone() for name, buffer in supernet.named_buffers()}
        supernet.eval()
        for module in supernet.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.procs.device)
        for images, targets in self.evaluation.one_pass(0):
            images, targets = images.to(self.procs.device), targets.to(self.procs.device)
            logits = supernet(images, weights)
            totals += torch.tensor([float(F.cross_entropy(logits, targets, reduction='sum')),
                                    float((logits.argmax(-1) == targets).sum()), targets.shape[0]],
                                   dtype=torch.float64, device=self.procs.device)
        for name, buffer in supernet.named_buffers():  # undo the running-statistics updates of this pass
            buffer.copy_(saved[name])
        supernet.train()
        if self.procs.distributed:
            torch_dist.all_reduce(totals)
        return float(totals[0] / totals[2]), float(totals[1] / totals[2])

    def _genotype(self, final: bool, metrics: dict[str, float]):
        cfg = self.cfg
        provenance = {
            'method': 'UNAS (Vahdat et al., CVPR 2020) search with unas_zoo',
            'dataset': cfg.dataset, 'seed': cfg.seed, 'estimator': cfg.estimator, 'objective': cfg.objective,
            'epoch': self.epoch, 'date': datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ'),
            'world_size': self.procs.world_size, 'torch': str(torch.__version__),
        }
        if final:
            provenance['config'] = config_to_dict(cfg)
            provenance['probabilities'] = {name: dict(zip(map(str, self.parts.dist.choices[name]), probs))
                                           for name, probs in _probabilities(self.parts.dist).items()}
        name = f'unas_search_{cfg.dataset}_{cfg.space}'
        return self.parts.dist.to_genotype(name=name, provenance=provenance, metrics=metrics)

    def write_epoch_outputs(self, record: dict) -> None:
        if not self.procs.is_main:
            return
        epochs_dir = self.out_dir / 'epochs'
        epochs_dir.mkdir(exist_ok=True)
        self._genotype(False, {'val_acc': record['val_acc'], 'val_loss': record['val_loss']}).to_yaml(
            epochs_dir / f'genotype_epoch{self.epoch:03d}.yaml')
        choices = {name: [str(c) for c in labels] for name, labels in self.parts.dist.choices.items()}
        atomic_write_text(self.out_dir / 'probabilities.json',
                          json.dumps({'choices': choices, 'history': self.history}, indent=1))
        rows = io.StringIO()
        writer = csv.writer(rows)
        writer.writerow(['epoch', 'variable', 'choice', 'probability'])
        for entry in self.history:
            for name, probs in entry['probabilities'].items():
                writer.writerows([entry['epoch'], name, label, p] for label, p in zip(choices[name], probs))
        atomic_write_text(self.out_dir / 'probabilities.csv', rows.getvalue())
        keys = list(dict.fromkeys(k for r in self.epoch_log for k in r))
        rows = io.StringIO()
        writer = csv.DictWriter(rows, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.epoch_log)
        atomic_write_text(self.out_dir / 'summary.csv', rows.getvalue())
        _plot_probabilities(choices, self.history, self.out_dir / 'probabilities.png')

    # ---- the loop
    def run(self) -> Path | None:
        cfg, procs, p = self.cfg, self.procs, self.parts
        val_batches = self.val.endless(self.phi_steps)
        while self.epoch < cfg.epochs:
            searching = self.epoch >= cfg.warmup_epochs
            p.supernet.train()
            for images, targets in self.train.one_pass(self.epoch, self.step_in_epoch):
                images, targets = images.to(procs.device), targets.to(procs.device)
                if searching:
                    x_val, y_val = next(val_batches)
                    stats = phi_step(p.supernet, p.dist, (images, targets),
                                     (x_val.to(procs.device), y_val.to(procs.device)), p.phi_optimizer,
                                     estimator=cfg.estimator, objective=p.objective,
                                     per_example=cfg.sampling == 'per_example', temperature=cfg.temperature,
                                     generator=self.generator, step=self.phi_steps, baseline=self.baseline,
                                     grad_sync=self.grad_sync)
                    self.phi_scheduler.step()
                    self._record(stats)
                stats = w_step(p.supernet, p.dist, images, targets, p.w_optimizer,
                               per_example=cfg.sampling == 'per_example', generator=self.generator,
                               grad_clip=cfg.grad_clip, mode='darts' if cfg.estimator == 'darts' else 'sample',
                               grad_sync=self.grad_sync)
                self.w_scheduler.step()
                self._record(stats)
                self.step_in_epoch += 1
                if self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                    self._log(self._progress_line())
                if self.step_in_epoch == self.steps_per_epoch:
                    break  # the end of an epoch has its own outputs and checkpoint
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._stop_requested():
                    self.save_checkpoint()
                    return None
            self._end_epoch(searching)
            if self.epoch < cfg.epochs and self._stop_requested():
                return None
        return self._finish()

    def _stop_requested(self) -> bool:
        stop = self.cfg.stop_after_steps is not None and self.global_step >= self.cfg.stop_after_steps
        if stop:
            self._log(f'stopped after {self.global_step} steps (stop_after_steps); resume with --resume --output '
                      f'{self.out_dir}')
        return stop

    def _end_epoch(self, searching: bool) -> None:
        if self.procs.distributed:
            self._average_buffers()
        val_loss, val_acc = self.evaluate_argmax()
        record = {'epoch': self.epoch + 1, 'phase': 'search' if searching else 'warmup'}
        record.update({k: round(v, 6) for k, v in self._means().items()})
        record.update(val_loss=round(val_loss, 6), val_acc=round(val_acc, 6),
                      entropy=round(float(self.parts.dist.entropy().detach()), 6),
                      w_lr=self.w_scheduler.get_last_lr()[0], phi_lr=self.phi_scheduler.get_last_lr()[0],
                      seconds=round(time.time() - self.started, 1))
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = {}
        self.epoch_log.append(record)
        self.history.append({'epoch': self.epoch, 'probabilities': _probabilities(self.parts.dist)})
        self._log(f'epoch {self.epoch}/{self.cfg.epochs} done ({record["phase"]}): argmax architecture val loss '
                  f'{val_loss:.3f} acc {val_acc:.3f} | entropy {record["entropy"]:.2f}')
        self.write_epoch_outputs(record)
        if self.parts.objective.cost is not None:
            self.parts.objective.cost.flush()
        if self.epoch == self.cfg.epochs:
            self.finished = True
        self.save_checkpoint()

    def _finish(self) -> Path:
        path = self.out_dir / FINAL_GENOTYPE
        last = self.epoch_log[-1] if self.epoch_log else {}
        if self.procs.is_main:
            metrics = {'val_acc': last.get('val_acc'), 'val_loss': last.get('val_loss'),
                       'search_seconds': round(time.time() - self.started, 1)}
            cost = self.parts.objective.cost
            if cost is not None:
                metrics[f'{cost.name}_{cost.unit}'] = cost.measure(self.parts.dist.to_genotype())
            genotype = self._genotype(True, {k: v for k, v in metrics.items() if v is not None})
            genotype.to_yaml(path)
            if cost is not None:
                summary = cost.summary(genotype)
                atomic_write_text(self.out_dir / 'cost_summary.txt', summary + '\n')
                self._log(summary)
        if self.cfg.save_rank_state:
            _atomic_save({'dist': self.parts.dist.state_dict(), 'supernet': self.parts.supernet.state_dict()},
                         self.out_dir / f'rank{self.procs.rank}_final.pt')
        if self.procs.distributed:
            self._check_ranks_agree()
        return path

    def _check_ranks_agree(self) -> None:
        """All ranks must end with identical φ and w; a mismatch means a gradient was not averaged."""
        mine = torch.cat([t.detach().reshape(-1).double() for m in self._modules() for t in m.parameters()])
        reference = mine.clone()
        torch_dist.broadcast(reference, 0)
        mismatch = torch.tensor([0.0 if torch.equal(mine, reference) else 1.0], device=mine.device)
        torch_dist.all_reduce(mismatch)
        if mismatch.item():
            raise RuntimeError(f'{int(mismatch.item())} rank(s) ended with weights or φ different from rank 0')


def _plot_probabilities(choices: dict[str, list[str]], history: list[dict], path: Path) -> None:
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


# ------------------------------------------------------------------------------------------------------- driver

def default_output(cfg: SearchConfig) -> Path:
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S')
    return Path('output') / 'search' / f'{stamp}-{cfg.dataset}-{cfg.space}'


def _prepare_output(cfg: SearchConfig, resume: bool) -> Path:
    """Refuse to start over a run's outputs; resuming needs that run's checkpoint."""
    if cfg.output is None:
        if resume:
            raise SearchConfigError('output: resuming needs the output folder of the run to continue (--output)')
        return default_output(cfg)
    out = Path(cfg.output)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise SearchConfigError(f'output: {out} holds no {CHECKPOINT} to resume from')
    elif (out / CHECKPOINT).exists() or (out / FINAL_GENOTYPE).exists():
        raise SearchConfigError(f'output: {out} already holds a search ({CHECKPOINT} / {FINAL_GENOTYPE}); pass '
                                f'--resume to continue it or choose another --output')
    return out


def run_search(config: SearchConfig, *, resume: bool = False, progress: bool = True) -> Path | None:
    """Run (or resume) a search; returns the final genotype YAML, or None when ``stop_after_steps`` stopped it.

    Every input is checked (config, data, cost) before anything is written; under torchrun every rank calls this.
    """
    procs = _init_processes(config.device)
    out_dir = _prepare_output(config, resume)
    if procs.distributed:  # every rank must agree on the default folder's time stamp
        holder = [str(out_dir)]
        torch_dist.broadcast_object_list(holder, 0)
        out_dir = Path(holder[0])
    run = _Run(config, procs, out_dir, progress)
    if resume:
        run.load_checkpoint()
        if run.finished:
            run._log(f'{out_dir} holds a finished search; nothing to resume')
            return run._finish() if not (out_dir / FINAL_GENOTYPE).is_file() else out_dir / FINAL_GENOTYPE
        run._log(f'resuming {out_dir} at epoch {run.epoch + 1}, step {run.step_in_epoch}')
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False))
        run._log(f'search: {config.space} space on {config.dataset}, {config.estimator} estimator, objective '
                 f'{config.objective}, {run.steps_per_epoch} steps per epoch x {config.epochs} epochs '
                 f'({config.warmup_epochs} warm-up), {procs.world_size} process(es) on {procs.device}; '
                 f'outputs in {out_dir}')
    if procs.distributed:
        torch_dist.barrier()
    return run.run()
