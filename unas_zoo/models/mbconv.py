"""ProxylessNAS-space (MBConv) networks: an mbconv genotype -> timm arch-def strings -> timm EfficientNet.

The backbone (GPU variant): stem conv3x3 s2 + BN + act, a first block MBConv k3 e1 (depthwise + project), six stages
of searchable layers, head conv1x1 + BN + act, global average pool, linear. Each non-'zero' layer choice ``KxK_eE``
becomes one ``ir_r1_kK_sS_eE_cC`` block string; 'zero' layers are left out (they are identities). No squeeze-excite,
activation and BN eps from the genotype's backbone (ReLU6, 1e-3). Because timm's EfficientNet builder builds the
network, these are ordinary timm EfficientNet-family models (features, forward_intermediates, ... come with it).
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any, Union

from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def
from timm.models._builder import pretrained_cfg_for_features
from timm.models.efficientnet import EfficientNet, EfficientNetFeatures
from torch import nn

from ..genotypes import Genotype, MBConvGenotype, parse_mbconv_choice
from ._builder import GenotypeModelArgs, attach_genotype, check_pretrained_available, imagenet_cfg, resolve_genotype

__all__ = ['MBConvNet', 'MBConvFeatures', 'mbconv_arch_def', 'build_mbconv']


def mbconv_arch_def(genotype: Union[str, os.PathLike, dict, Genotype]) -> list[list[str]]:
    """timm arch-def strings, one list per stage: the first block, then each stage's non-'zero' layers."""
    genotype = resolve_genotype(genotype, MBConvGenotype, 'mbconv_arch_def')
    backbone = genotype.backbone
    arch_def = [[f'ds_r1_k3_s1_e1_c{backbone.first_block_width}']]
    for layer, choice in enumerate(genotype.layers):
        stage = backbone.stage_of(layer)
        if layer in backbone.fixed_layers:
            arch_def.append([])
        if choice == 'zero':
            continue
        kernel, expansion = parse_mbconv_choice(choice)
        # Only the first layer of a stage strides; it is never 'zero' (the schema refuses that).
        stride = backbone.stage_strides[stage] if layer in backbone.fixed_layers else 1
        arch_def[-1].append(f'ir_r1_k{kernel}_s{stride}_e{expansion}_c{backbone.stage_widths[stage]}')
    return arch_def


class MBConvNet(GenotypeModelArgs, EfficientNet):
    """timm's EfficientNet that records its genotype itself as the reconstruction argument (for config.json)."""


class MBConvFeatures(GenotypeModelArgs, EfficientNetFeatures):
    """timm's EfficientNetFeatures (``features_only=True``) recording its genotype the same way."""


def _build_effnet(variant: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """Build with timm's EfficientNet model classes as timm's efficientnet entrypoints do, through our subclasses."""
    features_only = kwargs.pop('features_only', False)
    if features_only and 'feature_cfg' not in kwargs and 'feature_cls' not in kwargs:
        # timm's native feature class: no head, weights loaded non-strictly (the checkpoint has one).
        model = build_model_with_cfg(MBConvFeatures, variant, pretrained, pretrained_strict=False,
                                     kwargs_filter=('num_classes', 'num_features', 'head_conv', 'global_pool'),
                                     **kwargs)
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
        return model
    return build_model_with_cfg(MBConvNet, variant, pretrained, features_only=features_only, **kwargs)


def _exact_channels(channels: int) -> int:
    """Widths come from the genotype verbatim (timm would otherwise round them to multiples of 8)."""
    return channels


def build_mbconv(genotype: Union[str, os.PathLike, dict, Genotype], variant: str = 'mbconv_net',
                 pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build the timm EfficientNet for an mbconv genotype with ``variant``'s pretrained cfg.

    ``kwargs`` are timm model kwargs (num_classes, in_chans, drop_rate, drop_path_rate, features_only, device, ...).
    """
    check_pretrained_available(variant, pretrained, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    genotype = resolve_genotype(genotype, MBConvGenotype, variant)
    backbone = genotype.backbone
    model = _build_effnet(
        variant,
        pretrained,
        block_args=decode_arch_def(mbconv_arch_def(genotype)),
        num_features=backbone.head_width,
        stem_size=backbone.stem_width,
        fix_stem=True,
        round_chs_fn=_exact_channels,
        act_layer=get_act_layer(backbone.act),
        norm_layer=partial(nn.BatchNorm2d, eps=backbone.bn_eps),
        **kwargs,
    )
    # timm's EfficientNet fixes per-block stochastic-depth rates at build time; record the rate asked for.
    model.drop_path_rate = kwargs.get('drop_path_rate', 0.)
    return attach_genotype(model, genotype)


_PROXYLESS_PAPER = 'ProxylessNAS: Direct Neural Architecture Search on Target Task and Hardware'
_UNAS_PAPER = 'UNAS: Differentiable Architecture Search Meets Reinforcement Learning'

default_cfgs = generate_default_cfgs({
    'unas_mbconv_gpu': imagenet_cfg('unas_mbconv_gpu', first_conv='conv_stem', classifier='classifier',
                                    paper_name=_UNAS_PAPER),
    'proxylessnas_gpu': imagenet_cfg('proxylessnas_gpu', first_conv='conv_stem', classifier='classifier',
                                     paper_name=_PROXYLESS_PAPER),
    'mbconv_net': imagenet_cfg('mbconv_net', first_conv='conv_stem', classifier='classifier'),
})


@register_model
def unas_mbconv_gpu(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """UNAS latency-searched MBConv net (ProxylessNAS GPU space, V100 target; 5.97M params)."""
    return build_mbconv('unas_mbconv_gpu', 'unas_mbconv_gpu', pretrained, **kwargs)


@register_model
def proxylessnas_gpu(pretrained: bool = False, **kwargs: Any) -> EfficientNet:
    """ProxylessNAS-GPU (7.12M params, 465M multiply-adds)."""
    return build_mbconv('proxylessnas_gpu', 'proxylessnas_gpu', pretrained, **kwargs)


@register_model
def mbconv_net(pretrained: bool = False, genotype: Any = 'unas_mbconv_gpu', **kwargs: Any) -> EfficientNet:
    """Any mbconv genotype (zoo name, YAML path, dict or Genotype) as a timm EfficientNet."""
    return build_mbconv(genotype, 'mbconv_net', pretrained, **kwargs)
