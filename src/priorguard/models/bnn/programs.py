"""The numpyro model of one BNN structure and its compiled programs, cached per structure.

Apart from the fit (:mod:`priorguard.models.bnn.fit`) so that the posterior's DataTree
(its Laplace draws) can reach the same programs without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from jaxtyping import Array

from priorguard._compile import cached_program
from priorguard.models.bnn.network import _build_model, _NetConfig
from priorguard.models.evidence import make_laplace
from priorguard.models.inference import ModeProgram, NutsProgram, SviProgram, make_constrain
from priorguard.priors import sites
from priorguard.priors.distributions import Prior
from priorguard.priors.models import NutsInference, SviInference

#: Monte-Carlo particles of the ELBO used as SVI's evidence.
_ELBO_PARTICLES = 64


class _Programs:
    """The model of one structure and its compiled programs (cached per structure)."""

    def __init__(self, cfg: _NetConfig) -> None:
        self.cfg = cfg
        self.model = _build_model(cfg)
        self.name = f"bnn[{cfg.prefix},d={cfg.depth}]"
        self._cache: dict[Any, Any] = {}

    def _get(self, key: Any, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def nuts(self, inf: NutsInference) -> NutsProgram:
        key = ("nuts", inf.warmup, inf.samples, inf.chains, inf.target_accept, inf.max_tree_depth)
        return self._get(key, lambda: NutsProgram(
            self.model, warmup=inf.warmup, samples=inf.samples, chains=inf.chains,
            target_accept=inf.target_accept, max_tree_depth=inf.max_tree_depth, name=self.name + "/nuts"))

    def svi(self, inf: SviInference) -> SviProgram:
        key = ("svi", inf.guide, inf.learning_rate, inf.steps, inf.samples)
        return self._get(key, lambda: SviProgram(
            self.model, guide=inf.guide, learning_rate=inf.learning_rate, steps=inf.steps,
            samples=inf.samples, particles=_ELBO_PARTICLES, name=self.name + "/svi"))

    def mode(self, optimizer: str, steps: int, learning_rate: float) -> ModeProgram:
        key = ("mode", optimizer, steps, learning_rate)
        return self._get(key, lambda: ModeProgram(
            self.model, optimizer=optimizer, steps=steps, learning_rate=learning_rate,
            name=self.name + "/mode"))

    def constrain(self) -> Any:
        return self._get("constrain", lambda: make_constrain(self.model, self.name))

    def laplace(self) -> Any:
        return self._get("laplace", lambda: make_laplace(self.model, self.name, eigen_floor=1e-8))


def _programs(cfg: _NetConfig) -> _Programs:
    return cached_program(("bnn", cfg), lambda: _Programs(cfg))


def _net_params(samples: Mapping[str, Array], cfg: _NetConfig, num: int) -> dict[str, Array]:
    """Flattened ``[C*S, ...]`` network parameters (standardised units) from site draws."""
    p = cfg.prefix
    out: dict[str, Array] = {}
    for i in range(cfg.depth + 1):
        for part in ("w", "b"):
            v = samples[sites.layer_site(p, i, part)]
            out[f"layer{i}/{part}"] = v.reshape((num, *v.shape[2:]))
    if isinstance(cfg.noise, Prior):
        v = samples[sites.noise_site(p)]
        out["noise"] = v.reshape((num, *v.shape[2:]))
    else:
        dtype = out["layer0/w"].dtype
        out["noise"] = jnp.full((num, cfg.out_dim), cfg.noise, dtype=dtype)
    return out
