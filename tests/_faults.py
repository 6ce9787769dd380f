"""Faults the reliability tests inject, written once."""
import errno
import os


def disk_full():
    """What torch.save into a Python file raises on a full disk (seen on a 4 MB tmpfs): torch's RuntimeError,
    raised while handling the OSError of the write."""
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598')
