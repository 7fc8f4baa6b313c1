"""Planners that check a proposal policy with T at every predicted state, and veto.

* :func:`plan_one_step`: K proposals from A, one step of W in S worlds, T + I.
* :func:`plan_mcts`: MCTS on mctx (MuZero or Gumbel), one search per world,
  vetoes at the root and in the interior.
* :func:`plan_cem`: CEM/MPC for continuous actions, PETS-style over worlds.
* Veto and scoring rules composed with :func:`chain`, built by name through a
  registry (:func:`register_veto_rule`, :func:`make_veto_rule`); split-conformal
  calibration of the epistemic-std threshold.
* Audits: :func:`random_state_audit` (Clopper-Pearson bound) and
  :func:`adversarial_search`, over the policies of :mod:`priorguard.planners.policies`.
"""

from priorguard.planners.adversarial import AdversarialResult, adversarial_search
from priorguard.planners.audit import (
    AuditReport,
    AuditRollouts,
    audit_rollouts,
    clopper_pearson_upper,
    random_state_audit,
    summarise_audit,
)
from priorguard.planners.base import (
    ActionStats,
    CEMOutput,
    PlanOutput,
    SearchEmbedding,
    SearchOutput,
    world_std,
)
from priorguard.planners.cem import plan_cem, sequence_returns
from priorguard.planners.conformal import ConformalThreshold, calibration_scores, conformal_threshold
from priorguard.planners.mcts import make_recurrent_fn, make_search_root, plan_mcts
from priorguard.planners.one_step import plan_one_step
from priorguard.planners.policies import (
    ConstantAction,
    EmpiricalStateSampler,
    ObservedStateSampler,
    ProposalPolicy,
    ProposalProbs,
    planner_policy,
    proposal_policy,
)
from priorguard.planners.proposals import (
    BoxUniformProposal,
    DiscreteProposal,
    FixedProposal,
    MLPProposal,
    UniformProposal,
    fit_imitation,
    fit_policy_gradient,
    sample_from_logits,
)
from priorguard.planners.veto import (
    Chain,
    EpistemicStdVeto,
    LowerConfidenceBound,
    MaskRule,
    ValueDropVeto,
    VetoRule,
    VetoRuleFactory,
    apply_rule,
    chain,
    disarmed,
    epistemic_std_veto,
    identity,
    lower_confidence_bound,
    make_veto_rule,
    mask_rule,
    register_veto_rule,
    select_action,
    value_drop_veto,
    veto_rule_names,
)
from priorguard.planners.worlds import PlanningModels, action_stats

__all__ = [
    # models and outputs
    "ActionStats",
    "CEMOutput",
    "PlanOutput",
    "PlanningModels",
    "SearchEmbedding",
    "SearchOutput",
    "action_stats",
    "world_std",
    # proposals
    "BoxUniformProposal",
    "DiscreteProposal",
    "FixedProposal",
    "MLPProposal",
    "UniformProposal",
    "fit_imitation",
    "fit_policy_gradient",
    "sample_from_logits",
    # rules
    "Chain",
    "ConformalThreshold",
    "EpistemicStdVeto",
    "LowerConfidenceBound",
    "MaskRule",
    "ValueDropVeto",
    "VetoRule",
    "VetoRuleFactory",
    "apply_rule",
    "calibration_scores",
    "chain",
    "conformal_threshold",
    "disarmed",
    "epistemic_std_veto",
    "identity",
    "lower_confidence_bound",
    "make_veto_rule",
    "mask_rule",
    "register_veto_rule",
    "select_action",
    "value_drop_veto",
    "veto_rule_names",
    # planners
    "make_recurrent_fn",
    "make_search_root",
    "plan_cem",
    "plan_mcts",
    "plan_one_step",
    "sequence_returns",
    # audits
    "AdversarialResult",
    "AuditReport",
    "AuditRollouts",
    "ConstantAction",
    "EmpiricalStateSampler",
    "ObservedStateSampler",
    "ProposalPolicy",
    "ProposalProbs",
    "adversarial_search",
    "audit_rollouts",
    "clopper_pearson_upper",
    "planner_policy",
    "proposal_policy",
    "random_state_audit",
    "summarise_audit",
]
