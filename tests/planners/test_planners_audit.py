"""Random-state audits (Clopper-Pearson coverage) and adversarial search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from planner_worlds import linear_draws, standardised

from priorguard.models.base import FunctionDraws
from priorguard.planners import (
    FixedProposal,
    PlanningModels,
    UniformProposal,
    adversarial_search,
    audit_rollouts,
    clopper_pearson_upper,
    epistemic_std_veto,
    plan_one_step,
    planner_policy,
    proposal_policy,
    random_state_audit,
    summarise_audit,
)

TRAP_WIDTH = 0.15


def true_rate(horizon):
    """P(misaligned) under the uniform policy: u < TRAP_WIDTH and action 0 taken at least once."""
    return TRAP_WIDTH * (1 - 0.5**horizon)


def _trap(params, x):
    # obs = [x0, u]; action 0 (one-hot column 2) drops x0 by depth_s where u < TRAP_WIDTH; u never moves.
    fall = jnp.where(x[:, 1] < TRAP_WIDTH, -params["depth"], 0.0) * x[:, 2]
    return jnp.stack([fall, jnp.zeros_like(fall)], axis=-1)


TRAP = PlanningModels(
    world=FunctionDraws({"depth": jnp.array([1.0, 2.0, 3.0])}, _trap),
    terminal=linear_draws(np.ones((3, 1, 1))),  # T = x0
    terminal_columns=(0,),
    num_actions=2,
)
POLICY = proposal_policy(UniformProposal(2), None)


def uniform_states(key):
    return jnp.stack([jnp.zeros(()), jax.random.uniform(key)])


AUDIT = {"state_sampler": uniform_states, "num_states": 400, "horizon": 3}  # one compile for most audits


def test_audit_counts_the_planted_misalignment_and_ranks_the_worst_states():
    report = random_state_audit(TRAP, jax.random.key(0), policy=POLICY, margin=0.5, confidence=0.95,
                                num_worst=5, **AUDIT)
    assert report.num_misaligned == int((report.drops > 0).sum())
    p = true_rate(3)
    assert abs(report.rate - p) < 4 * np.sqrt(p * (1 - p) / 400)
    assert report.rate <= report.upper_bound <= 1.0
    assert (report.worst_states[:, 1] < TRAP_WIDTH).all()
    assert np.all(np.diff(report.worst_drops) <= 0) and report.worst_drops[0] == report.drops.max()
    assert report.to_dict()["num_states"] == 400 and report.criterion == "terminal"


def test_audit_with_ground_truth_and_predicate():
    # Ground truth says only x1 < 0.05 is harmful: the model over-reports misalignment.
    truth = lambda obs: obs[:, 0] * (obs[:, 1] < 0.05)  # noqa: E731
    report = random_state_audit(TRAP, jax.random.key(1), policy=POLICY, margin=0.5, true_value=truth, **AUDIT)
    assert report.criterion == "true_value"
    assert 0 < report.num_misaligned < true_rate(3) * 400
    assert (report.worst_states[report.worst_drops > 0.5][:, 1] < 0.05).all()
    flagged = random_state_audit(TRAP, jax.random.key(1), policy=POLICY,
                                 misaligned=lambda obs, values: obs[:, -1, 0] < -2.5, **AUDIT)
    assert flagged.criterion == "predicate"
    assert 0 < flagged.num_misaligned < 400


def test_audit_of_the_planner_vetoes_the_trap():
    # A alone walks into the uncertain fall; the planner's epistemic veto refuses action 0 there.
    plan = lambda key, obs: plan_one_step(TRAP, UniformProposal(2), None, key, obs,  # noqa: E731
                                          num_candidates=2, fallback_action=1, veto=epistemic_std_veto(0.1))
    alone = random_state_audit(TRAP, jax.random.key(2), policy=POLICY, margin=0.5, **AUDIT)
    checked = random_state_audit(TRAP, jax.random.key(2), policy=planner_policy(plan), margin=0.5, **AUDIT)
    assert alone.num_misaligned > 20 and checked.num_misaligned == 0


def test_clopper_pearson_bound_covers_the_true_rate_at_its_level():
    """Simulation: 200 audits of 40 states; the bound covers the true rate >= level - 3 SE of the time."""
    level, audits = 0.9, 200
    keys = jax.random.split(jax.random.key(3), audits)
    batched = jax.jit(jax.vmap(lambda key: audit_rollouts(TRAP, key, state_sampler=uniform_states, policy=POLICY,
                                                          num_states=40, horizon=1)))(keys)
    batched = jax.tree.map(np.asarray, batched)
    reports = [summarise_audit(jax.tree.map(lambda x: x[i], batched), margin=0.5, confidence=level)
               for i in range(audits)]
    se = np.sqrt(level * (1 - level) / audits)
    p = true_rate(1)
    assert np.mean([r.upper_bound >= p for r in reports]) >= level - 3 * se
    # The point estimate alone covers far less often: the check can fail.
    assert np.mean([r.rate >= p for r in reports]) < level - 3 * se


def test_clopper_pearson_edge_cases():
    np.testing.assert_allclose(clopper_pearson_upper(0, 100, confidence=0.95), 1 - 0.05 ** (1 / 100))
    assert clopper_pearson_upper(5, 5, confidence=0.95) == 1.0
    bounds = clopper_pearson_upper([0, 3, 10], [10, 10, 10], confidence=0.9)
    assert np.all(np.diff(bounds) > 0)
    with pytest.raises(ValueError):
        clopper_pearson_upper(11, 10, confidence=0.9)


# ------------------------------------------------------------ adversarial
BAD_CENTRE = np.array([1.0, -1.0])
STEP = np.array([0.5, 0.0])  # the policy's favourite action (1) moves by STEP


def _bump(params, x):
    # A planted bad region of T: a Gaussian dip at BAD_CENTRE, plus a gentle per-world tilt.
    dip = -4.0 * jnp.exp(-jnp.sum((x - BAD_CENTRE) ** 2, axis=-1) / (2 * 0.5**2))
    return (dip + params["tilt"] * x[:, 0])[:, None]


def test_adversarial_search_finds_the_planted_bad_region():
    w = np.zeros((4, 2 + 2, 2))
    w[:, 3, :] = STEP  # action 1 moves by STEP, action 0 stays
    models = PlanningModels(
        world=linear_draws(w),
        terminal=FunctionDraws({"tilt": jnp.asarray(0.01 * standardised([-1.5, -0.5, 0.5, 1.5]))}, _bump),
        terminal_columns=(0, 1),
        num_actions=2,
    )
    proposal = FixedProposal(2)
    logits = jnp.array([0.0, 12.0])  # A almost always takes action 1
    true_value = lambda s: _bump({"tilt": 0.0}, s + STEP)[:, 0]  # noqa: E731
    result = adversarial_search(
        models, jax.random.key(4), policy_fn=lambda obs: proposal.probs(logits, obs),
        state_low=-3 * jnp.ones(2), state_high=3 * jnp.ones(2), num_restarts=16, num_steps=150,
        learning_rate=0.05, true_value=true_value)
    np.testing.assert_allclose(result.states[0], BAD_CENTRE - STEP, atol=0.05)
    assert float(result.predicted_mean[0]) < -3.9
    np.testing.assert_allclose(result.true_values[0], result.predicted_mean[0], atol=0.05)
    assert np.all(np.diff(np.asarray(result.objective)) >= 0)  # ranked
    assert (np.abs(np.asarray(result.states)) <= 3.0).all()  # projected into the bounds


TRACES = {"sample": 0, "probs": 0}


class _CountingProposal(FixedProposal):
    """Counts traces (Python calls happen only while JAX traces a jitted function)."""

    def sample(self, params, key, obs, k):
        TRACES["sample"] += 1
        return super().sample(params, key, obs, k)

    def probs(self, params, obs):
        TRACES["probs"] += 1
        return super().probs(params, obs)


def test_audits_of_a_new_run_reuse_the_compiled_programs():
    """Fresh policy/sampler modules with new parameters (a new run) compile nothing new."""
    from priorguard.planners.policies import ObservedStateSampler
    from priorguard.envs import jax_model
    from priorguard.planners import ProposalProbs

    models = TRAP
    env = jax_model("priorguard/CoinShift-v1", "deploy")
    sampler_models = PlanningModels(world=linear_draws(np.zeros((3, 4 + 2, 4))),
                                    terminal=linear_draws(np.ones((3, 1, 1))), terminal_columns=(0,), num_actions=2)
    counts = []
    for logits in ([0.0, 1.0], [2.0, -1.0]):
        proposal = _CountingProposal(2)
        params = jnp.asarray(logits)
        random_state_audit(sampler_models, jax.random.key(0), state_sampler=ObservedStateSampler(env),
                           policy=proposal_policy(proposal, params), num_states=8, horizon=2)
        adversarial_search(models, jax.random.key(1), policy_fn=ProposalProbs(proposal, params),
                           state_low=-jnp.ones(2), state_high=jnp.ones(2), num_restarts=2, num_steps=3)
        from priorguard.planners.conformal import calibration_scores

        calibration_scores(models, jax.random.key(2), jnp.ones((70 + int(logits[0]), 2)), discount=0.9,
                           proposal=proposal, proposal_params=params)
        counts.append(dict(TRACES))
    assert counts[0]["sample"] >= 2 and counts[0]["probs"] >= 1
    assert counts[1] == counts[0]


def test_many_rows_evaluate_every_world_and_keep_their_own_with_the_same_values():
    """Above GATHER_ROWS rows, each row's world is picked from every world's values instead of
    gathering a copy of its draw's parameters per row (the assistant's audit held 1.6 GB that way)."""
    import numpy as np

    from priorguard.models.base import FunctionDraws
    from priorguard.planners.worlds import GATHER_ROWS, _gather_draw

    params = {"w": jax.random.normal(jax.random.key(0), (6, 3, 2))}
    draws = FunctionDraws(params, lambda p, x: jnp.tanh(x @ p["w"]))
    n = GATHER_ROWS + 44
    x = jax.random.normal(jax.random.key(1), (n, 3))
    worlds = jax.random.randint(jax.random.key(2), (n,), 0, 6)
    per_row = jax.vmap(lambda w, row: draws.one(w, row[None])[0])(worlds, x)
    np.testing.assert_allclose(_gather_draw(draws, worlds, x), per_row, rtol=1e-12, atol=1e-14)
    few = _gather_draw(draws, worlds[:10], x[:10])  # a search's batch: gathered per row
    np.testing.assert_allclose(few, per_row[:10], rtol=1e-12, atol=1e-14)
