"""Model specs for T, I, W and D: Gaussian processes and Bayesian neural networks.

Each role (``terminal``, ``instrumental``, ``world``, ``termination``) is one table with
``model = "gp"`` or ``model = "bnn"``. Simplicity priors live here as horseshoe
sparsity on BNN weights and as kernel structure search on GPs; the speed prior
as a prior over BNN depth.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from priorguard.priors.distributions import Prior, _fail, check_support
from priorguard.priors.kernels import KernelOrSearch, ParamValue, StationaryKernel


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# --- inference -----------------------------------------------------------------


class MapInference(_Strict):
    """Maximum a posteriori hyperparameters / weights (log-likelihood + log-prior)."""

    method: Literal["map"]
    steps: int = Field(default=200, ge=1, le=100_000)
    restarts: int = Field(default=1, ge=1, le=64)
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    learning_rate: float = Field(default=0.05, gt=0.0, le=10.0)


class NutsInference(_Strict):
    """Full Bayes with NUTS (numpyro); chains run in parallel when devices allow."""

    method: Literal["nuts"]
    warmup: int = Field(default=500, ge=1, le=100_000)
    samples: int = Field(default=500, ge=1, le=100_000)
    chains: int = Field(default=2, ge=1, le=64)
    target_accept: float = Field(default=0.8, gt=0.0, lt=1.0)
    max_tree_depth: int = Field(default=10, ge=1, le=15)


class SviInference(_Strict):
    """Stochastic variational inference with a mean-field normal (AutoDiagonalNormal) or low-rank guide."""

    method: Literal["svi"]
    steps: int = Field(default=2000, ge=1, le=1_000_000)
    guide: Literal["normal", "lowrank"] = "normal"
    learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)
    samples: int = Field(default=200, ge=1, le=100_000)


class EnsembleInference(_Strict):
    """Deep ensemble: MAP fits from independent draws of the prior as initialisations.

    The BNN default. Mean-field SVI is overconfident away from the data (its epistemic
    std barely grows there; docs/priors.md, "Which BNN inference"); an ensemble's
    members agree where the data pin them and disagree where they do not.
    """

    method: Literal["ensemble"]
    members: int = Field(default=5, ge=2, le=256)
    #: Adam steps per round. Rounds go on until no member's log density improves by more
    #: than ``tolerance * (1 + |log density|)`` in a round, or ``max_steps`` are spent
    #: (the fit's diagnostics record ``optimiser_steps`` and ``converged``). Depths are
    #: compared by the evidence at their modes, so a deeper net stopped early would lose
    #: to a shallower one it should beat.
    steps: int = Field(default=1000, ge=1, le=1_000_000)
    max_steps: int = Field(default=16000, ge=1, le=10_000_000)
    tolerance: float = Field(default=1e-2, gt=0.0, le=1.0)
    learning_rate: float = Field(default=0.01, gt=0.0, le=10.0)

    @model_validator(mode="after")
    def _rounds(self) -> Any:
        if self.max_steps < self.steps:
            raise _fail("max_steps", f"max_steps ({self.max_steps}) must be >= steps ({self.steps})",
                        param="max_steps")
        return self


Inference = Annotated[
    Union[
        Annotated[MapInference, Tag("inference:map")],
        Annotated[NutsInference, Tag("inference:nuts")],
        Annotated[SviInference, Tag("inference:svi")],
        Annotated[EnsembleInference, Tag("inference:ensemble")],
    ],
    Discriminator(
        lambda v: f"inference:{v.get('method') if isinstance(v, dict) else getattr(v, 'method', None)}",
        custom_error_type="unknown_method",
        custom_error_message="inference needs `method`: map, nuts, svi or ensemble",
    ),
]

# --- simplicity and speed priors for BNNs ----------------------------------------


class Horseshoe(_Strict):
    """Horseshoe sparsity on weights: w ~ N(0, (tau * lambda)^2), lambda ~ C+(0, 1), tau ~ C+(0, global_scale)."""

    kind: Literal["horseshoe"]
    global_scale: float = Field(default=0.1, gt=0.0)


class RegularisedHorseshoe(_Strict):
    """Regularised (Finnish) horseshoe (Piironen & Vehtari, 2017) with a Student-t slab."""

    kind: Literal["regularized_horseshoe"]
    global_scale: float = Field(default=0.1, gt=0.0)
    slab_scale: float = Field(default=2.0, gt=0.0)
    slab_df: float = Field(default=4.0, gt=0.0)


Sparsity = Annotated[
    Union[
        Annotated[Horseshoe, Tag("simplicity:horseshoe")],
        Annotated[RegularisedHorseshoe, Tag("simplicity:regularized_horseshoe")],
    ],
    Discriminator(
        lambda v: f"simplicity:{v.get('kind') if isinstance(v, dict) else getattr(v, 'kind', None)}",
        custom_error_type="unknown_simplicity",
        custom_error_message="simplicity needs `kind`: horseshoe or regularized_horseshoe",
    ),
]


class DepthSpeedPrior(_Strict):
    """Speed prior over network depth: p(depth) ∝ 2^(-strength * log2 FLOPs(depth)) = FLOPs^-strength.

    Depth counts hidden layers, 0 (a linear model) to ``max_depth``; layer i
    has width ``hidden[i]`` (the last width repeats past the list).
    """

    kind: Literal["depth"]
    max_depth: int = Field(default=3, ge=1, le=8)
    strength: float = Field(default=1.0, ge=0.0)


# --- models --------------------------------------------------------------------


class SparseSpec(_Strict):
    """Sparse variational GP with inducing points, trained on minibatches."""

    inducing: int = Field(default=256, ge=1, le=10_000)
    batch_size: int = Field(default=512, ge=1)
    steps: int = Field(default=1000, ge=1)
    learning_rate: float = Field(default=0.01, gt=0.0)


class _ModelBase(_Strict):
    #: Names of the environment features the model sees (None: all of them).
    features: list[str] | None = None
    #: Observation-noise standard deviation (on standardised targets).
    noise: ParamValue | None = None
    #: W only: output feature -> the features it reads, besides the action (a dynamic Bayesian
    #: network's structure, a simplicity prior on W; see :mod:`priorguard.models.factored`).
    #: Outputs not listed read all of W's features.
    parents: dict[str, list[str]] | None = None

    @field_validator("features")
    @classmethod
    def _features_nonempty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise _fail("empty", "must name at least one feature, or be left out to use all")
            if len(set(v)) != len(v):
                raise _fail("duplicates", f"has duplicates: {v}")
        return v

    @field_validator("parents")
    @classmethod
    def _parents_unique(cls, v: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for out, names in (v or {}).items():
            if len(set(names)) != len(names):
                raise _fail("duplicates", f"{out!r} lists a parent twice: {names}")
        return v

    @model_validator(mode="after")
    def _noise_support(self) -> Any:
        if self.noise is not None:
            problem = check_support(self.noise, "positive", path="noise")
            if problem:
                raise _fail("prior_support", problem, param="noise")
        return self


#: Default floor of a learned GP observation-noise std, on standardised targets:
#: GPyTorch's and BoTorch's noise-variance bound of 1e-4 (see ``GPModel.noise_floor``).
NOISE_FLOOR = 1e-2


class GPModel(_ModelBase):
    """A Gaussian process with an explicit kernel and hyperpriors."""

    model: Literal["gp"]
    kernel: KernelOrSearch = Field(default_factory=lambda: StationaryKernel(kind="rbf"))
    #: ``"zero"``: zero on standardised targets (the GP reverts to the training
    #: targets' average away from data); ``"constant"``: a learned constant; a
    #: number: a fixed prior mean in the targets' units (e.g. ``0.0``: unseen
    #: states are worth nothing until data says otherwise).
    mean: Literal["zero", "constant"] | Annotated[float, Field(allow_inf_nan=False)] = "zero"
    inference: Annotated[
        Union[Annotated[MapInference, Tag("inference:map")], Annotated[NutsInference, Tag("inference:nuts")]],
        Discriminator(
            lambda v: f"inference:{v.get('method') if isinstance(v, dict) else getattr(v, 'method', None)}",
            custom_error_type="unknown_method",
            custom_error_message="a GP's inference `method` is map or nuts",
        ),
    ] = Field(default_factory=lambda: MapInference(method="map"))
    sparse: SparseSpec | None = None
    #: A std added in quadrature to a learned observation noise (standardised
    #: targets): the likelihood's noise is ``sqrt(noise^2 + noise_floor^2)``.
    #: Deterministic labels repeat exactly at revisited states, and without a
    #: floor MAP can drive the noise to 0 and fit a look-up table. The default is
    #: GPyTorch's and BoTorch's noise-variance bound (1e-4); a fixed ``noise`` is
    #: used as given.
    noise_floor: float = Field(default=NOISE_FLOOR, ge=0.0, le=1.0)


class BNNModel(_ModelBase):
    """A Bayesian multilayer perceptron with declared weight priors."""

    model: Literal["bnn"]
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(default_factory=lambda: [32, 32], max_length=8)
    activation: Literal["tanh", "relu", "gelu", "softplus", "sigmoid", "swish"] = "tanh"
    weights: ParamValue = Field(default_factory=lambda: Prior(dist="Normal", params={"loc": 0.0, "scale": 1.0}))
    bias: ParamValue = Field(default_factory=lambda: Prior(dist="Normal", params={"loc": 0.0, "scale": 1.0}))
    simplicity: Sparsity | None = None
    speed: DepthSpeedPrior | None = None
    inference: Inference = Field(default_factory=lambda: EnsembleInference(method="ensemble"))

    @model_validator(mode="after")
    def _check(self) -> BNNModel:
        for name in ("weights", "bias"):
            value = getattr(self, name)
            if not isinstance(value, Prior):
                raise _fail("prior_type", "must be a distribution table, e.g. { dist = \"Normal\", loc = 0.0, scale = 1.0 }",
                            param=name)
            problem = check_support(value, "real", path=name)
            if problem:
                raise _fail("prior_support", problem, param=name)
        if self.speed is not None and self.speed.max_depth < len(self.hidden):
            raise _fail(
                "depth",
                f"speed.max_depth ({self.speed.max_depth}) is smaller than the {len(self.hidden)} hidden"
                " layers declared; raise max_depth or shorten hidden",
                param="speed",
            )
        return self


class _Instrumental(BaseModel):
    discount: float = Field(default=0.95, gt=0.0, le=1.0)
    #: How regression targets are made: Monte-Carlo returns of T along W rollouts
    #: under the proposal policy, fitted value iteration, or the rater's labels that
    #: followed each state in the logged train episodes (under the behaviour policy).
    targets: Literal["mc_returns", "fvi", "data_returns"] = "mc_returns"
    horizon: int = Field(default=10, ge=1, le=1000)
    rollouts: int = Field(default=8, ge=1, le=1024)


class InstrumentalGP(GPModel, _Instrumental):
    """I as a GP: expected discounted future terminal value."""


class InstrumentalBNN(BNNModel, _Instrumental):
    """I as a BNN: expected discounted future terminal value."""


def _model_tag(v: Any) -> str:
    kind = v.get("model") if isinstance(v, dict) else getattr(v, "model", None)
    return f"model:{kind}"


ModelSpec = Annotated[
    Union[Annotated[GPModel, Tag("model:gp")], Annotated[BNNModel, Tag("model:bnn")]],
    Discriminator(_model_tag, custom_error_type="unknown_model",
                  custom_error_message="`model` must be \"gp\" or \"bnn\""),
]
InstrumentalSpec = Annotated[
    Union[Annotated[InstrumentalGP, Tag("model:gp")], Annotated[InstrumentalBNN, Tag("model:bnn")]],
    Discriminator(_model_tag, custom_error_type="unknown_model",
                  custom_error_message="`model` must be \"gp\" or \"bnn\""),
]
