"""Prior draws match the declared distributions; structure and speed priors behave as documented."""

import math

import jax
import numpy as np
import pytest
from numpyro.infer import Predictive
from scipy import stats

from priorguard.priors import (
    DepthSpeedPrior,
    StructureSearch,
    default_prior,
    depth_prior,
    enumerate_structures,
    parse_kernel,
    structure_prior,
)
from priorguard.models.bnn import bnn_model
from priorguard.models.gp.kernels import compile_program
from priorguard.models.gp.objective import gp_model
from priorguard.priors import BNNModel
from priorguard.priors.structure import layer_widths, mlp_flops

N = 4000


def draws_of(kernel_table, dim, n=N, seed=0, noise=0.1):
    """Prior draws of a GP's sites, through the model a fit samples (``gp_model``), without data."""
    program = compile_program(parse_kernel(kernel_table), noise=noise, mean="zero",
                              feature_names=[f"x{i}" for i in range(dim)], site_prefix="terminal")
    return Predictive(lambda: gp_model(program), num_samples=n)(jax.random.key(seed))


def test_declared_lognormal_and_halfnormal_pass_ks():
    d = draws_of({"kind": "rbf", "ard": False,
                  "lengthscale": {"dist": "LogNormal", "loc": 0.5, "scale": 0.7},
                  "variance": {"dist": "HalfNormal", "scale": 2.0}}, dim=3)
    ls = np.asarray(d["terminal/kernel/lengthscale"])
    var = np.asarray(d["terminal/kernel/variance"])
    assert ls.shape == (N,)
    # KS at the 0.1% level: a wrong distribution of this size fails by far.
    assert stats.kstest(ls, stats.lognorm(s=0.7, scale=math.exp(0.5)).cdf).pvalue > 1e-3
    assert stats.kstest(var, stats.halfnorm(scale=2.0).cdf).pvalue > 1e-3
    # and a wrong reference is rejected (the test can fail)
    assert stats.kstest(ls, stats.lognorm(s=0.7, scale=math.exp(0.7)).cdf).pvalue < 1e-3


def test_hyperprior_moments_within_monte_carlo_error():
    # log(lengthscale) ~ Normal(0, s), s ~ HalfNormal(1): E = 0, Var = E[s^2] = 1.
    d = draws_of({"kind": "matern52", "ard": False,
                  "lengthscale": {"dist": "LogNormal", "loc": 0.0, "scale": {"dist": "HalfNormal", "scale": 1.0}}},
                 dim=1)
    assert "terminal/kernel/lengthscale/scale" in d
    log_ls = np.log(np.asarray(d["terminal/kernel/lengthscale"]))
    se_mean = log_ls.std() / math.sqrt(N)
    assert abs(log_ls.mean()) < 4 * se_mean
    # Var of log ls: sample var has SE ~ sqrt((m4 - s^4)/N)
    m4 = np.mean(log_ls**4)
    se_var = math.sqrt((m4 - log_ls.var() ** 2) / N)
    assert abs(log_ls.var() - 1.0) < 4 * se_var


def test_default_lengthscale_prior_is_dimension_scaled():
    for dim in (1, 4, 16):
        d = draws_of({"kind": "rbf"}, dim=dim, n=2000, seed=dim)
        ls = np.asarray(d["terminal/kernel/lengthscale"])
        assert ls.shape == (2000, dim)
        expected_median = math.exp(math.sqrt(2) + 0.5 * math.log(dim))
        # median of log-normal draws: SE of the sample median of log ls ~ 1.2533 * sigma / sqrt(n)
        se = 1.2533 * math.sqrt(3) / math.sqrt(ls.size)
        assert abs(np.median(np.log(ls)) - math.log(expected_median)) < 5 * se * math.sqrt(dim)
    assert default_prior("lengthscale", 4).params["loc"] == pytest.approx(math.sqrt(2) + 0.5 * math.log(4))


def test_site_names_are_stable():
    d = draws_of({"kind": "product", "terms": [{"kind": "periodic"}, {"kind": "sum", "terms": [
        {"kind": "rbf"}, {"kind": "white"}]}]}, dim=2, n=2)
    assert sorted(d) == [
        "terminal/kernel/terms/0/lengthscale",
        "terminal/kernel/terms/0/period",
        "terminal/kernel/terms/0/variance",
        "terminal/kernel/terms/1/terms/0/lengthscale",
        "terminal/kernel/terms/1/terms/0/variance",
        "terminal/kernel/terms/1/terms/1/variance",
    ]
    noise = draws_of({"kind": "rbf"}, dim=2, n=2, noise=None)  # a learned noise, under its default prior
    assert noise["terminal/noise"].shape == (2,)
    # a BNN's sites, under a horseshoe: a global and local scales per layer (docs/priors.md lists them)
    spec = BNNModel(model="bnn", hidden=[4], simplicity={"kind": "horseshoe", "global_scale": 0.1})
    model = bnn_model(spec, in_dim=2, out_dim=3)
    bnn = Predictive(model, num_samples=2)(jax.random.key(1), np.zeros((5, 2)))
    assert {k for k in bnn if not k.endswith("/y")} == {
        f"world/layer{i}/{leaf}" for i in (0, 1) for leaf in ("tau", "lambda", "w_raw", "w", "b")} | {"world/noise"}
    assert bnn["world/noise"].shape == (2, 3) and bnn["world/layer0/lambda"].shape == (2, 2, 4)


def test_structure_prior_normalises_and_orders_by_description_length():
    search = StructureSearch(search=["rbf", "linear", "periodic"], max_terms=3, simplicity=1.0)
    prior = structure_prior(search, dim=2)
    assert sum(p for _, p in prior) == pytest.approx(1.0, abs=1e-12)
    structures = [s for s, _ in prior]
    assert len(set(structures)) == len(structures) == len(enumerate_structures(search))
    dls = [s.description_length(search, 2) for s in structures]
    assert all(a <= b + 1e-12 for a, b in zip(dls, dls[1:])), "mass must fall as description length grows"
    # exact ratio: p(a)/p(b) = exp(-simplicity * (DL(a) - DL(b)))
    (s0, p0), (s1, p1) = prior[0], prior[-1]
    assert p0 / p1 == pytest.approx(math.exp(dls[-1] - dls[0]), rel=1e-9)


def test_structure_prior_uniform_without_simplicity_and_speed_penalises_cost():
    flat = structure_prior(StructureSearch(search=["rbf", "linear"], max_terms=2, simplicity=0.0), dim=3)
    probs = [p for _, p in flat]
    assert max(probs) == pytest.approx(min(probs))
    fast = structure_prior(StructureSearch(search=["rbf", "linear"], max_terms=1, simplicity=0.0, speed=1.0), dim=3)
    mass = {s.expression: p for s, p in fast}
    assert mass["linear"] > mass["rbf"]  # linear is cheaper per kernel entry


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 2.0])
def test_depth_prior_falls_at_documented_rate(strength):
    hidden, din, dout = [32, 16], 5, 3
    prior = depth_prior(hidden, in_dim=din, out_dim=dout, max_depth=4, strength=strength)
    assert sum(p for _, p in prior) == pytest.approx(1.0)
    flops = [mlp_flops(din, dout, layer_widths(hidden, d)) for d in range(5)]
    for (d, p), (_, q) in zip(prior, prior[1:]):
        assert q / p == pytest.approx((flops[d] / flops[d + 1]) ** strength, rel=1e-9)
    if strength > 0:
        assert [p for _, p in prior] == sorted((p for _, p in prior), reverse=True)


def test_depth_spec_defaults():
    assert DepthSpeedPrior(kind="depth").max_depth == 3
    assert layer_widths([32, 16], 4) == [32, 16, 16, 16]
