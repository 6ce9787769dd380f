"""Evidence that RELAX does what the paper says for a non-differentiable cost (issue 4, point 5).

(a) The RELAX single-sample gradient of E[max(0, cost(z) − target)] is unbiased even when its linear control
    variate is badly wrong; the surrogate-only (FBNet-style Gumbel) gradient is not.
(b) On a planted cost with layer interactions no linear model captures, a RELAX search reaches the target while a
    surrogate-only search settles on an architecture far above it.
Exact expectations come from enumerating every architecture of the small factorized problems.
"""
import itertools

import pytest
import torch

from unas_zoo.latency import LinearSurrogate
from unas_zoo.search.distributions import ArchDistribution
from unas_zoo.search.estimators import estimate, single_sample_gradient

LABELS = ('a', 'b', 'c')


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: extra intra-op threads only contend with other processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _enumerate(names):
    grid = torch.tensor(list(itertools.product(range(len(LABELS)), repeat=len(names))))
    return {name: grid[:, i] for i, name in enumerate(names)}


def _exact_expectation(logits, values, all_indices):
    """Σ_z p(z) values(z) as a differentiable function of the logits."""
    log_p = sum(torch.log_softmax(logits[name], -1)[idx] for name, idx in all_indices.items())
    return (log_p.exp() * values).sum()


# ------------------------------------------------------------------------------------------ (a) unbiasedness

def _interaction_cost(idx):
    """A cost with strong pairwise interactions (compile-time effects that a linear model cannot express)."""
    x, y, z = idx['x'], idx['y'], idx['z']
    return 2.0 + 3.0 * (x == y).float() + 4.0 * ((y + z) % 3 == 1).float() + 1.5 * (x == 2).float()


def test_relax_unbiased_with_badly_wrong_surrogate():
    names = ('x', 'y', 'z')
    choices = {n: LABELS for n in names}
    target = 4.0
    all_indices = _enumerate(names)
    hinge = (_interaction_cost(all_indices) - target).clamp_min(0)

    # A badly wrong surrogate: fitted to the *negated* cost, so it ranks architectures backwards.
    bad = LinearSurrogate(choices)
    bad.fit(bad.encode(all_indices), -_interaction_cost(all_indices).double(), holdout=0.0)
    assert torch.corrcoef(torch.stack([bad.predict(all_indices), _interaction_cost(all_indices).double()]))[0, 1] < -0.2

    gen = torch.Generator().manual_seed(0)
    logits = {n: torch.randn(3, generator=gen) for n in names}
    leaves = {n: v.clone().requires_grad_(True) for n, v in logits.items()}
    exact = torch.autograd.grad(_exact_expectation(leaves, hinge, all_indices), list(leaves.values()))
    exact = torch.cat(exact)

    def measured(one_hot):  # non-differentiable: sees only which choice is on
        return (_interaction_cost({n: w.argmax(-1) for n, w in one_hot.items()}) - target).clamp_min(0)

    def surrogate(weights):
        return (bad(weights) - target).clamp_min(0)

    def mean_and_stderr(name, fn, **kw):
        draws = torch.stack([torch.cat(list(single_sample_gradient(name, logits, fn, generator=gen, **kw).values()))
                             for _ in range(1500)])
        return draws.mean(0), draws.std(0) / len(draws) ** 0.5

    mean, stderr = mean_and_stderr('relax', measured, surrogate=surrogate)
    z_relax = ((mean - exact).abs() / (stderr + 1e-3)).max()
    assert z_relax < 4.5, (mean, exact, stderr)

    # The same test detects the bias of term (iii) alone (Gumbel-softmax on the surrogate, as FBNet optimises).
    mean_g, stderr_g = mean_and_stderr('gumbel', surrogate)
    z_gumbel = ((mean_g - exact).abs() / (stderr_g + 1e-3)).max()
    assert z_gumbel > 10, (mean_g, exact)


# ------------------------------------------------------------------------------- (b) search on a planted cost

# Layers come in pairs (first, second). Pair cost = PAIR[first, second] + UNARY[first]. A linear fit on random
# architectures (what a latency table learns) says 'c' is the cheapest choice for *both* layers of a pair, but
# ('c', 'c') is the most expensive pair: the cost of a layer depends on its neighbour (e.g. kernel fusion).
PAIR = torch.tensor([[6.0, 6.0, 0.0],
                     [6.0, 6.0, 0.0],
                     [0.0, 0.0, 9.0]])
UNARY = torch.tensor([1.5, 1.5, 0.0])
LAYERS = tuple(f'layer{i + 1:02d}' for i in range(6))
TARGET = 3.0


def _planted(idx):
    total = 0.0
    for first, second in zip(LAYERS[0::2], LAYERS[1::2]):
        total = total + PAIR[idx[first], idx[second]] + UNARY[idx[first]]
    return total


def _search(estimator, surrogate, steps=100):
    """Minimise E[max(0, cost − target)] over the logits with Adam, 8 samples per step."""
    torch.manual_seed(0)
    dist = ArchDistribution({name: LABELS for name in LAYERS})
    optimizer = torch.optim.Adam(dist.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimizer.zero_grad()
        est = estimate(estimator, dist, None, num_samples=8, generator=gen,
                       cost_fn=lambda idx: (_planted(idx) - TARGET).clamp_min(0),
                       cost_surrogate=lambda w: (surrogate(w) - TARGET).clamp_min(0))
        est.objective.backward()
        optimizer.step()
    return dist


def test_relax_search_meets_target_where_surrogate_only_search_fails():
    all_indices = _enumerate(LAYERS)
    costs = _planted(all_indices)
    choices = {name: LABELS for name in LAYERS}
    # The best linear surrogate there is: least squares on every architecture (a latency table fitted perfectly).
    surrogate = LinearSurrogate(choices)
    stats = surrogate.fit(surrogate.encode(all_indices), costs, holdout=0.2, generator=torch.Generator().manual_seed(0))
    assert stats['holdout']['r2'] < 0.1  # and it explains almost nothing of this cost

    uniform = _exact_expectation(ArchDistribution(choices).logits_dict(), costs, all_indices)
    assert uniform > 4 * TARGET

    relax = _search('relax', surrogate)
    with torch.no_grad():
        relax_cost = _exact_expectation(relax.logits_dict(), costs, all_indices)
    assert relax_cost <= TARGET, relax_cost
    assert float(_planted(relax.argmax())) <= TARGET

    surrogate_only = _search('gumbel', surrogate)
    with torch.no_grad():
        gumbel_cost = _exact_expectation(surrogate_only.logits_dict(), costs, all_indices)
    assert gumbel_cost > 5 * TARGET, gumbel_cost
    # It settled on the surrogate's favourite: 'c' everywhere, the most expensive pairs of all.
    assert all(LABELS[i] == 'c' for i in surrogate_only.argmax().values())
    assert float(_planted(surrogate_only.argmax())) == float(costs.max())
