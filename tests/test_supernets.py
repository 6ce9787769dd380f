"""Supernets: a one-hot sample computes exactly its child, only the chosen ops run, per-example samples are
independent children, and relaxed weights get gradients."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn
from torch.testing import assert_close

from unas_zoo.genotypes import IMAGENET_SEARCH_OPS, MBCONV_CHOICES, MBConvBackbone
from unas_zoo.models.darts_cells import DartsCifarNet, DartsImageNetNet
from unas_zoo.search.distributions import DartsCellDistribution, MBConvDistribution
from unas_zoo.search.supernets import DartsSupernet, MBConvSupernet, edge_weights

# Three stages, 'zero' allowed on layers 2, 4, 5 and 7; 32x32 inputs end at 4x4.
TINY_BACKBONE = MBConvBackbone(stem_width=8, first_block_width=8, stage_widths=(8, 16, 16), stage_depths=(2, 3, 2),
                               stage_strides=(2, 2, 1), head_width=32)


def _randomize_bn_stats(module: nn.Module) -> None:
    """Non-trivial running statistics, so that eval-mode comparisons exercise them."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def _darts(stem: str = 'cifar'):
    torch.manual_seed(0)
    ops = IMAGENET_SEARCH_OPS if stem == 'imagenet' else DartsCellDistribution().ops
    supernet = DartsSupernet(10, init_channels=8, layers=5 if stem == 'cifar' else 3, ops=ops, stem=stem)
    _randomize_bn_stats(supernet)
    size = 16 if stem == 'cifar' else 32
    return supernet, DartsCellDistribution(ops), torch.randn(4, 3, size, size)


def _mbconv(zero_dropout: float = 0.0):
    torch.manual_seed(0)
    supernet = MBConvSupernet(10, backbone=TINY_BACKBONE, zero_dropout=zero_dropout)
    _randomize_bn_stats(supernet)
    return supernet, MBConvDistribution(TINY_BACKBONE), torch.randn(4, 3, 32, 32)


SPACES = {'darts_cifar': lambda: _darts('cifar'), 'darts_imagenet': lambda: _darts('imagenet'), 'mbconv': _mbconv}


def _op_modules(supernet: nn.Module) -> list[nn.Module]:
    """Every candidate-op module of the supernet (the modules the weights select)."""
    if isinstance(supernet, DartsSupernet):
        return [op for cell in supernet.net.cells for node in cell.nodes for edge in node.edges for op in edge.values()]
    return [op for layer in supernet.layers for op in layer.values()]


def _count_examples(modules: list[nn.Module]) -> tuple[list[int], list]:
    """Hooks recording, per module, how many examples it processed in the forward passes that follow."""
    counts = [0] * len(modules)

    def hook(i):
        def record(module, inputs, output):
            counts[i] += inputs[0].shape[0]
        return record
    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    return counts, handles


@pytest.mark.parametrize('space', SPACES)
def test_one_hot_sample_equals_child(space):
    supernet, dist, x = SPACES[space]()
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        indices = dist.sample(generator=generator)
        weights = dist.one_hot(indices)
        child = supernet.child(dist.to_genotype(indices))
        supernet.eval(), child.eval()
        assert_close(supernet(x, weights), child(x))
        supernet.train(), child.train()  # BN from batch statistics
        assert_close(supernet(x, weights), child(x))


def test_paper_size_supernets_match_their_children():
    """The CIFAR search supernet (C=16, 8 cells, 7 ops) and the 21-layer ProxylessNAS-GPU one."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    darts, darts_dist = DartsSupernet(10).eval(), DartsCellDistribution()
    assert len(darts.net.cells) == 8 and [c.reduction for c in darts.net.cells].count(True) == 2
    assert darts.net.cells[2].reduction and darts.net.cells[5].reduction
    indices = darts_dist.sample(generator=torch.Generator().manual_seed(0))
    assert_close(darts(x, darts_dist.one_hot(indices)), darts.child(darts_dist.to_genotype(indices)).eval()(x))

    mbconv, mbconv_dist = MBConvSupernet(10).eval(), MBConvDistribution()
    assert len(mbconv.layers) == 21 and mbconv.conv_head.out_channels == 1728
    assert [len(layer) for layer in mbconv.layers].count(6) == 6  # no 'zero' where width or stride changes
    indices = mbconv_dist.sample(generator=torch.Generator().manual_seed(0))
    assert_close(mbconv(x, mbconv_dist.one_hot(indices)), mbconv.child(mbconv_dist.to_genotype(indices)).eval()(x))


@pytest.mark.parametrize('space', SPACES)
def test_only_ops_with_nonzero_weight_run(space):
    supernet, dist, x = SPACES[space]()
    supernet.eval()  # in training, BN would refuse a one-example 1x1 batch in the ImageNet layout's last cell
    modules = _op_modules(supernet)
    counts, handles = _count_examples(modules)
    n = x.shape[0]
    generator = torch.Generator().manual_seed(2)

    # The dense mixture (DARTS): every candidate op runs on the whole batch.
    supernet(x, dist.probs())
    assert counts == [n] * len(modules)

    # One architecture per batch: exactly the child's distinct ops run, each once, on the whole batch.
    counts[:] = [0] * len(modules)
    indices = dist.sample(generator=generator)
    supernet(x, dist.one_hot(indices))
    assert sum(counts) == n * _distinct_ops(supernet, dist.one_hot(indices))
    assert set(counts) <= {0, n}

    # One architecture per example: op modules see only the examples that chose them (N children's worth).
    counts[:] = [0] * len(modules)
    indices = dist.sample(n, generator=generator)
    weights = dist.one_hot(indices)
    supernet(x, weights)
    per_example = sum(_distinct_ops(supernet, {k: v[i] for k, v in weights.items()}) for i in range(n))
    assert sum(counts) == per_example
    for handle in handles:
        handle.remove()


def _distinct_ops(supernet: nn.Module, weights: dict[str, torch.Tensor]) -> int:
    """Op-module runs of one architecture: distinct (input, op) pairs per node per cell, or non-zero layers."""
    if isinstance(supernet, MBConvSupernet):
        return sum(int(w.count_nonzero()) for w in weights.values())
    per_type = {kind: sum(int(edge_weights(weights, kind, n).count_nonzero()) for n in range(4))
                for kind in ('normal', 'reduce')}
    return sum(per_type['reduce' if cell.reduction else 'normal'] for cell in supernet.net.cells)


@pytest.mark.parametrize('space', SPACES)
def test_per_example_samples_are_independent_children(space):
    supernet, dist, x = SPACES[space]()
    supernet.eval()
    indices = dist.sample(x.shape[0], generator=torch.Generator().manual_seed(3))
    out = supernet(x, dist.one_hot(indices))
    for i in range(x.shape[0]):
        own = dist.one_hot({k: v[i] for k, v in indices.items()})
        assert_close(out[i:i + 1], supernet(x[i:i + 1], own))
        assert_close(out[i], supernet(x, own)[i])


@pytest.mark.parametrize('space', SPACES)
@pytest.mark.parametrize('per_example', [False, True])
def test_relaxed_weights_get_gradients(space, per_example):
    supernet, dist, x = SPACES[space]()
    sample = dist.relaxed_sample(x.shape[0] if per_example else None, generator=torch.Generator().manual_seed(4))
    supernet(x, sample.single_pass()).logsumexp(-1).sum().backward()  # REBAR's single relaxed pass
    for name, logits in dist.logits_dict().items():
        assert logits.grad is not None and torch.isfinite(logits.grad).all(), name
        assert logits.grad.abs().sum() > 0, name


def test_distribution_argmax_builds_via_child_like_the_zoo_entrypoints():
    supernet, dist, x = _darts('cifar')
    genotype = dist.to_genotype()
    child = supernet.child(genotype)
    assert isinstance(child, DartsCifarNet) and child.aux_head is None
    zoo = timm.create_model('darts_cell_cifar', genotype=genotype, init_channels=8, layers=5, bn_affine=False,
                            pool_bn=True)
    assert child.state_dict().keys() == zoo.state_dict().keys()
    assert child(x).shape == (4, 10)

    imagenet, imagenet_dist, _ = _darts('imagenet')
    assert isinstance(imagenet.child(imagenet_dist.to_genotype()), DartsImageNetNet)

    supernet, dist, x = _mbconv()
    genotype = dist.to_genotype()
    child = supernet.child(genotype)
    zoo = timm.create_model('mbconv_net', genotype=genotype, num_classes=10)
    assert child.state_dict().keys() == zoo.state_dict().keys()
    assert child(x).shape == (4, 10)


def test_zero_dropout_acts_on_the_identity_path_in_training_only():
    supernet, dist, x = _mbconv(zero_dropout=0.5)
    free = [i for i, layer in enumerate(supernet.layers) if 'zero' in layer]
    indices = {name: torch.tensor(0) for name in dist.choices}  # 'zero' where allowed, else 3x3_e3
    layer = supernet.layers[free[0]]
    seen = []
    handle = layer['zero'].register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
    supernet.train()(x, dist.one_hot(indices))
    inputs, output = seen[-1]
    assert (output == 0).any() and not torch.equal(inputs, output)
    supernet.eval()(x, dist.one_hot(indices))
    inputs, output = seen[-1]
    assert torch.equal(inputs, output)
    handle.remove()
    assert dist.to_genotype(indices).layers[free[0]] == MBCONV_CHOICES[0]


def test_bad_weights_and_genotypes_are_refused():
    supernet, dist, x = _darts('imagenet')
    weights = dist.one_hot(dist.sample())
    with pytest.raises(ValueError, match='lack'):
        supernet(x, {k: v for k, v in weights.items() if k != 'normal_node0_op0'})
    with pytest.raises(ValueError, match='all'):  # mixed per-batch and per-example weights
        supernet(x, {**weights, 'normal_node0_op0': torch.ones(x.shape[0], 5)})
    per_example = dist.one_hot(dist.sample(x.shape[0] + 1))
    with pytest.raises(ValueError, match=r'shape \[5, 2\], expected \[4, 2\]'):
        supernet(x, per_example)
    with pytest.raises(ValueError, match='not in this supernet'):
        supernet.child('unas_cifar100')  # uses sep_conv_7x7, not an ImageNet search op
    with pytest.raises(ValueError, match='mbconv'):
        _mbconv()[0].child('unas_cifar10')
