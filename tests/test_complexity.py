"""Complexity counting: exact on a hand-countable net, known timm figures, and the zoo's published sizes."""
from functools import lru_cache

import pytest
import timm
import torch
import torch.nn as nn

import unas_zoo  # noqa: F401  (registers the zoo's models)
from unas_zoo.complexity import MOBILE_SETTING_MACS, complexity, mobile_setting

# shared/reference/architectures.md, "Complexity targets": params (M), conv + linear multiply-adds (M).
# Where the paper's printed MACs include other ops, the table's conv + linear figure is the one used.
REFERENCE = {
    'unas_cifar10': (3.33, 516),
    'unas_cifar100': (4.07, 614),
    'unas_imagenet': (5.07, 549),
    'darts_v2_cifar': (3.35, 528),
    'darts_v2_imagenet': (4.72, 530),
    'pdarts_cifar': (3.43, 532),
    'pdarts_imagenet': (4.94, 543),
    'pc_darts_cifar': (3.63, 557),
    'unas_mbconv_gpu': (5.97, 428),
    'proxylessnas_gpu': (7.12, 465),
}
UNAS_IMAGENET_FVCORE_TOTAL = 564e6  # the table's "fvcore total with BN/pool" for unas_imagenet
PARAMS_RTOL, MACS_RTOL = 0.01, 0.02


class TinyNet(nn.Module):
    """Small enough to count by hand; ``aux_head`` mimics an auxiliary classifier that eval mode never runs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)   # 216 params
        self.bn = nn.BatchNorm2d(8)                              # 16 params
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)       # 72 + 8 params
        self.fc = nn.Linear(8, 10)                               # 90 params
        self.aux_head = nn.Linear(8, 10)                         # excluded

    def forward(self, x):
        x = self.dw(torch.relu(self.bn(self.conv(x))))
        if self.training:
            self.aux_head(x.mean((2, 3)))
        return self.fc(x.mean((2, 3)))


def test_counts_by_hand():
    model = TinyNet().train()
    result = complexity(model, (3, 6, 5))
    assert result['params'] == 216 + 16 + 80 + 90
    pixels = 6 * 5
    assert result['by_operator']['conv'] == 8 * 3 * 9 * pixels + 8 * 9 * pixels  # dense + depthwise
    assert result['macs'] == 8 * 3 * 9 * pixels + 8 * 9 * pixels + 8 * 10
    assert result['fvcore_total'] > result['macs']  # batch norm is counted in the total only
    assert result['input_size'] == (3, 6, 5)
    assert model.training, 'train/eval mode is restored'


def test_input_size_required_without_cfg():
    with pytest.raises(ValueError, match='input_size'):
        complexity(TinyNet())


def test_mobile_setting():
    assert MOBILE_SETTING_MACS == 600e6
    assert mobile_setting(599.9e6) and not mobile_setting(600e6) and not mobile_setting(614e6)


@pytest.mark.parametrize('name,params,macs', [
    ('resnet18', 11_689_512, 1.814e9),      # timm/torchvision's published 11.69M params, 1.82 GMACs
    ('mobilenetv2_100', 3_504_872, 300.8e6),  # 3.5M params, 300M multiply-adds (MobileNetV2 paper)
])
def test_known_timm_models(name, params, macs):
    model = timm.create_model(name)
    result = complexity(model)
    assert result['input_size'] == (3, 224, 224)
    assert result['params'] == params
    assert result['macs'] == pytest.approx(macs, rel=0.005)


@lru_cache(maxsize=None)
def zoo_complexity(name: str) -> dict:
    """Counted once per model: tracing the 20-cell nets is the slow part of this file."""
    model = timm.create_model(name)
    result = complexity(model)
    assert result['input_size'] == tuple(model.pretrained_cfg['input_size'])
    return result


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_zoo_matches_reference_table(name):
    ref_params_m, ref_macs_m = REFERENCE[name]
    result = zoo_complexity(name)
    assert result['params'] / 1e6 == pytest.approx(ref_params_m, rel=PARAMS_RTOL), result
    assert result['macs'] / 1e6 == pytest.approx(ref_macs_m, rel=MACS_RTOL), result
    if name == 'unas_imagenet':
        assert result['fvcore_total'] == pytest.approx(UNAS_IMAGENET_FVCORE_TOTAL, rel=MACS_RTOL)
        assert mobile_setting(result['macs']) and mobile_setting(result['fvcore_total'])


def test_auxiliary_head_is_not_counted():
    plain = zoo_complexity('unas_cifar10')
    with_aux = timm.create_model('unas_cifar10', aux_logits=True)
    assert any('aux' in name for name, _ in with_aux.named_parameters())
    assert sum(p.numel() for p in with_aux.parameters()) > plain['params']
    result = complexity(with_aux)
    assert result['params'] == plain['params']
    assert result['macs'] == plain['macs']
