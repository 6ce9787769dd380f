"""Checkpoints and exact resume: what a run stores, the checks that a resume continues the same search, and the
output-folder rules (never start over a run's outputs; resuming needs that run's checkpoint).

A checkpoint stores the weights, φ, both optimizers and schedulers, the estimator state of every rank (REINFORCE
baseline, REBAR control with its optimizer, the cost term's memo and refitted surrogate), every RNG state of every
rank and the position (epoch, step in epoch), so a run stopped mid-epoch and resumed ends bit-for-bit where an
uninterrupted run ends (CPU). The per-process batch is fixed by the config and the world size, both checked on
resume. It loads with ``torch.load(weights_only=True)``;
a file that is not a complete checkpoint of this format, or whose position or state does not fit the run, is refused
with one line saying what is wrong.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as torch_dist

from unas_zoo._io import atomic_path
from .config import SearchConfig, SearchConfigError, config_to_dict
from .outputs import FINAL_GENOTYPE, default_output
from .processes import rng_state, set_rng_state

if TYPE_CHECKING:
    from .loop import _Run

__all__ = ['CHECKPOINT', 'CONFIG_FILE', 'RESUME_MUTABLE', 'atomic_save', 'prepare_output', 'save_checkpoint',
           'load_checkpoint']

CHECKPOINT = 'checkpoint.pt'
CONFIG_FILE = 'config.yaml'
FORMAT = 'unas_zoo.search/1'
_ENTRIES = ('config', 'world_size', 'epoch', 'step_in_epoch', 'finished', 'supernet', 'dist', 'w_optimizer',
            'phi_optimizer', 'w_scheduler', 'phi_scheduler', 'per_rank', 'history', 'epoch_log', 'running', 'elapsed')
# Keys that may differ when a run is resumed: they change where or how fast it runs, not what it computes.
RESUME_MUTABLE = ('data_dir', 'download', 'num_workers', 'device', 'threads', 'output', 'log_every',
                  'checkpoint_every', 'stop_after_steps', 'save_rank_state')


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through a Python file, so that a full disk surfaces as the OSError behind torch's RuntimeError."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        torch.save(obj, f)


def prepare_output(cfg: SearchConfig, resume: bool) -> Path:
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


def _per_rank_state(run: _Run) -> list[dict]:
    cost = run.parts.objective.cost
    state = {'rng': rng_state(run.generator), 'baseline': run.baseline.state_dict(),
             'control': None if run.control is None else run.control.state_dict(),
             'cost': None if cost is None else cost.state_dict()}
    if not run.procs.distributed:
        return [state]
    gathered: list[Any] = [None] * run.procs.world_size
    torch_dist.all_gather_object(gathered, state)
    return gathered


def save_checkpoint(run: _Run) -> None:
    """Every rank contributes its RNG and estimator state; rank 0 writes the file."""
    per_rank = _per_rank_state(run)
    if not run.procs.is_main:
        return
    p = run.parts
    atomic_save({
        'format': FORMAT,
        'config': config_to_dict(run.cfg),
        'world_size': run.procs.world_size,
        'epoch': run.epoch, 'step_in_epoch': run.step_in_epoch, 'finished': run.finished,
        'supernet': p.supernet.state_dict(), 'dist': p.dist.state_dict(),
        'w_optimizer': p.w_optimizer.state_dict(), 'phi_optimizer': p.phi_optimizer.state_dict(),
        'w_scheduler': run.w_scheduler.state_dict(), 'phi_scheduler': run.phi_scheduler.state_dict(),
        'per_rank': per_rank, 'history': run.history, 'epoch_log': run.epoch_log,
        'running': run.running, 'elapsed': time.time() - run.started,
    }, run.out_dir / CHECKPOINT)


def _read(path: Path, device: torch.device) -> dict:
    """The checkpoint's entries, refusing files that are not a complete checkpoint of this format."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- garbage, truncated, pickled objects: all one line
        raise SearchConfigError(f'{path}: cannot load the checkpoint to resume ({type(e).__name__}: '
                                f'{" ".join(str(e).split())[:200]})') from None
    found = state.get('format') if isinstance(state, dict) else type(state).__name__
    if found != FORMAT:
        raise SearchConfigError(f'{path}: not a search checkpoint of this version (format {found!r}, expected '
                                f'{FORMAT!r})')
    missing = [k for k in _ENTRIES if k not in state]
    if missing:
        raise SearchConfigError(f'{path}: incomplete checkpoint, missing {missing}')
    if not isinstance(state['config'], dict):
        raise SearchConfigError(f'{path}: config is {type(state["config"]).__name__}, expected a mapping')
    return state


def _check_position(path: Path, state: dict, cfg: SearchConfig, steps_per_epoch: int) -> None:
    epoch, step, finished = state['epoch'], state['step_in_epoch'], state['finished']
    if not (isinstance(epoch, int) and 0 <= epoch <= cfg.epochs and isinstance(step, int)
            and 0 <= step < steps_per_epoch and finished == (epoch == cfg.epochs)):
        raise SearchConfigError(f'{path}: position epoch {epoch!r}, step {step!r}, finished {finished!r} does not '
                                f'fit a run of {cfg.epochs} epochs x {steps_per_epoch} steps')


def _check_same_run(path: Path, state: dict, cfg: SearchConfig, world_size: int) -> None:
    current = config_to_dict(cfg)
    differing = sorted(k for k in set(current) | set(state['config'])
                       if k not in RESUME_MUTABLE and state['config'].get(k) != current.get(k))
    if differing:
        raise SearchConfigError(f'{path}: the run was started with different values of {differing}; resume with '
                                f'the run\'s own {CONFIG_FILE} (only {list(RESUME_MUTABLE)} may change)')
    if state['world_size'] != world_size:
        raise SearchConfigError(f'{path}: written by {state["world_size"]} process(es); resume with the same '
                                f'number (got {world_size}) so that data shards and samples match')


def load_checkpoint(run: _Run) -> None:
    """Restore ``run`` from its output folder's checkpoint, refusing one written by a different search."""
    path = run.out_dir / CHECKPOINT
    state = _read(path, run.procs.device)
    _check_same_run(path, state, run.cfg, run.procs.world_size)
    _check_position(path, state, run.cfg, run.steps_per_epoch)
    try:
        _restore(run, state)
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise SearchConfigError(f'{path}: its state does not fit this search ({type(e).__name__}: '
                                f'{" ".join(str(e).split())[:300]})') from None


def _restore(run: _Run, state: dict) -> None:
    p = run.parts
    p.supernet.load_state_dict(state['supernet'])
    p.dist.load_state_dict(state['dist'])
    p.w_optimizer.load_state_dict(state['w_optimizer'])
    p.phi_optimizer.load_state_dict(state['phi_optimizer'])
    run.w_scheduler.load_state_dict(state['w_scheduler'])
    run.phi_scheduler.load_state_dict(state['phi_scheduler'])
    mine = state['per_rank'][run.procs.rank]
    run.baseline.load_state_dict(mine['baseline'])
    if run.control is not None:
        run.control.load_state_dict(mine['control'])
    if p.objective.cost is not None:
        p.objective.cost.load_state_dict(mine['cost'])
    set_rng_state(mine['rng'], run.generator)
    run.epoch, run.step_in_epoch, run.finished = state['epoch'], state['step_in_epoch'], state['finished']
    run.history, run.epoch_log, run.running = state['history'], state['epoch_log'], state['running']
    run.started = time.time() - state['elapsed']
