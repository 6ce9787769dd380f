"""Shared pytest set-up."""
import errno
import os

import pytest
import torch

# The suite runs small CPU models on a couple of shared cores: one intra-op thread avoids OpenMP oversubscription,
# which otherwise makes each forward pass many times slower when other processes compete for the cores.
torch.set_num_threads(1)


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    """A path under which creating folders fails as on a read-only file system (EROFS)."""
    read_only = tmp_path / 'ro'
    mkdir = os.mkdir

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(read_only)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, 'mkdir', refuse)
    return read_only
