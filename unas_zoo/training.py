"""Training of zoo models on timm's components (validation: ``unas_zoo.validation``).

timm provides the optimizer (``create_optimizer_v2``), the schedule (``create_scheduler_v2``), the loss
(``create_classification_loss``), EMA (``ModelEmaV3`` through ``timm.task``), checkpoints (``CheckpointSaver``,
``resume_task_checkpoint``), AMP (``NativeScaler``), distributed set-up and the evaluator. What this module adds is what
the DARTS-family retraining recipe needs beyond them: the auxiliary-head loss, the linearly ramped drop-path rate,
cutout, the CIFAR pad-and-crop augmentation, and checkpoints that carry the genotype itself so that validation and
the Hub export need no YAML file; a run stops at a non-finite loss, holds its folder's lock, and reports OS errors in
one line. Arguments and config files: ``train_args``; reading, saving and resuming checkpoints:
``train_checkpoints``.

``train.py`` is a thin wrapper around :func:`train_main`.
"""
from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_transform, resolve_data_config
from timm.data.distributed_sampler import OrderedDistributedSampler
from timm.models import parse_model_name, safe_model_name, split_model_name_tag
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.task import ClassificationEvaluator, ClassificationTask, evaluation_sample_limit, resume_task_checkpoint
from timm.task import load_task_ema_checkpoint
from timm.utils import NativeScaler, dispatch_clip_grad, random_seed, unwrap_model, update_summary
from timm.utils.distributed import init_distributed_device_so
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms as T

from ._finite import NonFiniteError, check_finite
from ._io import OutputLockedError, atomic_write_text, os_error_line, output_lock
from .data import DatasetError, create_dataset, dataset_info
from .genotypes import GenotypeError, load as load_genotype
from .latency import LatencyError
from .models import WeightsNotPublishedError
from .train_args import TrainingError, _bool_flag, load_config, parse_train_args, train_parser  # noqa: F401
from .train_checkpoints import AtomicCheckpointSaver, load_weights, read_checkpoint_args, resume_changes

__all__ = [
    'TrainingError', 'Cutout', 'AuxClassificationTask', 'train_parser', 'parse_train_args', 'load_config',
    'check_model_name', 'resolve_model_kwargs', 'create_model', 'load_weights', 'read_checkpoint_args',
    'set_drop_path', 'build_transform', 'create_loader', 'evaluate', 'train', 'train_main', 'USER_ERRORS',
]

_logger = logging.getLogger(__name__)

# Datasets stored as small images (32x32): trained with the CIFAR recipe (pad, crop, flip), not ImageNet's.
_SMALL_IMAGE_DATASETS = ('digits', 'cifar10', 'cifar100')


# Errors caused by the user's input: reported as one line by the CLIs, never as a traceback.
USER_ERRORS = (TrainingError, DatasetError, GenotypeError, LatencyError)
# Runs that cannot go on: a diverged loss, an output folder in use; one line too (OSError: path and cause).
RUN_ERRORS = (NonFiniteError, OutputLockedError)


# ------------------------------------------------------------------------------------------------------- transforms

class Cutout:
    """Zero one ``length`` x ``length`` square at a random centre of a CHW tensor, clipped at the borders.

    DeVries & Taylor's cutout as the DARTS family uses it (timm's RandomErasing picks a random-shaped box instead).
    """

    def __init__(self, length: int):
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        cy, cx = torch.randint(h, ()).item(), torch.randint(w, ()).item()
        y0, y1 = max(0, cy - self.length // 2), min(h, cy + self.length // 2)
        x0, x1 = max(0, cx - self.length // 2), min(w, cx + self.length // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(length={self.length})'


def build_transform(
        dataset: str,
        is_training: bool,
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        cutout: int = 0,
        hflip: float = 0.5,
        crop_padding: int = 4,
        color_jitter: float = 0.0,
        crop_pct: float | None = None,
        interpolation: str = 'bilinear',
) -> Callable:
    """Small-image datasets: the CIFAR recipe (pad + random crop, flip); ImageFolder: timm's ``create_transform``."""
    if dataset in _SMALL_IMAGE_DATASETS:
        ops: list[Callable] = [T.Resize(image_size)] if image_size != dataset_info(dataset)['image_size'] else []
        if is_training:
            if crop_padding:
                ops.append(T.RandomCrop(image_size, padding=crop_padding))
            if hflip > 0:
                ops.append(T.RandomHorizontalFlip(hflip))
        ops += [T.ToTensor(), T.Normalize(mean, std)]
    else:
        ops = [create_transform(
            (3, image_size, image_size), is_training=is_training, hflip=hflip, color_jitter=color_jitter or None,
            mean=mean, std=std, crop_pct=crop_pct, interpolation=interpolation)]
    if is_training and cutout > 0:
        ops.append(Cutout(cutout))
    return T.Compose(ops)


# ----------------------------------------------------------------------------------------------------------- models

def check_model_name(name: str) -> None:
    """Refuse an unknown model name before anything is built, suggesting close timm/zoo names."""
    source, model_id = parse_model_name(name)
    if source == 'local-dir':
        if not (Path(model_id) / 'config.json').is_file():
            raise TrainingError(f'{name}: no config.json in {model_id} (a folder written by '
                                f'`python -m unas_zoo.hub save` or timm.models.save_for_hf)')
        return
    if source:  # hf-hub: resolved (and checked) by timm when it downloads config.json
        return
    arch = split_model_name_tag(model_id)[0]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f'; did you mean {", ".join(close)}?' if close else '; list them with timm.list_models()'
        raise TrainingError(f'unknown model {name!r}{hint}')


def resolve_model_kwargs(model_kwargs: dict | None) -> dict:
    """Replace a ``genotype`` name or path by the genotype's dict, so checkpoints and Hub configs carry it."""
    kwargs = dict(model_kwargs or {})
    if 'genotype' in kwargs:
        # Through JSON: plain types only (e.g. dates in a provenance become text), as weights_only loading needs.
        kwargs['genotype'] = json.loads(json.dumps(load_genotype(kwargs['genotype']).to_dict(), default=str))
    return kwargs


def create_model(
        name: str,
        *,
        pretrained: bool = False,
        num_classes: int | None = None,
        model_kwargs: dict | None = None,
        aux_logits: bool = False,
        drop_rate: float | None = None,
        drop_path_rate: float | None = None,
) -> nn.Module:
    """``timm.create_model`` with checked names and one-line errors; ``aux_logits`` only asked for when wanted."""
    check_model_name(name)
    kwargs = resolve_model_kwargs(model_kwargs)
    if aux_logits:
        kwargs['aux_logits'] = True
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate or None,
            drop_path_rate=drop_path_rate or None, **kwargs)
    except TypeError as e:  # an argument the entrypoint / model class does not take
        hint = ' (this model has no auxiliary head: set aux_weight 0)' if 'aux_logits' in str(e) else ''
        raise TrainingError(f'{name}: {e}{hint}') from e
    except WeightsNotPublishedError as e:
        raise TrainingError(str(e)) from e
    except (OSError, RuntimeError) as e:
        if not parse_model_name(name)[0]:
            raise
        # hf-hub: offline, no such repo or file; local-dir: no weights in the folder.
        raise TrainingError(f'{name}: could not load it ({type(e).__name__}: {" ".join(str(e).split())})') from e


def set_drop_path(model: nn.Module, rate: float, epoch: int, epochs: int) -> float | None:
    """DARTS schedule: drop-path rate ``rate * epoch / epochs``, set on models that read it at forward time."""
    model = unwrap_model(model)
    if not hasattr(model, 'drop_path_rate'):
        return None
    model.drop_path_rate = rate * epoch / epochs
    return model.drop_path_rate


class AuxClassificationTask(ClassificationTask):
    """Classification with an auxiliary head: loss = CE(logits) + ``aux_weight`` * CE(aux_logits).

    Models built with ``aux_logits=True`` return ``(logits, aux_logits)`` in training mode and logits in eval mode.
    """

    def __init__(self, model: nn.Module, aux_weight: float = 0.4, **kwargs):
        super().__init__(model, **kwargs)
        self.aux_weight = aux_weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        output = self.trainable_module(input)
        if not isinstance(output, (tuple, list)):
            return {'loss': self.criterion(output, target), 'output': output}
        output, aux_output = output
        main_loss, aux_loss = self.criterion(output, target), self.criterion(aux_output, target)
        return {'loss': main_loss + self.aux_weight * aux_loss, 'output': output, 'aux_loss': aux_loss}


# ------------------------------------------------------------------------------------------------------------- data

def _data_settings(dataset: str, model: nn.Module, img_size: int | None) -> dict[str, Any]:
    """Image size, mean, std, crop_pct, interpolation: the dataset's for small images, the model's for ImageFolder."""
    if dataset in _SMALL_IMAGE_DATASETS:
        info = dataset_info(dataset)
        return dict(image_size=img_size or info['image_size'], mean=info['mean'], std=info['std'], crop_pct=1.0,
                    interpolation='bilinear')
    config = resolve_data_config({'img_size': img_size} if img_size else {}, model=model)
    return dict(image_size=config['input_size'][-1], mean=config['mean'], std=config['std'],
                crop_pct=config['crop_pct'], interpolation=config['interpolation'])


def create_loader(
        dataset,
        batch_size: int,
        is_training: bool,
        *,
        workers: int = 0,
        distributed: bool = False,
        seed: int = 0,
        pin_memory: bool = False,
) -> DataLoader:
    """A torch DataLoader; distributed runs shard with DistributedSampler (train) or timm's ordered sampler (eval)."""
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed) if is_training \
            else OrderedDistributedSampler(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=is_training and sampler is None, sampler=sampler,
        num_workers=workers, pin_memory=pin_memory, drop_last=is_training, persistent_workers=workers > 0)


# ------------------------------------------------------------------------------------------------------------ loops

def _autocast(device: torch.device, amp: bool, amp_dtype: str):
    if amp and device.type == 'cuda':
        return torch.autocast('cuda', dtype=getattr(torch, amp_dtype))
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
        model: nn.Module,
        loader: DataLoader,
        device: torch.device | str = 'cpu',
        *,
        amp: bool = False,
        amp_dtype: str = 'float16',
        channels_last: bool = False,
        distributed: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) over ``loader`` with timm's ClassificationEvaluator."""
    device = torch.device(device)
    evaluator = ClassificationEvaluator(device, max_samples=evaluation_sample_limit(loader))
    was_training = model.training
    model.eval()
    for images, target in loader:
        images, target = images.to(device), target.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp, amp_dtype):
            output = model(images)
        evaluator.update(output[0] if isinstance(output, (tuple, list)) else output, target)
    model.train(was_training)
    return dict(evaluator.compute(distributed=distributed))


def _train_one_epoch(epoch, task, model, loader, optimizer, lr_scheduler, loss_scaler, device, args, num_updates):
    task.train()
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, correct, examples, non-finite losses
    first_bad = torch.zeros((), dtype=torch.long, device=device)  # 1 + step of this rank's first non-finite loss
    start = time.time()
    for step, (images, target) in enumerate(loader):
        images, target = images.to(device), target.to(device)
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, args.amp, args.amp_dtype):
            result = task(images, target)
        loss = result['loss']
        optimizer.zero_grad(set_to_none=True)
        if loss_scaler is not None:
            loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                        parameters=model.parameters())
        else:
            loss.backward()
            if args.clip_grad:
                dispatch_clip_grad(model.parameters(), args.clip_grad, mode=args.clip_mode)
            optimizer.step()
        num_updates += 1
        task.update_ema(step=num_updates)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        n, finite = target.shape[0], torch.isfinite(loss.detach())
        # Checked without a device synchronisation per step; train() stops at the end of the epoch, before saving.
        first_bad = torch.where((first_bad == 0) & ~finite, step + 1, first_bad)
        totals += torch.stack([loss.detach().double() * n, (result['output'].argmax(-1) == target).sum().double(),
                               torch.tensor(n, dtype=torch.float64, device=device), (~finite).double()])
        if args.log_interval and (step + 1) % args.log_interval == 0:
            if args.rank == 0:
                _logger.info(f'  epoch {epoch + 1} [{step + 1}/{len(loader)}] loss {loss.item():.4f}')
            if not args.distributed and first_bad:
                break  # diverged: no use finishing the epoch (ranks of a distributed run stop together below)
    if args.distributed:
        torch.distributed.all_reduce(totals)
    loss_sum, correct, count, non_finite = totals.tolist()
    count = max(count, 1.0)
    return {'loss': loss_sum / count, 'top1': 100.0 * correct / count,
            'images_per_s': count / max(time.time() - start, 1e-9), 'non_finite_losses': int(non_finite),
            'first_non_finite_step': int(first_bad)}, num_updates


def _prepare_output_dir(args: argparse.Namespace) -> Path:
    if args.resume:
        return Path(args.resume).resolve().parent
    name = args.experiment or f'{datetime.now():%Y%m%d-%H%M%S}-{safe_model_name(args.model)}'
    out = Path(args.output) / name
    if (out / 'last.pth.tar').exists():
        raise TrainingError(f'{out} already holds a run (last.pth.tar); pass --resume {out / "last.pth.tar"} to '
                            f'continue it or another --experiment name')
    return out


def _check_resume(args: argparse.Namespace) -> None:
    """The checkpoint loads and was trained with these settings (only RESUME_MUTABLE ones may differ)."""
    changes = resume_changes(read_checkpoint_args(args.resume), args)
    if changes:
        raise TrainingError(f'--resume {args.resume}: the run was trained with other settings ({"; ".join(changes)})'
                            f'; resume with the run\'s values or start a new run')


def _open_output(args: argparse.Namespace, stack: contextlib.ExitStack, model: nn.Module, task: AuxClassificationTask,
                 optimizer: torch.optim.Optimizer, loss_scaler) -> tuple[Path, AtomicCheckpointSaver]:
    """Rank 0: lock the run folder (a second run on it is refused), write args.yaml for a new run, make the saver."""
    out_dir = _prepare_output_dir(args)
    stack.enter_context(output_lock(out_dir))
    if not args.resume:
        atomic_write_text(out_dir / 'args.yaml', yaml.safe_dump(vars(args), sort_keys=False))
    saver = AtomicCheckpointSaver(model=model, optimizer=optimizer, args=args, amp_scaler=loss_scaler,
                                  checkpoint_dir=str(out_dir), recovery_dir=str(out_dir), decreasing=False,
                                  max_history=args.checkpoint_hist, task=task)
    if args.resume:
        saver.load_state_dict_from_checkpoint(args.resume)
    return out_dir, saver


def _check_epoch_finite(epoch: int, train_metrics: dict, eval_metrics: dict, out_dir: Path | None) -> None:
    """Stop a diverged run before its state reaches summary.csv or a checkpoint."""
    last = out_dir / 'last.pth.tar' if out_dir is not None and (out_dir / 'last.pth.tar').is_file() else None
    bad_step = train_metrics.pop('first_non_finite_step')
    if train_metrics.pop('non_finite_losses'):
        where = f'epoch {epoch + 1}' + (f' step {bad_step}' if bad_step else ' (another process)')
        check_finite({'the training loss': train_metrics['loss']}, where, last)
    check_finite({'the evaluation loss (the weights diverged)': eval_metrics['loss']}, f'epoch {epoch + 1}', last)


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.model`` on ``args.dataset``; every input is checked before the run folder is written.

    Returns the run folder, the last checkpoint, the best metric and epoch, and the last epoch's metrics. Rank 0
    holds the run folder's lock for the whole run; a non-finite loss stops the run before anything is saved.
    """
    with contextlib.ExitStack() as stack:
        return _train(args, stack)


def _data_and_model(args: argparse.Namespace):
    """Datasets with their transforms and the model (resumed weights loaded); settings resolved into ``args``."""
    dataset_name = args.dataset.lower()
    # The digits train/test split keeps its own fixed seed: a training seed must not move images into the test set.
    train_set = create_dataset(dataset_name, args.data_dir, args.train_split, download=args.download and
                               args.rank == 0, image_size=args.img_size)
    eval_set = create_dataset(dataset_name, args.data_dir, args.val_split, image_size=args.img_size)
    if args.num_classes is None:
        args.num_classes = dataset_info(dataset_name)['num_classes'] or len(train_set.classes)
    args.model_kwargs = resolve_model_kwargs(args.model_kwargs)
    if args.lr is None:
        args.lr = args.lr_base * args.batch_size * args.world_size / args.lr_base_size
    if args.resume:
        _check_resume(args)
    model = create_model(args.model, pretrained=args.pretrained, num_classes=args.num_classes,
                         model_kwargs=args.model_kwargs, aux_logits=args.aux_weight > 0, drop_rate=args.drop,
                         drop_path_rate=args.drop_path)
    data = _data_settings(dataset_name, model, args.img_size)
    common = dict(image_size=data['image_size'], mean=data['mean'], std=data['std'], crop_pct=data['crop_pct'],
                  interpolation=data['interpolation'])
    train_set.transform = build_transform(
        dataset_name, True, cutout=args.cutout, hflip=args.hflip, crop_padding=args.crop_padding,
        color_jitter=args.color_jitter, **common)
    eval_set.transform = build_transform(dataset_name, False, **common)
    if args.resume:
        load_weights(model, args.resume)  # refuses another architecture with the keys named, before any write
    return train_set, eval_set, model


def _train(args: argparse.Namespace, stack: contextlib.ExitStack) -> dict[str, Any]:
    device = torch.device(init_distributed_device_so(device=args.device)['device'])
    args.distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    args.world_size = torch.distributed.get_world_size() if args.distributed else 1
    args.rank = torch.distributed.get_rank() if args.distributed else 0
    args.device = str(device)
    if args.resume and not Path(args.resume).is_file():
        raise TrainingError(f'--resume {args.resume}: no such checkpoint')
    random_seed(args.seed, args.rank)
    train_set, eval_set, model = _data_and_model(args)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    task = AuxClassificationTask(model, aux_weight=args.aux_weight, criterion_kwargs=dict(smoothing=args.smoothing),
                                 device=device, verbose=False).to(device)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    loss_scaler = NativeScaler(device='cuda') if args.amp and device.type == 'cuda' \
        and args.amp_dtype == 'float16' else None
    if args.amp and device.type != 'cuda' and args.rank == 0:
        _logger.info('--amp applies on CUDA only; training in float32 on %s', device)
    if args.model_ema:
        task.setup_ema(decay=args.model_ema_decay)
    start_epoch = 0
    if args.resume:
        start_epoch = resume_task_checkpoint(task, args.resume, optimizer, loss_scaler, log_info=args.rank == 0) or 0
        if args.model_ema:
            load_task_ema_checkpoint(task, args.resume)
    if args.distributed:
        task.prepare_distributed(device_ids=[device.index] if device.type == 'cuda' else None)

    loader_args = dict(workers=args.workers, distributed=args.distributed, seed=args.seed,
                       pin_memory=device.type == 'cuda')
    train_loader = create_loader(train_set, args.batch_size, True, **loader_args)
    eval_loader = create_loader(eval_set, args.validation_batch_size or args.batch_size, False, **loader_args)
    if len(train_loader) == 0:
        raise TrainingError(f'{args.dataset}: {len(train_set)} training images are fewer than one batch '
                            f'(--batch-size {args.batch_size})')
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, min_lr=args.min_lr, warmup_lr=args.warmup_lr,
        warmup_epochs=args.warmup_epochs, updates_per_epoch=len(train_loader))
    if lr_scheduler is not None and start_epoch > 0:
        lr_scheduler.step(start_epoch)

    out_dir, saver = None, None
    if args.rank == 0:
        out_dir, saver = _open_output(args, stack, model, task, optimizer, loss_scaler)
        _logger.info(f'{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M params'
                     f'{" (with the auxiliary head)" if args.aux_weight > 0 else ""}, '
                     f'{len(train_set)} train / {len(eval_set)} eval images, {num_epochs} epochs -> {out_dir}')
    loop = dict(task=task, model=model, optimizer=optimizer, loss_scaler=loss_scaler, device=device)
    train_metrics, eval_metrics = _run_epochs(args, loop, train_loader, eval_loader, lr_scheduler, start_epoch,
                                              num_epochs, out_dir, saver)
    if args.distributed:
        torch.distributed.barrier()
    result = {'output_dir': str(out_dir) if out_dir else None, 'train': train_metrics, 'eval': eval_metrics}
    if saver is not None:
        result.update(checkpoint=str(out_dir / 'last.pth.tar'), best_metric=saver.best_metric,
                      best_epoch=saver.best_epoch)
    return result


def _run_epochs(args: argparse.Namespace, loop: dict, train_loader: DataLoader, eval_loader: DataLoader,
                lr_scheduler, start_epoch: int, num_epochs: int, out_dir: Path | None,
                saver: AtomicCheckpointSaver | None) -> tuple[dict, dict]:
    """Train, evaluate, log and (rank 0) save each epoch; returns the last epoch's train and eval metrics."""
    task, model, optimizer, device = loop['task'], loop['model'], loop['optimizer'], loop['device']
    train_metrics, eval_metrics, num_updates = {}, {}, start_epoch * len(train_loader)
    for epoch in range(start_epoch, num_epochs):
        # Seeding per epoch makes a resumed run draw the same batches and augmentations as an uninterrupted one.
        random_seed(args.seed + epoch, args.rank)
        if args.distributed:
            train_loader.sampler.set_epoch(epoch)
        drop_path = set_drop_path(model, args.drop_path, epoch, num_epochs)
        train_metrics, num_updates = _train_one_epoch(
            epoch, task, model, train_loader, optimizer, lr_scheduler, loop['loss_scaler'], device, args, num_updates)
        eval_metrics = evaluate(model, eval_loader, device, amp=args.amp, amp_dtype=args.amp_dtype,
                                channels_last=args.channels_last, distributed=args.distributed)
        _check_epoch_finite(epoch, train_metrics, eval_metrics, out_dir)
        if task.has_ema():
            ema_metrics = evaluate(task.get_eval_model(ema=True), eval_loader, device, amp=args.amp,
                                   amp_dtype=args.amp_dtype, channels_last=args.channels_last,
                                   distributed=args.distributed)
            eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, eval_metrics['top1'])
        lr = optimizer.param_groups[0]['lr']
        if args.rank == 0:
            _logger.info(
                f'epoch {epoch + 1}/{num_epochs}  train loss {train_metrics["loss"]:.4f} '
                f'acc {train_metrics["top1"]:.2f}%  eval loss {eval_metrics["loss"]:.4f} '
                f'top-1 {eval_metrics["top1"]:.2f}% top-5 {eval_metrics["top5"]:.2f}%  lr {lr:.3g}'
                + (f'  drop-path {drop_path:.3f}' if drop_path is not None else '')
                + (f'  ema top-1 {eval_metrics["ema_top1"]:.2f}%' if 'ema_top1' in eval_metrics else '')
                + f'  {train_metrics["images_per_s"]:.0f} img/s')
            update_summary(epoch, train_metrics, eval_metrics, str(out_dir / 'summary.csv'), lr=lr)
            saver.save_checkpoint(epoch, metric=eval_metrics['top1'])
    return train_metrics, eval_metrics


def _run_cli(main: Callable[[], int]) -> int:
    """One clear line and exit code 2 for bad input, a diverged run, a busy folder or an OS error (path and cause);
    tracebacks only for real bugs."""
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    try:
        return main()
    except USER_ERRORS + RUN_ERRORS as e:
        print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
        return 2
    except OSError as e:  # read-only / full / forbidden output folder, unreadable input
        print(f'error: {os_error_line(e)}', file=sys.stderr)
        return 2


def train_main(argv: Sequence[str] | None = None) -> int:
    def run() -> int:
        args = parse_train_args(argv)
        result = train(args)
        if result.get('best_metric') is not None:
            _logger.info(f'best top-1 {result["best_metric"]:.2f}% (epoch {result["best_epoch"] + 1}); last '
                         f'checkpoint {result["checkpoint"]}\nvalidate: python validate.py --checkpoint '
                         f'{result["checkpoint"]} --dataset {args.dataset}'
                         + (f' --data-dir {args.data_dir}' if args.data_dir else ''))
        return 0
    return _run_cli(run)
