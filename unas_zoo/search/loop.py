"""The UNAS search loop: warm-up, alternating φ and w steps, logging, checkpoints, resume and many processes.

One iteration (after ``warmup_epochs`` of w-only training) is a **φ step** then a **w step** (``steps.py``).
Schedules are ``CosineAnnealingLR`` stepped once per step (w: over every step of the run, φ: over the φ steps), from
``*_lr`` down to ``*_lr_min``.

Where each concern lives: the two steps in ``steps.py``; data order and augmentation in ``streams.py``; the process
group, gradient averaging and RNG states in ``processes.py``; checkpoints and resume checks in ``checkpoint.py``;
epoch outputs, plots and provenance in ``outputs.py``. This module builds the search (``build_search``) and drives it
(``run_search``). Every random draw is seeded: architecture samples come from a dedicated ``torch.Generator``
(seed + rank). Under ``torchrun`` rank 0 writes every output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as torch_dist
import yaml
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from unas_zoo._finite import check_finite
from unas_zoo._io import OutputLockedError, atomic_write_text, output_lock
from unas_zoo.data import dataset_info
from .checkpoint import (
    CHECKPOINT, CONFIG_FILE, RESUME_MUTABLE, atomic_save, load_checkpoint, prepare_output, save_checkpoint)
from .config import SearchConfig, config_to_dict, mbconv_backbone, per_process_batch
from .distributions import ArchDistribution, DartsCellDistribution, MBConvDistribution
from .estimators import MovingAverageBaseline, RebarControl
from .objectives import Objective
from .outputs import FINAL_GENOTYPE, evaluate_argmax, probabilities, search_genotype, write_epoch_outputs
from .processes import (
    Processes, average_buffers, average_gradients, broadcast_modules, check_ranks_agree, init_processes, seed_all)
from .steps import phi_step, w_step
from .streams import build_streams

__all__ = ['w_step', 'phi_step', 'run_search', 'build_search', 'SearchParts', 'CHECKPOINT', 'FINAL_GENOTYPE',
           'CONFIG_FILE', 'RESUME_MUTABLE']


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
                                 ops=tuple(cfg.ops), stem=cfg.stem, subset_bn=cfg.subset_bn)
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
    objective = Objective(cfg.objective, cfg.gen_lambda, cfg.arch_lambda, cost, gen_gap=cfg.gen_gap)
    w_optimizer = torch.optim.Adam(supernet.parameters(), lr=cfg.w_lr, weight_decay=cfg.w_weight_decay)
    phi_optimizer = torch.optim.Adam(dist.parameters(), lr=cfg.phi_lr, weight_decay=cfg.phi_weight_decay)
    return SearchParts(supernet, dist, objective, w_optimizer, phi_optimizer)


def build_rebar_control(cfg: SearchConfig) -> RebarControl | None:
    """REBAR/RELAX's options from the config; None (the paper's estimator: η = 1, fixed τ) when none is asked for."""
    if cfg.estimator not in ('rebar', 'relax') or (cfg.rebar_baseline, cfg.rebar_adapt) == ('none', 'none'):
        return None
    return RebarControl(loo_baseline=cfg.rebar_baseline == 'loo', adapt_eta=cfg.rebar_adapt != 'none',
                        adapt_temperature=cfg.rebar_adapt == 'eta_temperature', temperature=cfg.temperature)


def _build_cost(cfg: SearchConfig, dist: ArchDistribution, num_classes: int, device: torch.device,
                total_phi_steps: int, output_dir: Path | None, log: Callable[[str], None] | None):
    """The config's ``cost:`` mapping goes verbatim to ``costs.build_cost`` (which validates it)."""
    from .costs import build_cost

    size = cfg.image_size or dataset_info(cfg.dataset)['image_size']
    return build_cost(dict(cfg.cost), dist=dist, device=device, input_size=(3, size, size), num_classes=num_classes,
                      total_steps=total_phi_steps, output_dir=output_dir, source='config', log=log)


# ------------------------------------------------------------------------------------------------ the search run

class _Run:
    """State of one search process; ``run_search`` drives it."""

    def __init__(self, cfg: SearchConfig, procs: Processes, out_dir: Path, progress: bool):
        self.cfg, self.procs, self.out_dir, self.progress = cfg, procs, out_dir, progress
        self.train, self.val, self.evaluation, self.num_classes = build_streams(cfg, procs)
        self.steps_per_epoch = self.train.batches_per_pass
        seed_all(cfg.seed)  # identical initial weights and φ on every rank
        self.parts = build_search(cfg, self.num_classes, procs.device,
                                  total_phi_steps=cfg.search_epochs * self.steps_per_epoch,
                                  output_dir=out_dir if procs.is_main else None, log=self._log)
        total = cfg.epochs * self.steps_per_epoch
        self.w_scheduler = CosineAnnealingLR(self.parts.w_optimizer, T_max=total, eta_min=cfg.w_lr_min)
        self.phi_scheduler = CosineAnnealingLR(self.parts.phi_optimizer,
                                               T_max=max(1, cfg.search_epochs * self.steps_per_epoch),
                                               eta_min=cfg.phi_lr_min)
        self.baseline = MovingAverageBaseline()
        self.control = build_rebar_control(cfg)
        if self.control is not None:
            self.control.to(procs.device)
        seed_all(cfg.seed + procs.rank)  # dropout etc. differ between ranks from here on
        self.generator = torch.Generator(device=procs.device).manual_seed(cfg.seed + procs.rank)
        self.grad_sync = average_gradients(procs.world_size) if procs.distributed else None
        self.epoch = 0
        self.step_in_epoch = 0
        self.history: list[dict] = [{'epoch': 0, 'probabilities': probabilities(self.parts.dist)}]
        self.epoch_log: list[dict] = []
        self.running: dict[str, list[float]] = {}
        self.finished = False
        self.started = time.time()
        if procs.distributed:
            broadcast_modules(self._modules())

    # ---- bookkeeping
    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step_in_epoch

    @property
    def phi_steps(self) -> int:
        return max(0, self.global_step - self.cfg.warmup_epochs * self.steps_per_epoch)

    def _modules(self) -> list[nn.Module]:
        return [self.parts.supernet, self.parts.dist]

    # ---- logging
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
        if 'eta' in m:  # REBAR's adapted control (rebar_adapt)
            parts.append(f'η {m["eta"]:.3f} τ {m["temperature"]:.3f}')
        parts.append(f'H {float(self.parts.dist.entropy().detach()):.2f}')
        parts.append(f'{time.time() - self.started:.0f}s')
        return ' | '.join(parts)

    def _genotype(self, final: bool, metrics: dict[str, float]):
        return search_genotype(self.cfg, self.parts.dist, epoch=self.epoch, world_size=self.procs.world_size,
                               final=final, metrics=metrics)

    # ---- the loop
    def _iteration(self, images: torch.Tensor, targets: torch.Tensor, val_batches, searching: bool) -> None:
        """One φ step (when searching) and one w step on this train batch."""
        cfg, procs, p = self.cfg, self.procs, self.parts
        images, targets = images.to(procs.device), targets.to(procs.device)
        if searching:
            x_val, y_val = next(val_batches)
            stats = phi_step(p.supernet, p.dist, (images, targets),
                             (x_val.to(procs.device), y_val.to(procs.device)), p.phi_optimizer,
                             estimator=cfg.estimator, objective=p.objective,
                             per_example=cfg.sampling == 'per_example', temperature=cfg.temperature,
                             generator=self.generator, step=self.phi_steps, baseline=self.baseline,
                             grad_sync=self.grad_sync, arch_samples=cfg.batch_architectures, control=self.control)
            self._check_finite(f'φ step {self.phi_steps + 1}', {
                'the φ loss': stats['phi_loss'], 'the φ gradient norm': stats['phi_grad_norm']})
            self.phi_scheduler.step()
            self._record(stats)
        stats = w_step(p.supernet, p.dist, images, targets, p.w_optimizer,
                       per_example=cfg.sampling == 'per_example', generator=self.generator,
                       grad_clip=cfg.grad_clip, mode='darts' if cfg.estimator == 'darts' else 'sample',
                       grad_sync=self.grad_sync)
        self._check_finite(f'w step {self.global_step + 1}', {
            'the w loss': stats['w_loss'], 'the w gradient norm': stats['w_grad_norm']})
        self.w_scheduler.step()
        self._record(stats)

    def _check_finite(self, where: str, values: dict[str, float]) -> None:
        """Stop a diverged search before its state reaches a checkpoint or a genotype."""
        if not all(math.isfinite(v) for v in values.values()):
            last = self.out_dir / CHECKPOINT
            check_finite(values, where, last if last.is_file() else None)

    def run(self) -> Path | None:
        cfg = self.cfg
        val_batches = self.val.endless(self.phi_steps)
        while self.epoch < cfg.epochs:
            searching = self.epoch >= cfg.warmup_epochs
            self.parts.supernet.train()
            for images, targets in self.train.one_pass(self.epoch, self.step_in_epoch):
                self._iteration(images, targets, val_batches, searching)
                self.step_in_epoch += 1
                if self.step_in_epoch % cfg.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                    self._log(self._progress_line())
                if self.step_in_epoch == self.steps_per_epoch:
                    break  # the end of an epoch has its own outputs and checkpoint
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    save_checkpoint(self)
                if self._stop_requested():
                    save_checkpoint(self)
                    return None
            self._end_epoch(searching)
            if self.epoch < cfg.epochs and self._stop_requested():
                return None
        return self.finish()

    def _stop_requested(self) -> bool:
        stop = self.cfg.stop_after_steps is not None and self.global_step >= self.cfg.stop_after_steps
        if stop:
            self._log(f'stopped after {self.global_step} steps (stop_after_steps); resume with --resume --output '
                      f'{self.out_dir}')
        return stop

    def _end_epoch(self, searching: bool) -> None:
        procs, dist = self.procs, self.parts.dist
        if procs.distributed:
            average_buffers(self.parts.supernet, procs.world_size)
        val_loss, val_acc = evaluate_argmax(self.parts.supernet, dist, self.evaluation, procs.device,
                                            procs.distributed)
        self._check_finite(f'epoch {self.epoch + 1}', {'the validation loss of the argmax architecture': val_loss})
        record = {'epoch': self.epoch + 1, 'phase': 'search' if searching else 'warmup'}
        record.update({k: round(v, 6) for k, v in self._means().items()})
        record.update(val_loss=round(val_loss, 6), val_acc=round(val_acc, 6),
                      entropy=round(float(dist.entropy().detach()), 6),
                      w_lr=self.w_scheduler.get_last_lr()[0], phi_lr=self.phi_scheduler.get_last_lr()[0],
                      threads=torch.get_num_threads(), seconds=round(time.time() - self.started, 1))
        self.epoch += 1
        self.step_in_epoch = 0
        self.running = {}
        self.epoch_log.append(record)
        self.history.append({'epoch': self.epoch, 'probabilities': probabilities(dist)})
        self._log(f'epoch {self.epoch}/{self.cfg.epochs} done ({record["phase"]}): argmax architecture val loss '
                  f'{val_loss:.3f} acc {val_acc:.3f} | entropy {record["entropy"]:.2f}')
        if procs.is_main:
            choices = {name: [str(c) for c in labels] for name, labels in dist.choices.items()}
            write_epoch_outputs(self.out_dir, self._genotype(False, {'val_acc': val_acc, 'val_loss': val_loss}),
                                self.epoch, choices, self.history, self.epoch_log)
        if self.parts.objective.cost is not None:
            self.parts.objective.cost.flush()
        if self.epoch == self.cfg.epochs:
            self.finished = True
        save_checkpoint(self)

    def finish(self) -> Path:
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
            atomic_save({'dist': self.parts.dist.state_dict(), 'supernet': self.parts.supernet.state_dict()},
                        self.out_dir / f'rank{self.procs.rank}_final.pt')
        if self.procs.distributed:
            check_ranks_agree(self._modules())
        return path


# ------------------------------------------------------------------------------------------------------- driver

def run_search(config: SearchConfig, *, resume: bool = False, progress: bool = True) -> Path | None:
    """Run (or resume) a search; returns the final genotype YAML, or None when ``stop_after_steps`` stopped it.

    Every input is checked (config, data, cost) before anything is written; under torchrun every rank calls this.
    ``config.threads`` sets torch's intra-op threads for the run (restored afterwards). The output folder is locked
    for the run (``_io.output_lock``); a NaN/inf loss or gradient stops it (``NonFiniteError``) before it is saved.
    """
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    try:
        return _run_search(config, resume, progress)
    finally:
        torch.set_num_threads(threads)


def _claim_output(config: SearchConfig, resume: bool, procs: Processes, stack: contextlib.ExitStack) -> Path:
    """The run folder, locked by rank 0 for the whole run (a second run on it is refused on every rank)."""
    out_dir, refusal = prepare_output(config, resume), None
    if procs.is_main:
        try:
            stack.enter_context(output_lock(out_dir))
        except OutputLockedError as e:
            if not procs.distributed:
                raise
            refusal = str(e)
    if procs.distributed:  # every rank must agree on the default folder's time stamp and on the lock
        holder = [str(out_dir), refusal]
        torch_dist.broadcast_object_list(holder, 0)
        out_dir, refusal = Path(holder[0]), holder[1]
        if refusal is not None:
            raise OutputLockedError(refusal)
    return out_dir


def _run_search(config: SearchConfig, resume: bool, progress: bool) -> Path | None:
    procs = init_processes(config.device)
    with contextlib.ExitStack() as stack:
        out_dir = _claim_output(config, resume, procs, stack)
        return _start(config, resume, progress, procs, out_dir)


def _start(config: SearchConfig, resume: bool, progress: bool, procs: Processes, out_dir: Path) -> Path | None:
    run = _Run(config, procs, out_dir, progress)
    if resume:
        load_checkpoint(run)
        if run.finished:
            run._log(f'{out_dir} holds a finished search; nothing to resume')
            return run.finish() if not (out_dir / FINAL_GENOTYPE).is_file() else out_dir / FINAL_GENOTYPE
        run._log(f'resuming {out_dir} at epoch {run.epoch + 1}, step {run.step_in_epoch}')
    if procs.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(out_dir / CONFIG_FILE, yaml.safe_dump(config_to_dict(config), sort_keys=False))
        run._log(f'search: {config.space} space on {config.dataset}, {config.estimator} estimator, objective '
                 f'{config.objective}, {run.steps_per_epoch} steps per epoch x {config.epochs} epochs '
                 f'({config.warmup_epochs} warm-up), batch {per_process_batch(config, procs.world_size)} x '
                 f'{procs.world_size} process(es) on {procs.device}, {torch.get_num_threads()} thread(s); '
                 f'outputs in {out_dir}')
    if procs.distributed:
        torch_dist.barrier()
    return run.run()
