"""Processes and randomness: the torchrun process group, gradient and buffer averaging across ranks, seeding, and
every RNG state as checkpoint-safe tensors.

Each rank draws its own architectures, so the set of parameters that received a gradient differs between ranks;
instead of DDP's wrapper (whose ``find_unused_parameters`` would also fire on the φ step's relaxed passes) the loop
all-reduces the gradients of w and φ after each backward, averaging over ranks, and keeps a parameter's gradient
``None`` only when no rank used it — exactly what one process does, so Adam treats unused ops the same at any world
size.
"""
from __future__ import annotations

import dataclasses
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import Tensor, nn

from .config import SearchConfigError
from .steps import GradSync

__all__ = ['Processes', 'init_processes', 'average_gradients', 'broadcast_modules', 'average_buffers',
           'check_ranks_agree', 'seed_all', 'rng_state', 'set_rng_state']

@dataclasses.dataclass
class Processes:
    """Where this process runs and which rank of how many it is."""
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


def init_processes(device_name: str) -> Processes:
    """Join the process group torchrun describes (env vars); a plain ``python search.py`` is world size 1."""
    device = _resolve_device(device_name)
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if world_size <= 1:
        return Processes(device=device)
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if device.type == 'cuda':
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
    return Processes(rank=torch_dist.get_rank(), world_size=torch_dist.get_world_size(), device=device)


def average_gradients(world_size: int) -> GradSync:
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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    np_state = state['numpy']
    np.random.set_state(('MT19937', np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['cached_gaussian']))
    torch.set_rng_state(state['torch'])
    if state['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state['cuda'])
    generator.set_state(state['arch_generator'])


def broadcast_modules(modules: list[nn.Module]) -> None:
    """Start every rank from rank 0's parameters and buffers."""
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            torch_dist.broadcast(tensor.data, 0)


def average_buffers(module: nn.Module, world_size: int) -> None:
    """Batch-norm running statistics saw different data on each rank; keep their mean everywhere."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            torch_dist.all_reduce(buffer)
            buffer /= world_size


def check_ranks_agree(modules: list[nn.Module]) -> None:
    """All ranks must end with identical parameters; a mismatch means a gradient was not averaged."""
    mine = torch.cat([t.detach().reshape(-1).double() for m in modules for t in m.parameters()])
    reference = mine.clone()
    torch_dist.broadcast(reference, 0)
    mismatch = torch.tensor([0.0 if torch.equal(mine, reference) else 1.0], device=mine.device)
    torch_dist.all_reduce(mismatch)
    if mismatch.item():
        raise RuntimeError(f'{int(mismatch.item())} rank(s) ended with weights or φ different from rank 0')
