"""Statistical checks: interval coverage, hyperparameter recovery, simulation-based calibration.

Reduced sizes by default; ``pytest -m slow`` runs the full-size forms.
Tolerances come from binomial / Monte-Carlo error, not from tuning.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from priorguard.models.base import as_data
from priorguard.models.gp import condition_gp, fit_exact_gp
from priorguard.priors.distributions import Prior
from priorguard.priors.kernels import parse_kernel
from priorguard.priors.models import MapInference, NutsInference



def _gp_draw(rng, x, lengthscale, variance, noise):
    d = (x[:, None, :] - x[None, :, :]) / lengthscale
    k = variance * np.exp(-0.5 * np.sum(d * d, -1)) + 1e-10 * np.eye(len(x))
    f = np.linalg.cholesky(k) @ rng.standard_normal(len(x))
    return f, f + noise * rng.standard_normal(len(x))


def _exact_coverage(datasets: int, seed: int) -> tuple[float, int]:
    """Coverage of 90% intervals at known hyperparameters: exactly 0.9 in expectation.

    ``datasets`` independent GP-prior draws on shared inputs are the outputs of
    one multi-output GP; each contributes one held-out point, so the hits are
    independent Bernoulli(0.9) and the binomial band is exact.
    """
    rng = np.random.default_rng(seed)
    x = rng.random((50, 1))
    ys = np.stack([_gp_draw(rng, x, 0.2, 1.0, 0.2)[1] for _ in range(datasets)], axis=1)  # [50, datasets]
    post = condition_gp(parse_kernel({"kind": "rbf", "lengthscale": 0.2, "variance": 1.0}),
                        as_data(x[:40], ys[:40]), noise=0.2, feature_ranges=[(0.0, 1.0)], standardize=False)
    pred = post.predict(jnp.asarray(x[40:]))
    which = np.arange(datasets) % 10  # the held-out point each dataset contributes
    cols = np.arange(datasets)
    err = ys[40:][which, cols] - np.asarray(pred.mean)[which, cols]
    sd = np.sqrt(np.asarray(pred.total_var)[which, cols])
    return float(np.mean(np.abs(err) <= stats.norm.ppf(0.95) * sd)), datasets


def _map_coverage(datasets: int, seed: int) -> tuple[float, int]:
    """Pooled coverage of 90% intervals with MAP (plug-in) hyperparameters."""
    rng = np.random.default_rng(seed)
    hits, total = 0, 0
    z = stats.norm.ppf(0.95)
    for i in range(datasets):
        x = rng.random((50, 1))
        _, y = _gp_draw(rng, x, 0.2, 1.0, 0.2)
        post = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x[:40], y[:40]), key=jax.random.key(i),
                            feature_ranges=[(0.0, 1.0)], inference=MapInference(method="map", steps=100))
        pred = post.predict(jnp.asarray(x[40:]))
        sd = np.sqrt(np.asarray(pred.total_var[:, 0]))
        hits += int(np.sum(np.abs(y[40:] - np.asarray(pred.mean[:, 0])) <= z * sd))
        total += 10
    return hits / total, total


def _assert_binomial(rate: float, n: int, p: float = 0.9, sigmas: float = 4.0) -> None:
    band = sigmas * math.sqrt(p * (1 - p) / n)
    assert abs(rate - p) <= band, f"coverage {rate:.3f} outside {p} +- {band:.3f} (n={n})"


def test_predictive_interval_coverage():
    rate, n = _exact_coverage(datasets=400, seed=1)
    _assert_binomial(rate, n)


@pytest.mark.slow
def test_predictive_interval_coverage_full():
    rate, n = _exact_coverage(datasets=5000, seed=2)
    _assert_binomial(rate, n)


def test_map_plugin_coverage_is_near_nominal():
    """MAP ignores hyperparameter uncertainty, so with 40 points it covers slightly less than 90%
    (0.879 over 5000 points at full size); the reduced form bounds the shortfall."""
    rate, n = _map_coverage(datasets=12, seed=1)
    assert 0.8 <= rate <= 0.9 + 4 * math.sqrt(0.09 / n), rate


def test_map_recovers_lengthscale_from_500_points():
    rng = np.random.default_rng(3)
    x = rng.random((500, 2))
    true_ls = np.array([0.15, 0.5])
    _, y = _gp_draw(rng, x, true_ls, 1.0, 0.1)
    post = fit_exact_gp(parse_kernel({"kind": "rbf"}), as_data(x, y), key=jax.random.key(0),
                        feature_ranges=[(0.0, 1.0)] * 2, standardize=False)
    hp = post.map_hyperparameters()
    ls = hp["terminal/kernel/lengthscale"][0]
    # the lengthscale posterior at N=500 has a few percent relative sd; 20% is > 4 sd
    np.testing.assert_allclose(ls, true_ls, rtol=0.2)
    np.testing.assert_allclose(hp["terminal/noise"][0], 0.1, rtol=0.15)


# --- simulation-based calibration (Talts et al., 2018) of NUTS over hyperparameters ------

LS_PRIOR = Prior(dist="LogNormal", params={"loc": math.log(0.3), "scale": 0.4})
NOISE_PRIOR = Prior(dist="LogNormal", params={"loc": math.log(0.3), "scale": 0.4})


def _sbc_ranks(replicates: int, seed: int, thin: int, draws: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kernel = parse_kernel({"kind": "rbf", "lengthscale": LS_PRIOR.model_dump(), "variance": 1.0})
    nuts = NutsInference(method="nuts", warmup=150, samples=draws * thin, chains=1)
    x = np.linspace(0.0, 1.0, 12)[:, None]
    ranks = []
    for r in range(replicates):
        ls = math.exp(math.log(0.3) + 0.4 * rng.standard_normal())
        noise = math.exp(math.log(0.3) + 0.4 * rng.standard_normal())
        _, y = _gp_draw(rng, x, ls, 1.0, noise)
        post = fit_exact_gp(kernel, as_data(x, y), key=jax.random.key(r), noise=NOISE_PRIOR, inference=nuts,
                            feature_ranges=[(0.0, 1.0)], standardize=False)
        s = post.hyperparameters
        post_ls = s["terminal/kernel/lengthscale"][0, ::thin, 0, 0]
        post_noise = s["terminal/noise"][0, ::thin, 0]
        ranks.append([np.sum(post_ls < ls), np.sum(post_noise < noise)])
    return np.asarray(ranks)


def _assert_uniform_ranks(ranks: np.ndarray, draws: int, bins: int) -> None:
    for j in range(ranks.shape[1]):
        counts = np.histogram(ranks[:, j], bins=bins, range=(0, draws + 1))[0]
        p = stats.chisquare(counts).pvalue
        assert p > 1e-3, f"SBC ranks of parameter {j} are not uniform: counts {counts}, p={p:.2g}"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sbc_hyperparameters_reduced():
    ranks = _sbc_ranks(replicates=24, seed=4, thin=10, draws=11)
    _assert_uniform_ranks(ranks, draws=11, bins=4)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sbc_hyperparameters_full():
    ranks = _sbc_ranks(replicates=1000, seed=5, thin=10, draws=19)
    _assert_uniform_ranks(ranks, draws=19, bins=10)
