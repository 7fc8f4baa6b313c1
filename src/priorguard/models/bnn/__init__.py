"""Bayesian neural networks (numpyro): NUTS, SVI, MAP and deep ensembles.

A :class:`~priorguard.priors.models.BNNModel` spec becomes a multilayer
perceptron with declared priors on its weights and biases, fitted to
:class:`~priorguard.models.base.Data` by :func:`fit_bnn`, which returns a
:class:`BNNPosterior` honouring the :class:`~priorguard.models.base.Posterior`
protocol.

Shapes used throughout:
    N: number of data / query points.   D: input dimension.
    O: output dimension (1 for T and I, the state dimension for W).
    C: chains.   S: posterior draws (per chain in ``samples``; all chains
    pooled in function draws).

The model (``p`` is ``site_prefix``, layers ``i = 0..depth``)::

    x_s = (x - lo) / (hi - lo)                    # feature_ranges, when given
    y_s = (y - mean(y)) / std(y)                  # per output, stored and undone
    p/layer{i}/w  [fan_in, fan_out] ~ weights     # or horseshoe, see below
    p/layer{i}/b  [fan_out]         ~ bias
    h_{i+1} = act(h_i @ w_i + b_i)                # no activation on the last layer
    p/noise       [O]               ~ noise       # std on standardised targets
    p/y           [N, O]            ~ Normal(h_L, noise)

The declared priors are used as written (no fan-in scaling). Hyperpriors
(``{dist = "Normal", loc = 0, scale = {dist = "HalfNormal", ...}}``) are
sampled once per layer as ``p/layer{i}/w/scale``; a Normal weight prior with
hyperpriors is sampled non-centred (``p/layer{i}/w_decentered``).

Simplicity prior (``spec.simplicity``) replaces the weight prior with a
horseshoe, non-centred for NUTS, per layer::

    p/layer{i}/tau     ~ HalfCauchy(global_scale)          # global
    p/layer{i}/lambda  ~ HalfCauchy(1)  [fan_in, fan_out]  # local
    p/layer{i}/w_raw   ~ Normal(0, 1)   [fan_in, fan_out]
    p/layer{i}/w       = w_raw * tau * lambda              # deterministic

and the regularised horseshoe (Piironen & Vehtari 2017) adds a slab
``p/layer{i}/c2 ~ InverseGamma(slab_df / 2, slab_df * slab_scale**2 / 2)`` and
uses ``lambda_tilde = sqrt(c2 lambda^2 / (c2 + tau^2 lambda^2))`` in place of
``lambda``.

Speed prior (``spec.speed``): every depth 0..max_depth is fitted (depth 0 is a
linear model; widths from :func:`~priorguard.priors.structure.layer_widths`),
and ``p(depth | data) ∝ depth_prior(depth) * Z(depth)`` with the evidence ``Z``
approximated per inference method:

    * SVI: the ELBO (64-particle estimate at the fitted guide), a lower bound;
    * MAP, ensemble: Laplace at the best mode, in unconstrained coordinates,
      with a generalised Gauss-Newton curvature for the likelihood and the
      exact Hessian of the prior part (MacKay 1992; Immer et al. 2021);
    * NUTS: the same Laplace approximation at the mode that L-BFGS reaches from
      the lowest-energy draw of each chain (best chain kept).

All of these see one of the ``prod_i width_i!`` (times ``2**width_i`` for tanh)
equivalent relabellings of the hidden units; ``symmetry_correction=True`` adds
the log of that count (MacKay 1992), which over-counts when units are
redundant, so it is off by default. Predictions, densities and
function draws are averaged over depths by ``p(depth | data)`` (Bayesian model
averaging); ``to_datatree()`` describes the most probable depth.

Parallel chains: ``numpyro.set_host_device_count(n)`` must run before JAX
starts (the priorguard CLI does it at start-up); chains then run with
``pmap`` when ``jax.local_device_count() >= chains``, else one after another.
A second fit with the same spec and data shapes compiles nothing.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from priorguard.models.base import as_data
    >>> from priorguard.priors.models import BNNModel
    >>> spec = BNNModel(model="bnn", hidden=[6], noise=0.4,
    ...                 inference={"method": "map", "steps": 150, "restarts": 2})
    >>> x = jnp.linspace(-1.0, 1.0, 40)[:, None]
    >>> post = fit_bnn(spec, as_data(x, jnp.sin(2 * x)), key=jax.random.key(0))
    >>> post.predict(x).mean.shape
    (40, 1)
    >>> post.sample_functions(jax.random.key(1), 3)(x).shape
    (3, 40, 1)

Modules, lowest first: ``network`` (the forward pass, the numpyro sites, the
scaling), ``posterior`` (:class:`DepthFit`, :class:`BNNPosterior`, its
DataTree), ``fit`` (the compiled programs, the fit and evidence per depth,
:func:`fit_bnn`, :class:`BNN`).
"""

from priorguard.models.bnn.fit import BNN, bnn_model, fit_bnn
from priorguard.models.bnn.network import DepthMixtureApply, MLPApply
from priorguard.models.bnn.posterior import BNNPosterior, DepthFit

__all__ = [
    "BNN",
    "BNNPosterior",
    "DepthFit",
    "MLPApply",
    "DepthMixtureApply",
    "fit_bnn",
    "bnn_model",
]
