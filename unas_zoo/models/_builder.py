"""Pieces shared by the zoo's timm entrypoints: default cfgs, the genotype kwarg, weight availability.

Weights for every zoo model are to be published on the Hugging Face Hub at ``hub_id(name)``. A cfg carries its
``hf_hub_id`` only once the name is in ``PUBLISHED_WEIGHTS``, so ``timm.list_pretrained()`` lists exactly the published
models; until then ``pretrained=True`` fails here with a clear message instead of timm's random-init warning.
Local weights always load: ``pretrained=True, pretrained_cfg_overlay=dict(file='model.safetensors')``.
"""
from __future__ import annotations

import json
import os
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import get_model_args, resolve_pretrained_cfg
from timm.models._features import FeatureGetterNet
from torch import nn

from ..data import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from ..genotypes import DartsGenotype, Genotype, GenotypeError, MBConvGenotype, load

__all__ = [
    'HF_HUB_ORG', 'PUBLISHED_WEIGHTS', 'WeightsNotPublishedError', 'hub_id', 'cifar_cfg', 'imagenet_cfg',
    'resolve_genotype', 'check_pretrained_available', 'GenotypeModelArgs', 'GenotypeFeatureGetterNet',
    'attach_genotype', 'export_model_args',
]

HF_HUB_ORG = 'unas-zoo'
# Model names whose weights are on the Hub at hub_id(name): adding a name here is all publishing takes.
PUBLISHED_WEIGHTS: frozenset[str] = frozenset()

# Entrypoints whose architecture comes from the genotype= kwarg (the named ones fix it).
_GENERIC_ENTRYPOINTS = ('darts_cell_cifar', 'darts_cell_imagenet', 'mbconv_net')


class WeightsNotPublishedError(RuntimeError):
    """``pretrained=True`` asked for Hub weights that have not been published yet."""


def hub_id(model_name: str) -> str:
    """The Hub repository a zoo model's weights are (or will be) published under."""
    return f'{HF_HUB_ORG}/{model_name}'


def _cfg(model_name: str, **kwargs: Any) -> dict[str, Any]:
    # timm lists a model as pretrained whenever its cfg names a weight source: name one only for published weights.
    if model_name in PUBLISHED_WEIGHTS:
        kwargs['hf_hub_id'] = hub_id(model_name)
    return dict(interpolation='bicubic', **kwargs)


def cifar_cfg(model_name: str, num_classes: int = 10, **kwargs: Any) -> dict[str, Any]:
    """A 32x32 CIFAR cfg (no resize crop); the final cell runs at 8x8."""
    mean, std = (CIFAR100_MEAN, CIFAR100_STD) if num_classes == 100 else (CIFAR10_MEAN, CIFAR10_STD)
    return _cfg(model_name, num_classes=num_classes, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                mean=mean, std=std, first_conv='stem.0', classifier='head.fc', **kwargs)


def imagenet_cfg(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """A 224x224 ImageNet cfg; the final features are 7x7."""
    kwargs.setdefault('first_conv', 'stem0.0')
    kwargs.setdefault('classifier', 'head.fc')
    return _cfg(model_name, num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, **kwargs)


def resolve_genotype(genotype: str | os.PathLike | dict | Genotype, space: type, model_name: str) -> Genotype:
    """Load ``genotype`` (zoo name, YAML path, dict or Genotype) and check it belongs to the model's search space."""
    genotype = load(genotype)
    if not isinstance(genotype, space):
        wanted = 'darts' if space is DartsGenotype else 'mbconv'
        raise GenotypeError(f'{model_name}: needs a {wanted!r} genotype, got {genotype.space!r} genotype '
                            f'{genotype.name or ""!r}'.rstrip())
    return genotype


def check_pretrained_available(variant: str, pretrained: bool, pretrained_cfg: Any = None,
                               pretrained_cfg_overlay: dict | None = None) -> None:
    """Fail early and clearly when ``pretrained=True`` would fetch Hub weights that are not published yet."""
    if not pretrained:
        return
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    # A file, state dict or URL, an explicit 'hf-hub:' / 'local-dir:' model name or another Hub repo: not ours to judge.
    explicit = cfg.file or cfg.state_dict is not None or cfg.url or cfg.source in ('hf-hub', 'local-dir')
    if explicit or (cfg.hf_hub_id and not cfg.hf_hub_id.startswith(f'{HF_HUB_ORG}/')):
        return
    if variant not in PUBLISHED_WEIGHTS or not cfg.hf_hub_id:
        raise WeightsNotPublishedError(
            f'{variant}: no pretrained weights are published yet (they will be at hf-hub:{hub_id(variant)}). '
            f"Use pretrained=False, or load a local file: pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='model.safetensors').")


class GenotypeModelArgs:
    """Mixin: the ``genotype`` reconstruction argument is the genotype itself (a plain dict), never a path.

    timm's factory records the entrypoint kwargs as ``model._model_args``; ``save_for_hf`` / ``push_to_hf_hub`` write
    them to config.json. A YAML path there would not load anywhere else, so a generic-entrypoint model reports its
    genotype as a dict (also when it was built without ``create_model``).
    """
    __jit_unused_properties__ = ['_model_args']

    @property
    def _model_args(self) -> dict[str, Any]:
        args = dict(self.__dict__.get('_recorded_model_args', {}))
        genotype = self.__dict__.get('genotype')
        architecture = (getattr(self, 'pretrained_cfg', None) or {}).get('architecture')
        if genotype is not None and ('genotype' in args or architecture in _GENERIC_ENTRYPOINTS):
            # JSON types only (a YAML date in the provenance becomes text), as config.json and checkpoints need.
            args['genotype'] = json.loads(json.dumps(genotype.to_dict(), default=str))
        return args

    @_model_args.setter
    def _model_args(self, args: dict[str, Any]) -> None:
        self.__dict__['_recorded_model_args'] = dict(args)


class GenotypeFeatureGetterNet(GenotypeModelArgs, FeatureGetterNet):
    """timm's ``getter`` feature wrapper (``features_only=True`` on the DARTS nets) recording the genotype itself."""


def attach_genotype(model: nn.Module, genotype: Genotype) -> nn.Module:
    """Record the genotype on a built model (a feature wrapper records it too) so it can be saved and rebuilt."""
    model.genotype = genotype
    inner = getattr(model, 'model', None)  # timm's FeatureGetterNet keeps the network as .model
    if isinstance(inner, nn.Module):
        inner.genotype = genotype
    return model


def export_model_args(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable kwargs that rebuild a zoo model: ``create_model(arch, **args)``.

    timm's public ``get_model_args`` (what ``save_for_hf`` writes to config.json), checked to hold no genotype path.
    """
    genotype = getattr(model, 'genotype', None)
    if not isinstance(genotype, (DartsGenotype, MBConvGenotype)):
        raise ValueError(f'{type(model).__name__} carries no genotype; build it with a unas_zoo entrypoint')
    args = get_model_args(model)
    if 'genotype' in args and not isinstance(args['genotype'], dict):
        raise ValueError(f'{type(model).__name__} records genotype={args["genotype"]!r}, which would not load '
                         f'elsewhere; build it with the default features_only wrapper or without features_only')
    return args
