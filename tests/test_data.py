"""Datasets: embedded digits, torchvision CIFAR folders, ImageFolder trees, the deterministic train/val split.

The CIFAR fixture is a tiny folder in torchvision's own pickle format. torchvision verifies the md5 of every file
(``torchvision.datasets.cifar.check_integrity``) against the real CIFAR archives, which a fixture cannot match; the
tests that load it replace that function with an existence check (monkeypatch), and a separate test shows that without
the patch the md5 check is still active and reported as a DatasetError.
"""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from unas_zoo.data import DATASETS, DatasetError, create_dataset, dataset_info, split_train_val

CIFAR10_BATCHES = ['data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch']


def write_fake_cifar10(root, images_per_batch=3):
    """A cifar-10-batches-py folder with a few random images per batch; returns {batch name: (data, labels)}."""
    folder = root / 'cifar-10-batches-py'
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    content = {}
    for i, name in enumerate(CIFAR10_BATCHES):
        data = rng.integers(0, 256, size=(images_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(images_per_batch)]
        with open(folder / name, 'wb') as f:
            pickle.dump({'data': data, 'labels': labels}, f)
        content[name] = (data, labels)
    with open(folder / 'batches.meta', 'wb') as f:
        pickle.dump({'label_names': [f'class{k}' for k in range(10)]}, f)
    return content


@pytest.fixture
def skip_md5(monkeypatch):
    monkeypatch.setattr('torchvision.datasets.cifar.check_integrity', lambda fpath, md5=None: os.path.isfile(fpath))


def write_image_folder(root, splits=('train', 'val'), classes=('cat', 'dog'), per_class=2):
    for split in splits:
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                Image.new('RGB', (12, 10), color=(40 * c, 10 * k, 200)).save(root / split / name / f'{k}.png')


def test_digits_split_is_deterministic_disjoint_and_complete():
    train, test = create_dataset('digits', split='train'), create_dataset('digits', split='test')
    assert len(train) + len(test) == 1797
    assert not set(train.indices) & set(test.indices)
    assert list(create_dataset('digits', split='test').indices) == list(test.indices)
    assert list(create_dataset('digits', split='test', seed=1).indices) != list(test.indices)
    assert create_dataset('digits', split='val').indices.tolist() == test.indices.tolist()
    img, label = train[0]
    assert isinstance(img, Image.Image) and img.mode == 'RGB' and img.size == (32, 32)
    assert sorted(set(train.targets)) == list(range(10))


def test_digits_images_are_real_digits_at_the_requested_size():
    from sklearn.datasets import load_digits
    ds = create_dataset('digits', split='test', image_size=8)
    raw = load_digits()
    row = int(ds.indices[5])
    img, label = ds[5]
    assert img.size == (8, 8) and label == raw.target[row]
    # At the native size the bilinear resize is the identity: pixels are the 0..16 values scaled to 0..255.
    expected = np.round(raw.images[row] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(img)[..., 0], expected)


def test_transform_applies():
    ds = create_dataset('digits', split='test', transform=lambda im: torch.tensor(np.asarray(im)).sum())
    value, _ = ds[0]
    assert value.ndim == 0


def test_split_train_val_is_deterministic_and_partitions():
    ds = create_dataset('digits', split='train')
    train, val = split_train_val(ds, 0.1, seed=3)
    assert len(val) == round(0.1 * len(ds)) and len(train) + len(val) == len(ds)
    assert set(train.indices).isdisjoint(val.indices)
    again_train, again_val = split_train_val(ds, 0.1, seed=3)
    assert again_val.indices == val.indices and again_train.indices == train.indices
    assert split_train_val(ds, 0.1, seed=4)[1].indices != val.indices
    with pytest.raises(DatasetError, match='val_fraction'):
        split_train_val(ds, 1.5)


def test_cifar10_folder_loads(tmp_path, skip_md5):
    content = write_fake_cifar10(tmp_path)
    train = create_dataset('cifar10', tmp_path, split='train')
    test = create_dataset('cifar10', tmp_path, split='test')
    assert len(train) == 15 and len(test) == 3
    data, labels = content['test_batch']
    img, label = test[1]
    assert img.mode == 'RGB' and img.size == (32, 32) and label == labels[1]
    np.testing.assert_array_equal(np.asarray(img), data[1].reshape(3, 32, 32).transpose(1, 2, 0))
    assert train.classes[0] == 'class0'


def test_cifar_checksum_still_verified(tmp_path):
    write_fake_cifar10(tmp_path)
    with pytest.raises(DatasetError, match='corrupted'):
        create_dataset('cifar10', tmp_path)


def test_cifar_missing_folder_names_path_and_download(tmp_path):
    with pytest.raises(DatasetError) as info:
        create_dataset('cifar100', tmp_path / 'nowhere')
    message = str(info.value)
    assert str(tmp_path / 'nowhere' / 'cifar-100-python') in message and '--download' in message


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    train = create_dataset('imagefolder', tmp_path, split='train')
    assert len(train) == 4 and train.classes == ['cat', 'dog']
    img, label = train[3]
    assert img.mode == 'RGB' and label == 1
    assert len(create_dataset('imagefolder', tmp_path, split='test')) == 4  # falls back to val/


def test_image_folder_missing_split_lists_expected(tmp_path):
    write_image_folder(tmp_path, splits=('train',))
    with pytest.raises(DatasetError) as info:
        create_dataset('imagefolder', tmp_path, split='val')
    assert str(tmp_path / 'val') in str(info.value) and 'validation' in str(info.value)
    with pytest.raises(DatasetError, match='data folder'):
        create_dataset('imagefolder', None)


def test_unknown_name_and_split_list_allowed_values():
    with pytest.raises(DatasetError) as info:
        create_dataset('mnist')
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(DatasetError, match='train, val, test'):
        create_dataset('digits', split='holdout')
    with pytest.raises(DatasetError, match='cifar10'):
        dataset_info('svhn')


def test_dataset_info():
    assert dataset_info('cifar100')['num_classes'] == 100
    digits = dataset_info('digits')
    assert digits['num_classes'] == 10 and digits['image_size'] == 32
    assert all(0.0 < m < 1.0 for m in digits['mean']) and all(0.0 < s < 1.0 for s in digits['std'])
