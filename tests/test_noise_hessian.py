"""The Hessian-weighted noise scale against problems where tr(HΣ), GᵀHG, tr(Σ), |G|² are known exactly."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from batchscope.noise.hessian import hessian_noise_scale, moments


class Quadratic(nn.Module):
    """Example i has the loss ½ (w - c_i)ᵀ A (w - c_i): every example shares the Hessian A."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, c):
        return self.w[None, :] - c            # (n, P) residuals


def _quadratic_case(seed=0, n=24, p=6):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(p, p, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(-1.5, 1, p, dtype=torch.float64)) @ q.T   # anisotropic, SPD
    # noise mostly along the flat directions, the offset along the sharp ones: tr(HΣ)/GᵀHG << tr(Σ)/|G|²
    c = (torch.randn(n, p, generator=g, dtype=torch.float64) * torch.linspace(2, 0.2, p, dtype=torch.float64)) @ q.T
    w = q @ torch.linspace(0.1, 1.0, p, dtype=torch.float64)

    def loss(r, _t):
        return 0.5 * torch.einsum("np,pq,nq->n", r, a, r).mean()
    return a, c, w, loss


def test_quadratic_exact():
    a, c, w, loss = _quadratic_case()
    est = hessian_noise_scale(Quadratic(w), loss, c, torch.zeros(len(c)))
    n = len(c)
    cov = torch.cov(c.T)                       # sample covariance (n - 1), (P, P)
    d = w - c.mean(0)
    a3 = a @ a @ a
    tr_h_sigma = float(torch.trace(a3 @ cov))  # Σ = A C A, H = A
    tr_sigma = float(torch.trace(a @ a @ cov))
    assert est.trace_h_sigma == pytest.approx(tr_h_sigma, rel=1e-9)
    assert est.trace_sigma == pytest.approx(tr_sigma, rel=1e-9)
    # the unbiased forms remove the mean's own noise: raw quadratic form minus trace / n
    assert est.g_h_g + est.trace_h_sigma / n == pytest.approx(float(d @ a3 @ d), rel=1e-9)
    assert est.g2 + est.trace_sigma / n == pytest.approx(float(d @ a @ a @ d), rel=1e-9)
    assert est.b_hessian == pytest.approx(est.trace_h_sigma / est.g_h_g)
    # the anisotropic case: the two noise scales differ, so the test would catch one standing in for the other
    assert est.b_hessian < 0.8 * est.b_simple


@pytest.mark.parametrize("n", [4, 24])   # fewer examples than parameters, and more
def test_one_product_per_example_equals_the_columns_of_h(n):
    a, c, w, _ = _quadratic_case(n=n)
    grads = (w - c) @ a                                       # (n, P) per-example gradients
    by_examples = moments(grads, lambda v: v @ a, by="examples")
    by_columns = moments(grads, lambda v: v @ a, by="columns")
    assert by_examples.trace_h_sigma == pytest.approx(by_columns.trace_h_sigma, rel=1e-12)
    assert by_examples.g_h_g == pytest.approx(by_columns.g_h_g, rel=1e-12)


def test_isotropic_hessian_makes_both_scales_equal():
    _, c, w, _ = _quadratic_case(seed=1)

    def loss(r, _t):   # H = 3 I
        return 0.5 * 3.0 * (r ** 2).sum(1).mean()
    est = hessian_noise_scale(Quadratic(w), loss, c, torch.zeros(len(c)))
    assert est.b_hessian == pytest.approx(est.b_simple, rel=1e-9)


def test_linear_gaussian_population_values():
    """y = xᵀw* + ε, x ~ N(0, A), loss ½(xᵀw - y)², d = w - w*: G = A d, H = A,
    Σ = (dᵀAd + σ²) A + A d dᵀ A (Isserlis), so tr(HΣ) = (dᵀAd + σ²) tr(A²) + dᵀA³d, GᵀHG = dᵀA³d."""
    rng = np.random.default_rng(0)
    p, n, sigma = 5, 20000, 0.5
    a = np.diag(np.linspace(0.2, 3.0, p))
    x = rng.standard_normal((n, p)) @ np.sqrt(a)
    w_star = rng.standard_normal(p)
    d = 0.3 * rng.standard_normal(p)
    y = x @ w_star + sigma * rng.standard_normal(n)
    model = nn.Linear(p, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w_star + d)[None])

    def loss(out, t):
        return 0.5 * ((out.squeeze(-1) - t) ** 2).mean()
    est = hessian_noise_scale(model, loss, torch.from_numpy(x), torch.from_numpy(y), chunk=4096)
    dad = d @ a @ d
    assert est.trace_h_sigma == pytest.approx((dad + sigma ** 2) * np.trace(a @ a) + d @ a @ a @ a @ d, rel=0.05)
    assert est.trace_sigma == pytest.approx((dad + sigma ** 2) * np.trace(a) + d @ a @ a @ d, rel=0.05)
    assert est.g_h_g == pytest.approx(d @ a @ a @ a @ d, rel=0.08)
    assert est.g2 == pytest.approx(d @ a @ a @ d, rel=0.08)


def test_moments_removes_the_mean_noise_on_average():
    """Small samples of a population: the unbiased GᵀHG and |G|² average to the population values."""
    rng = np.random.default_rng(1)
    h = torch.diag(torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64))
    g_true = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    population = g_true + torch.from_numpy(rng.standard_normal((200000, 3)) * [2.0, 1.0, 0.5])
    pop_ghg = float(population.mean(0) @ h @ population.mean(0))
    draws = [moments(population[rng.integers(0, len(population), 8)], lambda v: v @ h) for _ in range(4000)]
    assert np.mean([m.g_h_g for m in draws]) == pytest.approx(pop_ghg, rel=0.15)
    raw = np.mean([m.g_h_g + m.trace_h_sigma / 8 for m in draws])
    assert raw > 1.5 * pop_ghg                     # without the correction the estimate is far off


def test_needs_two_examples():
    with pytest.raises(ValueError, match="at least 2 examples, got 1"):
        moments(torch.zeros(1, 3), lambda v: v)


# --- λ_max by power iteration, and the SGD stability bound --------------------------------------

from batchscope.noise.hessian import power_iteration, sgd_stability_bound, sharpness  # noqa: E402


def _sym(eigs, seed=0):
    q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T


def test_power_iteration_finds_the_top_eigenvalue_of_a_known_matrix():
    m = _sym([5.0, 1.0, 0.5, -0.2, 0.0])
    got = power_iteration(lambda v: m @ v, 5, iters=200, tol=1e-10, generator=torch.Generator().manual_seed(1))
    assert got.converged and got.value == pytest.approx(5.0, rel=1e-6)


def test_power_iteration_past_a_dominant_negative_eigenvalue():
    # the largest magnitude is -8 (a saddle); the top of the spectrum is 3
    m = _sym([-8.0, 3.0, 1.0, 0.1])
    got = power_iteration(lambda v: m @ v, 4, iters=500, tol=1e-12, generator=torch.Generator().manual_seed(2))
    assert got.value == pytest.approx(3.0, rel=1e-5)
    assert got.iterations > 2


def test_sharpness_of_least_squares_is_the_top_eigenvalue_of_2_over_n_xtx():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 1, generator=g)
    model = torch.nn.Linear(6, 1)
    xa = torch.cat([x, torch.ones(64, 1)], dim=1).double()          # the bias is a column of ones
    exact = float(torch.linalg.eigvalsh(2.0 / 64 * xa.T @ xa).max())
    before = [p.detach().clone() for p in model.parameters()]
    got = sharpness(model, torch.nn.functional.mse_loss, x, y, iters=300, tol=1e-9)
    assert got.converged and got.value == pytest.approx(exact, rel=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


def test_sharpness_restores_batchnorm_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    mean = model[1].running_mean.clone()
    got = sharpness(model, torch.nn.functional.cross_entropy, x, y, iters=10)
    assert got.value > 0 and torch.equal(model[1].running_mean, mean)


def test_sharpness_refuses_a_non_finite_loss():
    model = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="loss is nan"):
        sharpness(model, torch.nn.functional.mse_loss, torch.full((4, 3), float("nan")), torch.zeros(4, 1))


def test_sgd_stability_bound_is_the_edge_of_gradient_descent_on_a_quadratic():
    lam = 4.0
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        edge = sgd_stability_bound(lam, momentum, nesterov)
        for lr, grows in ((0.98 * edge, False), (1.02 * edge, True)):
            opt_x = torch.tensor([1.0], requires_grad=True)
            opt = torch.optim.SGD([opt_x], lr=lr, momentum=momentum, nesterov=nesterov)
            for _ in range(2000):
                opt.zero_grad()
                (0.5 * lam * opt_x ** 2).sum().backward()
                opt.step()
            assert (not abs(float(opt_x)) < 1.0) == grows, (momentum, nesterov, lr)   # nan: it overflowed
    assert sgd_stability_bound(lam) == pytest.approx(0.5)
    assert sgd_stability_bound(0.0) == math.inf and sgd_stability_bound(-1.0) == math.inf
