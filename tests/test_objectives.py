"""The search objective: L_gen per example pair, the duplicate-branch penalty, and how Objective combines them."""
import pytest
import torch
import torch.nn.functional as F

from unas_zoo.search.distributions import DartsCellDistribution, MBConvDistribution
from unas_zoo.search.objectives import Objective, architecture_penalty, generalization_loss


def _one_hot_weights(dist, indices):
    return dist.one_hot({k: torch.tensor(v) for k, v in indices.items()})


def test_generalization_loss_is_per_pair_not_of_the_means():
    train = torch.tensor([1.0, 2.0])
    val = torch.tensor([2.0, 1.0])
    per_pair = generalization_loss(train, val, 0.5)
    assert torch.allclose(per_pair, torch.tensor([1.5, 2.5]))
    # The mean gap here is zero; the per-pair gaps are not, and L_gen keeps them.
    assert per_pair.mean() == pytest.approx(2.0)
    assert generalization_loss(train.mean(), val.mean(), 0.5) == pytest.approx(1.5)


def test_architecture_penalty_counts_duplicated_branches_on_one_hot_samples():
    dist = DartsCellDistribution()
    indices = {name: 0 for name in dist.choices}          # every node: both branches (input 0, skip_connect)
    assert architecture_penalty(_one_hot_weights(dist, indices)) == 8.0   # 4 nodes x 2 cells
    indices['normal_node2_op1'] = 3                       # same input, different op: no longer a duplicate
    indices['reduce_node0_input1'] = 1                    # different input, same op: no longer a duplicate
    assert architecture_penalty(_one_hot_weights(dist, indices)) == 6.0
    genotype = dist.to_genotype(indices)
    duplicates = sum(node[0] == node[1] for cell in (genotype.normal, genotype.reduce) for node in cell.nodes)
    assert duplicates == 6


def test_architecture_penalty_relaxed_matches_trace_formula_and_has_gradients():
    torch.manual_seed(0)
    dist = DartsCellDistribution()
    weights = {k: torch.softmax(torch.randn(len(v)), -1).requires_grad_(True) for k, v in dist.choices.items()}
    expected = 0.0
    for cell in ('normal', 'reduce'):
        for n in range(4):
            a = torch.outer(weights[f'{cell}_node{n}_input0'], weights[f'{cell}_node{n}_op0'])
            b = torch.outer(weights[f'{cell}_node{n}_input1'], weights[f'{cell}_node{n}_op1'])
            expected = expected + torch.trace(a @ b.T)
    penalty = architecture_penalty(weights)
    assert torch.allclose(penalty, expected)
    assert 0 < float(penalty.detach()) < 8
    penalty.backward()
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights.values())


def test_architecture_penalty_per_example_shape_and_mbconv_zero():
    dist = DartsCellDistribution()
    gen = torch.Generator().manual_seed(0)
    indices = dist.sample(5, generator=gen)
    per_example = architecture_penalty(dist.one_hot(indices))
    assert per_example.shape == (5,)
    for n in range(5):
        single = architecture_penalty(dist.one_hot({k: v[n] for k, v in indices.items()}))
        assert per_example[n] == single
    mb = MBConvDistribution()
    assert architecture_penalty(mb.one_hot(mb.sample(3))).tolist() == [0.0, 0.0, 0.0]


def test_objective_kinds_and_penalty_weight():
    dist = DartsCellDistribution()
    indices = {name: 0 for name in dist.choices}
    weights = {k: v.expand(2, -1) for k, v in _one_hot_weights(dist, indices).items()}  # per-example, N=2
    train, val = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])
    gen = Objective('gen', gen_lambda=0.5, arch_lambda=0.2)
    assert torch.allclose(gen(weights, train, val), torch.tensor([1.5, 2.5]) + 0.2 * 8)
    assert torch.allclose(Objective('train', arch_lambda=0.0)(weights, train, val), train)
    assert torch.allclose(Objective('val', arch_lambda=0.0)(weights, train, val), val)
    one_arch = _one_hot_weights(dist, indices)                                             # per-batch: a scalar
    assert Objective(arch_lambda=0.0)(one_arch, train, val).shape == ()
    assert float(Objective(gen_lambda=1.0, arch_lambda=0.1)(one_arch, train, val)) == pytest.approx(2.5 + 0.8)
    assert Objective('val').needs_train is False and Objective('train').needs_val is False


def test_objective_rejects_bad_values():
    with pytest.raises(ValueError, match="allowed values are \\['gen', 'train', 'val'\\]"):
        Objective('test')
    with pytest.raises(ValueError, match='gen_lambda'):
        Objective(gen_lambda=-1)
    with pytest.raises(ValueError, match="gen_gap 'mean'; allowed values are \\['pair', 'batch'\\]"):
        Objective(gen_gap='mean')


def test_batch_gen_gap_is_the_gap_of_the_batch_means():
    """Eq. 8 read literally for one architecture per batch: |mean L_val - mean L_train|, not the mean of |gaps|."""
    dist = DartsCellDistribution()
    indices = {name: 0 for name in dist.choices}
    one_arch = _one_hot_weights(dist, indices)
    train, val = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])            # the per-pair gaps cancel in the means
    batch = Objective(gen_lambda=0.5, arch_lambda=0.2, gen_gap='batch')
    assert float(batch(one_arch, train, val)) == pytest.approx(1.5 + 0.2 * 8)
    assert float(Objective(gen_lambda=0.5, arch_lambda=0.2)(one_arch, train, val)) == pytest.approx(2.0 + 0.2 * 8)
    assert float(Objective('train', gen_gap='batch', arch_lambda=0)(one_arch, train, val)) == pytest.approx(1.5)
    per_example = {k: v.expand(2, -1) for k, v in one_arch.items()}
    with pytest.raises(ValueError, match="gen_gap 'batch' needs one architecture per batch"):
        batch(per_example, train, val)


def test_gen_objective_gradient_reaches_relaxed_weights_through_a_loss():
    """The estimator differentiates Objective(weights, ...) in the weights: both terms must carry gradient."""
    torch.manual_seed(0)
    dist = DartsCellDistribution()
    weights = {k: torch.softmax(torch.randn(3, len(v)), -1).requires_grad_(True) for k, v in dist.choices.items()}
    scale = weights['normal_node0_op0'][:, :1].sum(-1)          # a stand-in "network" output depending on a weight
    train = F.softplus(scale)
    val = F.softplus(2 * scale + 1)
    loss = Objective()(weights, train, val)
    assert loss.shape == (3,)
    loss.sum().backward()
    assert weights['normal_node0_op0'].grad.abs().sum() > 0
    assert weights['reduce_node3_input1'].grad.abs().sum() > 0   # through the penalty
