"""priorguard: explicit priors for goal learning, and planners that veto on posterior doubt.

The names the docs use are here (loaded on first use, so ``import priorguard`` stays
light); the subpackages hold the rest: :mod:`priorguard.priors` (distributions, kernels,
simplicity and speed priors), :mod:`priorguard.models` (T, I, W and D as GPs or BNNs),
:mod:`priorguard.planners` (one-step, MCTS, CEM, vetoes, audits), :mod:`priorguard.envs`
(environments with train/deploy splits; importing priorguard registers them with
gymnasium, so ``gymnasium.make("priorguard/CoinShift-v1", split="deploy")`` works after
it), :mod:`priorguard.experiments` (the spec, the runner, sweeps) and
:mod:`priorguard.analysis` (ArviZ diagnostics, reports).

Example:
    >>> import priorguard as pg
    >>> spec = pg.load_spec("coin-shift")
    >>> spec.terminal.model
    'gp'
"""

from __future__ import annotations

import importlib
from typing import Any

from priorguard import envs

__version__ = "0.1.0"

#: public name -> the module that defines it
_FACE = {
    # process set-up (float64, host devices, compilation cache), before JAX is first used
    "configure": "priorguard._runtime",
    # the experiment: spec, shipped experiments, runs
    **dict.fromkeys(["ExperimentSpec", "load_spec", "run_experiment", "run_sweep"], "priorguard.experiments"),
    "SpecError": "priorguard.priors",
    "Prior": "priorguard.priors",
    # models behind one Posterior contract
    **dict.fromkeys(["Data", "FunctionDraws", "Posterior", "Prediction", "as_data", "fit_role"], "priorguard.models"),
    **dict.fromkeys(["fit_gp", "GPPosterior"], "priorguard.models.gp"),
    **dict.fromkeys(["fit_bnn", "BNN", "BNNPosterior"], "priorguard.models.bnn"),
    # planners, vetoes, audits
    **dict.fromkeys(["PlanningModels", "ActionStats", "PlanOutput", "plan_one_step", "plan_mcts", "plan_cem",
                     "VetoRule", "chain", "epistemic_std_veto", "value_drop_veto", "lower_confidence_bound",
                     "make_veto_rule", "register_veto_rule", "conformal_threshold", "random_state_audit",
                     "adversarial_search"], "priorguard.planners"),
    # environments
    **dict.fromkeys(["env_info", "list_envs", "register_env", "OutcomeFlag"], "priorguard.envs"),
    # analysis
    **dict.fromkeys(["diagnose", "read_datatree"], "priorguard.analysis.diagnostics"),
    "build_report": "priorguard.analysis.report",
}


def __getattr__(name: str) -> Any:
    if name in _FACE:
        value = getattr(importlib.import_module(_FACE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'priorguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["__version__", "envs", *_FACE]
