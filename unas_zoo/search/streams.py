"""Deterministic data streams: the train split for w and φ, the validation split for φ and for evaluation.

Data order is a pure function of (seed, epoch, position) through ``DistributedSampler`` + explicit batch lists, and
augmentation is seeded per (seed, epoch, example), so a resumed run sees exactly the batches an uninterrupted one does.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from unas_zoo.data import create_dataset, dataset_info, split_train_val
from .config import SearchConfig, SearchConfigError, per_process_batch
from .processes import Processes

__all__ = ['SeededView', 'Stream', 'build_streams', 'search_transforms']

class SeededView(Dataset):
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


def search_transforms(cfg: SearchConfig, image_size: int, mean, std) -> tuple[Callable, Callable]:
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
class Stream:
    """Deterministic batches of one split for one rank: pass ``p`` is a pure function of (seed, p)."""
    view: SeededView
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
        # Its own generator: iter(DataLoader) would otherwise draw its base seed from the global RNG, at points that
        # differ between an uninterrupted and a resumed run, shifting every later dropout mask.
        generator = torch.Generator().manual_seed((self.view.seed * 1_000_003 + pass_index) % 2 ** 63)
        return iter(DataLoader(self.view, batch_sampler=batches, generator=generator, **self.loader_kwargs))

    def endless(self, start_batch: int) -> Iterator:
        """Batches from position ``start_batch`` of the concatenated passes, forever."""
        pass_index, skip = divmod(start_batch, self.batches_per_pass)
        while True:
            yield from self.one_pass(pass_index, skip)
            pass_index, skip = pass_index + 1, 0


def build_streams(cfg: SearchConfig, procs: Processes) -> tuple[Stream, Stream, Stream, int]:
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
    search_tf, eval_tf = search_transforms(cfg, image_size, info['mean'], info['std'])
    kwargs = dict(num_workers=cfg.num_workers, pin_memory=procs.device.type == 'cuda')
    batch_size = per_process_batch(cfg, procs.world_size)

    def stream(subset, transform, seed_offset: int, shuffle: bool, random_transform: bool) -> Stream:
        sampler = DistributedSampler(subset, num_replicas=procs.world_size, rank=procs.rank, shuffle=shuffle,
                                     seed=cfg.seed + seed_offset)
        return Stream(SeededView(subset, transform, cfg.seed + seed_offset, random_transform), sampler,
                      batch_size, kwargs)

    train = stream(train_set, search_tf, 0, True, cfg.augment)
    val = stream(val_set, search_tf, 1, True, cfg.augment)
    evaluation = stream(val_set, eval_tf, 2, False, False)
    for name, s, n in (('train', train, len(train_set)), ('validation', val, len(val_set))):
        if s.batches_per_pass < 1:
            raise SearchConfigError(
                f'batch_size: {batch_size} per process is larger than the {name} split of one process '
                f'({n} examples over {procs.world_size} process(es)); lower the batch size or val_fraction')
    return train, val, evaluation, num_classes
