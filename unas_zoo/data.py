"""Datasets for search and training: embedded digits, torchvision CIFAR folders and ImageFolder trees.

Every dataset yields ``(PIL RGB image, int label)`` so that timm / torchvision transforms apply unchanged.
Bad input raises :class:`DatasetError` naming the path or name and the allowed values.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset, Subset

# Per-channel statistics of the CIFAR training sets (the models' pretrained cfgs use them too).
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)

__all__ = ['DATASETS', 'SPLITS', 'DatasetError', 'DigitsDataset', 'create_dataset', 'split_train_val', 'dataset_info']

DATASETS = ('digits', 'cifar10', 'cifar100', 'imagefolder')
SPLITS = ('train', 'val', 'test')
# Folder names tried for each split of an ImageFolder tree, in order.
_IMAGEFOLDER_SPLIT_DIRS = {
    'train': ('train',),
    'val': ('val', 'validation', 'test'),
    'test': ('test', 'val', 'validation'),
}
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SIZE = 32
_CIFAR_FOLDERS = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python'}


class DatasetError(ValueError):
    """A dataset name, split or folder is wrong; the message says which and what is allowed."""


class DigitsDataset(Dataset):
    """scikit-learn's bundled 8x8 handwritten digits (real data, no download), upscaled to RGB images.

    The 1797 images are split 80/20 into train/test by a seeded permutation, so every run sees the same split.
    """

    classes = tuple(str(d) for d in range(10))

    def __init__(self, split: str = 'train', image_size: int = _DIGITS_SIZE, seed: int = 0,
                 transform: Callable | None = None):
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no network access

        digits = load_digits()
        order = np.random.default_rng(seed).permutation(len(digits.target))
        num_test = int(round(_DIGITS_TEST_FRACTION * len(order)))
        self.indices = np.sort(order[num_test:] if split == 'train' else order[:num_test])  # rows of load_digits
        gray = (digits.images[self.indices] * (255.0 / 16.0)).round().astype(np.uint8)  # pixel values 0..16 -> 0..255
        self.images = [
            Image.fromarray(img).resize((image_size, image_size), Image.BILINEAR).convert('RGB')
            for img in gray
        ]
        self.targets = [int(t) for t in digits.target[self.indices]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f'Unknown split {split!r}; allowed: {", ".join(SPLITS)}.')


def _require_root(name: str, root: str | os.PathLike | None) -> Path:
    if root is None:
        raise DatasetError(f'Dataset {name!r} needs a data folder (--data-dir).')
    return Path(root).expanduser()


def _create_cifar(name: str, root: Path, split: str, download: bool, transform) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if name == 'cifar10' else CIFAR100
    folder = root / _CIFAR_FOLDERS[name]
    if not download and not folder.is_dir():
        raise DatasetError(
            f'{name}: no folder {folder} (torchvision\'s format). Point --data-dir at the folder that contains '
            f'{_CIFAR_FOLDERS[name]}, or add --download to fetch it there.')
    try:
        return cls(str(root), train=split == 'train', transform=transform, download=download)
    except RuntimeError as e:  # torchvision: files missing or their md5 does not match
        raise DatasetError(f'{name}: the files under {folder} are incomplete or corrupted ({e}); '
                           f'delete the folder and add --download to fetch it again.') from e


def _create_imagefolder(root: Path, split: str, transform) -> Dataset:
    from torchvision.datasets import ImageFolder

    candidates = [root / d for d in _IMAGEFOLDER_SPLIT_DIRS[split]]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise DatasetError(
            f'imagefolder: no {split} folder under {root}; expected one of '
            f'{", ".join(str(c) for c in candidates)} holding one sub-folder of images per class.')
    try:
        return ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as e:  # empty class folders or no images at all
        raise DatasetError(f'imagefolder: {folder} holds no usable class folders of images ({e}).') from e


def create_dataset(
        name: str,
        root: str | os.PathLike | None = None,
        split: str = 'train',
        download: bool = False,
        transform: Callable | None = None,
        image_size: int | None = None,
        seed: int = 0,
) -> Dataset:
    """Build a dataset of ``(PIL RGB image, int label)``.

    Args:
        name: one of ``DATASETS``.
        root: data folder (CIFAR: the folder holding torchvision's ``cifar-10-batches-py`` / ``cifar-100-python``;
            imagefolder: the folder holding ``train/`` and ``val/`` or ``test/``); unused for digits.
        split: ``train``, ``val`` or ``test``; for digits and CIFAR ``val`` and ``test`` both mean the test set
            (search takes its validation data from ``split_train_val`` of the train set).
        download: CIFAR only; fetch the archive when the folder is missing (never implicitly).
        transform: applied to each PIL image.
        image_size: digits only, the size they are rendered at (default 32); other datasets keep their stored size
            and the transform resizes.
        seed: digits only, the seed of the train/test split.
    """
    name = name.lower()
    if name not in DATASETS:
        raise DatasetError(f'Unknown dataset {name!r}; allowed: {", ".join(DATASETS)}.')
    _check_split(split)
    if name == 'digits':
        return DigitsDataset(split, image_size=image_size or _DIGITS_SIZE, seed=seed, transform=transform)
    root = _require_root(name, root)
    if name in _CIFAR_FOLDERS:
        return _create_cifar(name, root, split, download, transform)
    if download:
        raise DatasetError('--download only applies to cifar10 and cifar100; imagefolder reads an existing tree.')
    return _create_imagefolder(root, split, transform)


def split_train_val(dataset: Dataset, val_fraction: float = 0.1, seed: int = 0) -> tuple[Subset, Subset]:
    """Deterministic random split of ``dataset`` into (train, val) subsets; the same seed gives the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f'val_fraction must lie strictly between 0 and 1, got {val_fraction}.')
    num_val = int(round(val_fraction * len(dataset)))
    if num_val == 0 or num_val == len(dataset):
        raise DatasetError(f'A dataset of {len(dataset)} examples cannot be split with val_fraction={val_fraction}.')
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, order[num_val:]), Subset(dataset, order[:num_val])


@functools.lru_cache(maxsize=None)
def _digits_mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    train = DigitsDataset('train')
    pixels = np.stack([np.asarray(img, dtype=np.float64) / 255.0 for img in train.images])
    mean, std = pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


def dataset_info(name: str) -> dict:
    """num_classes (None for imagefolder: count the class folders), per-channel mean/std and image size."""
    name = name.lower()
    if name == 'digits':
        mean, std = _digits_mean_std()
        return dict(num_classes=10, mean=mean, std=std, image_size=_DIGITS_SIZE)
    if name == 'cifar10':
        return dict(num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD, image_size=32)
    if name == 'cifar100':
        return dict(num_classes=100, mean=CIFAR100_MEAN, std=CIFAR100_STD, image_size=32)
    if name == 'imagefolder':
        return dict(num_classes=None, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, image_size=224)
    raise DatasetError(f'Unknown dataset {name!r}; allowed: {", ".join(DATASETS)}.')
