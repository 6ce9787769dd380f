"""Architecture distributions: sampling, densities, relaxations and the argmax -> Genotype mapping."""
import pytest
import torch
from torch.distributions import Categorical

from unas_zoo.genotypes import CIFAR_SEARCH_OPS, DARTS_OPS, MBCONV_CHOICES, MBConvBackbone, from_dict, load
from unas_zoo.search.distributions import (
    ArchDistribution, DartsCellDistribution, MBConvDistribution, relaxed_sample)


def _randomised(dist, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in dist.logits_dict().values():
            t.copy_(torch.randn(t.shape, generator=g))
    return dist


def test_logits_are_zero_initialised_parameters():
    dist = DartsCellDistribution()
    assert all(isinstance(t, torch.nn.Parameter) and torch.equal(t, torch.zeros_like(t))
               for t in dist.logits_dict().values())
    assert {n for n, _ in dist.named_parameters()} == {f'logits.{k}' for k in dist.choices}
    optimizer = torch.optim.Adam(dist.parameters(), lr=0.1)
    (-dist.log_prob(dist.argmax())).backward()
    optimizer.step()
    assert any(t.abs().sum() > 0 for t in dist.logits_dict().values())
    with pytest.raises(ValueError, match='contain no'):
        ArchDistribution({'layer.1': (0, 1)})


def test_sample_frequencies_match_probabilities():
    dist = _randomised(ArchDistribution({'a': 'xyz', 'b': 'pqrs'}))
    num = 40000
    sample = dist.sample(num, generator=torch.Generator().manual_seed(1))
    for name, probs in dist.probs().items():
        freq = torch.bincount(sample[name], minlength=probs.numel()).float() / num
        stderr = (probs * (1 - probs) / num).sqrt()
        assert ((freq - probs.detach()).abs() / stderr).max() < 4.5
    one = dist.sample(generator=torch.Generator().manual_seed(1))
    assert all(i.shape == () and i.dtype == torch.long for i in one.values())
    again = dist.sample(generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(one[k], again[k]) for k in one)


def test_log_prob_and_entropy_match_torch_distributions():
    dist = _randomised(DartsCellDistribution())
    indices = dist.sample(16, generator=torch.Generator().manual_seed(0))
    expected = sum(Categorical(logits=t).log_prob(indices[k]) for k, t in dist.logits_dict().items())
    torch.testing.assert_close(dist.log_prob(indices), expected)
    single = {k: v[0] for k, v in indices.items()}
    torch.testing.assert_close(dist.log_prob(single), expected[0])
    expected_entropy = sum(Categorical(logits=t).entropy() for t in dist.logits_dict().values())
    torch.testing.assert_close(dist.entropy(), expected_entropy)
    one_hot = dist.one_hot(indices)
    assert all(one_hot[k].shape == (16, len(dist.choices[k])) for k in one_hot)


def test_relaxed_sample_reuses_the_noise():
    dist = _randomised(MBConvDistribution())
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    relaxed = dist.relaxed_sample(32, temperature=0.5, generator=g1)
    hard = dist.sample(32, generator=g2)
    for name in dist.choices:
        assert torch.equal(relaxed.indices[name], hard[name])                     # same noise, same b
        assert torch.equal(relaxed.relaxed[name].argmax(-1), hard[name])
        torch.testing.assert_close(relaxed.conditional[name], relaxed.relaxed[name])  # zeta~ == zeta in value
        torch.testing.assert_close(relaxed.relaxed[name].sum(-1), torch.ones(32))
    # ...but not in gradient: the single pass x carries grad f(zeta) - grad f(zeta~), which is not zero.
    x = relaxed.single_pass()
    torch.testing.assert_close(x['layer02'], relaxed.relaxed['layer02'])
    loss = sum((v * torch.arange(v.shape[-1])).sum() for v in x.values())
    grad = torch.autograd.grad(loss, dist.logits['layer02'])[0]
    assert grad.abs().sum() > 1e-4
    with pytest.raises(ValueError, match='temperature'):
        relaxed_sample(dist.logits_dict(), temperature=0.0)


def _ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = a.sort().values, b.sort().values
    grid = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, grid, right=True) / a.numel()
    cdf_b = torch.searchsorted(b, grid, right=True) / b.numel()
    return float((cdf_a - cdf_b).abs().max())


def test_conditional_sample_matches_rejection_sampling():
    """zeta~ for the samples whose argmax is b against zeta = softmax((log q + g) / tau) from fresh Gumbel noise kept
    only when its argmax is b: same law per coordinate (KS at about 0.1% per coordinate) and same means."""
    logits = {'x': torch.tensor([1.0, 0.0, -0.5, 0.3])}
    tau, num = 0.5, 100_000
    sample = relaxed_sample(logits, num, tau, torch.Generator().manual_seed(0))
    u = torch.rand(num, 4, generator=torch.Generator().manual_seed(1))
    z = torch.log_softmax(logits['x'], -1) - torch.log(-torch.log(u))
    reference = torch.softmax(z / tau, -1)
    for b in range(4):
        ours = sample.conditional['x'][sample.indices['x'] == b].detach()
        kept = reference[z.argmax(-1) == b]
        n, m = ours.shape[0], kept.shape[0]
        assert min(n, m) > 5000
        critical = 1.95 * ((n + m) / (n * m)) ** 0.5
        for i in range(4):
            assert _ks_statistic(ours[:, i], kept[:, i]) < critical, (b, i)
        stderr = (ours.var(0) / n + kept.var(0) / m).sqrt()
        assert ((ours.mean(0) - kept.mean(0)).abs() / stderr).max() < 4.5


def test_darts_space_is_factorized():
    dist = DartsCellDistribution()
    assert len(dist.choices) == 2 * 4 * 2 * 2
    for cell in ('normal', 'reduce'):
        for n in range(4):
            for b in range(2):
                assert dist.choices[f'{cell}_node{n}_input{b}'] == tuple(range(n + 2))   # 2..5 inputs
                assert dist.choices[f'{cell}_node{n}_op{b}'] == CIFAR_SEARCH_OPS
    assert DartsCellDistribution(CIFAR_SEARCH_OPS[:5]).choices['reduce_node3_op1'] == CIFAR_SEARCH_OPS[:5]
    with pytest.raises(ValueError, match='ops must be'):
        DartsCellDistribution(('sep_conv_3x3', 'conv_9x9'))


@pytest.mark.parametrize('zoo_name', ['unas_cifar10', 'unas_cifar100', 'darts_v2', 'pdarts'])
def test_darts_genotype_round_trip_through_argmax(zoo_name):
    genotype = load(zoo_name)
    dist = DartsCellDistribution(DARTS_OPS)   # every op the zoo's cells use
    indices = dist.encode(genotype)
    with torch.no_grad():
        for name, idx in indices.items():
            dist.logits[name][idx] = 1.0
    derived = dist.to_genotype(name=genotype.name)      # argmax, no post-search heuristic
    assert derived == genotype
    assert dist.argmax() == indices


def test_encode_rejects_genotypes_outside_the_space():
    data = load('unas_cifar10').to_dict()
    data['reduce']['nodes'][2][1][0] = 'dil_conv_5x5'     # not one of CIFAR_SEARCH_OPS
    with pytest.raises(ValueError, match="reduce_node2_op1 = 'dil_conv_5x5'.*allowed values"):
        DartsCellDistribution().encode(data)
    with pytest.raises(ValueError, match='mbconv'):
        DartsCellDistribution().encode('unas_mbconv_gpu')
    with pytest.raises(ValueError, match='backbone'):
        MBConvDistribution(MBConvBackbone(stem_width=32)).encode('unas_mbconv_gpu')


def test_sampled_genotypes_are_valid():
    for dist in (_randomised(DartsCellDistribution()), _randomised(MBConvDistribution())):
        genotype = dist.to_genotype(dist.sample(generator=torch.Generator().manual_seed(0)), name='sampled')
        assert from_dict(genotype.to_dict()) == genotype      # passes the schema's validation
        with pytest.raises(ValueError, match='one index'):
            dist.to_genotype(dist.sample(4))


def test_mbconv_space_excludes_zero_on_fixed_layers():
    backbone = MBConvBackbone()
    dist = MBConvDistribution(backbone)
    assert list(dist.choices) == [f'layer{i:02d}' for i in range(1, 22)]
    fixed = {f'layer{i + 1:02d}' for i in backbone.fixed_layers}
    assert fixed == {'layer01', 'layer05', 'layer09', 'layer13', 'layer17', 'layer21'}
    for name, labels in dist.choices.items():
        assert labels == (MBCONV_CHOICES[1:] if name in fixed else MBCONV_CHOICES)
    sample = dist.sample(2000, generator=torch.Generator().manual_seed(0))
    for name in fixed:
        assert 'zero' not in {dist.choices[name][i] for i in sample[name].tolist()}
    free = [n for n in dist.choices if n not in fixed]
    assert all('zero' in {dist.choices[n][i] for i in sample[n].tolist()} for n in free)


@pytest.mark.parametrize('zoo_name', ['unas_mbconv_gpu', 'proxylessnas_gpu'])
def test_mbconv_genotype_round_trip(zoo_name):
    genotype = load(zoo_name)
    dist = MBConvDistribution(genotype.backbone)
    indices = dist.encode(genotype)
    assert dist.to_genotype(indices, name=genotype.name) == genotype
    with torch.no_grad():
        for name, idx in indices.items():
            dist.logits[name][idx] = 2.0
    assert dist.to_genotype(name=genotype.name) == genotype
