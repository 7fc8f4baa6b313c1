"""MCTS on mctx over sampled worlds: bandits, interior vetoes, fallback, determinism.

Every search here uses the same shapes and static configuration (3 actions, 13
node ids, 4 worlds, 2 states, 48 simulations, depth 2) and the same rule
structure ``chain(epistemic_std_veto(threshold), lower_confidence_bound(kappa))``
with array hyperparameters, so each policy compiles once.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import mctx
import numpy as np
import pytest
from planner_worlds import linear_draws, standardised, tree_models

from priorguard.planners import (
    PlanningModels,
    SearchEmbedding,
    UniformProposal,
    chain,
    epistemic_std_veto,
    lower_confidence_bound,
    make_recurrent_fn,
    plan_mcts,
)

NUM_WORLDS, NUM_ACTIONS, NUM_IDS = 4, 3, 13
PROPOSAL = UniformProposal(NUM_ACTIONS)
Z = standardised([-1.2, -0.4, 0.4, 1.2])  # per-world offsets: mean 0, std 1
jit_plan_mcts = eqx.filter_jit(plan_mcts)


def search(tables, seed, *, threshold=np.inf, kappa=0.0, fallback=0, root_id=0.0, policy="gumbel",
           interior_veto=True):
    """Node ids: root 0; action a at node i leads to node 3 i + a + 1; T is a per-world table."""
    return jit_plan_mcts(
        tree_models(tables, NUM_ACTIONS), PROPOSAL, None, jax.random.key(seed), jnp.full((2, 1), root_id),
        num_simulations=48, max_depth=2, discount=1.0, policy=policy, interior_veto=interior_veto,
        fallback_action=jnp.asarray(fallback, jnp.int32),
        veto=chain(epistemic_std_veto(threshold), lower_confidence_bound(kappa)),
    )


def empty_tables():
    return np.zeros((NUM_WORLDS, NUM_IDS))


# ----------------------------------------------------------------- bandit
ARM_MEANS = np.array([0.1, 0.5, 0.3])
ARM_NOISE = 0.05 * np.stack([np.roll(Z, a) for a in range(NUM_ACTIONS)], axis=1)  # [S, A], std 0.05 per arm


@pytest.mark.parametrize("policy", ["muzero", "gumbel"])
def test_bandit_picks_the_best_arm_and_reports_the_spread_across_worlds(policy):
    tables = empty_tables()
    tables[:, 1:4] = ARM_MEANS + ARM_NOISE  # deeper nodes are worth 0
    out = search(tables, 0, policy=policy)
    np.testing.assert_array_equal(out.action, [1, 1])
    assert out.visit_counts.shape == (NUM_WORLDS, 2, NUM_ACTIONS)
    visited = np.asarray(out.visit_counts.min(axis=0) > 0)
    assert visited[:, 1].all()
    for b in range(2):
        for a in np.flatnonzero(visited[b]):
            # Q of arm a in world s is exactly T_s(arm a): the node below it is worth 0.
            np.testing.assert_allclose(out.world_qvalues[:, b, a], ARM_MEANS[a] + ARM_NOISE[:, a], atol=1e-12)
            np.testing.assert_allclose(out.value_mean[b, a], ARM_MEANS[a], atol=1e-12)
            np.testing.assert_allclose(out.value_std[b, a], 0.05, atol=1e-12)


def test_same_key_same_decision_and_different_keys_different_searches():
    tables = empty_tables()
    tables[:, 1:4] = ARM_MEANS + ARM_NOISE
    a, b, c = search(tables, 5), search(tables, 5), search(tables, 6)
    np.testing.assert_array_equal(a.action, b.action)
    np.testing.assert_array_equal(a.visit_counts, b.visit_counts)
    np.testing.assert_array_equal(a.search_tree.extra_data.root_gumbel, b.search_tree.extra_data.root_gumbel)
    assert not np.allclose(a.search_tree.extra_data.root_gumbel, c.search_tree.extra_data.root_gumbel)


def test_lcb_scoring_prefers_the_certain_arm():
    tables = empty_tables()
    tables[:, 1] = 1.0  # arm 0: mean 1.0, no spread
    tables[:, 2] = 1.2 + Z  # arm 1: mean 1.2, spread 1 across worlds
    greedy, careful = search(tables, 3, kappa=0.0), search(tables, 3, kappa=1.0)
    np.testing.assert_array_equal(greedy.action, [1, 1])
    np.testing.assert_array_equal(careful.action, [0, 0])
    np.testing.assert_allclose(careful.score[:, 1], 0.2, atol=1e-9)
    np.testing.assert_allclose(careful.score[:, 0], 1.0, atol=1e-9)


# ------------------------------------------------- interior vetoes (2 steps)
# T per node (ids as above):
#   depth 1: node 1 (a=0): 0.0, node 2 (a=1): 0.5, node 3 (a=2): 0.0
#   under node 1: nodes 4, 5, 6 -> 0, 0, 10 + 5 z_s  (node 6 uncertain: vetoed at node 1)
#   under node 2: nodes 7, 8, 9 -> 1, 0, 0
#   under node 3: nodes 10, 11, 12 -> 5 z_s each   (all uncertain: fallback at node 3)
# Best-looking path 0 -> 1 -> 6 (return ~10) goes through a vetoed interior action;
# the best admissible path is 0 -> 2 -> 7 (return 1.5).
def two_step_tables():
    tables = empty_tables()
    tables[:, 2] = 0.5
    tables[:, 6] = 10.0 + 5.0 * Z
    tables[:, 7] = 1.0
    tables[:, 10:13] = 5.0 * Z[:, None]
    return tables


@pytest.mark.parametrize("policy", ["muzero", "gumbel"])
def test_interior_vetoes_hold_below_the_root(policy):
    tables = two_step_tables()
    unvetoed = search(tables, 1, policy=policy)
    np.testing.assert_array_equal(unvetoed.action, [0, 0])  # lured by node 6

    out = search(tables, 1, threshold=1.0, policy=policy)
    assert not out.veto_mask.any()  # nothing is vetoed at the root
    np.testing.assert_array_equal(out.action, [1, 1])
    assert 0.5 < float(out.value_mean[0, 1]) <= 1.5 + 1e-9
    tree = out.search_tree
    ids = np.asarray(tree.embeddings.obs[..., 0])  # [S*B, nodes]
    expanded = np.asarray(tree.node_visits) > 0
    children_visits = np.asarray(tree.children_visits)
    at_node_1 = (ids == 1.0) & expanded
    assert at_node_1.any()
    # The vetoed action (2) at node 1 has zero prior, is never visited, and node 6 never appears.
    assert (children_visits[at_node_1][:, 2] == 0).all()
    assert (np.asarray(tree.children_prior_logits)[at_node_1][:, 2] == jnp.finfo(jnp.float64).min).all()
    assert np.asarray(tree.embeddings.veto_mask)[at_node_1][:, 2].all()
    assert not ((ids == 6.0) & expanded).any()
    # At node 3 every action is vetoed: only the declared fallback (0) stays admissible.
    at_node_3 = (ids == 3.0) & expanded
    assert at_node_3.any()
    assert (children_visits[at_node_3][:, 1:] == 0).all()
    assert not ((ids >= 11.0) & expanded).any()


@pytest.mark.parametrize("policy", ["muzero", "gumbel"])
def test_a_rule_that_cannot_veto_skips_the_interior_statistics_and_searches_the_same(policy):
    # threshold inf: can_veto() is False and the search skips the node statistics (a run-time
    # branch); a huge finite threshold computes them and vetoes nothing. The trees must agree.
    tables = two_step_tables()
    skipped, computed = search(tables, 1, policy=policy), search(tables, 1, threshold=1e300, policy=policy)
    for a, b in zip(jax.tree_util.tree_leaves(skipped.search_tree), jax.tree_util.tree_leaves(computed.search_tree)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(skipped.action, computed.action)
    assert not np.asarray(skipped.search_tree.embeddings.veto_mask).any()


def test_root_masking_alone_does_not_stop_the_lure():
    out = search(two_step_tables(), 1, threshold=1.0, interior_veto=False)
    np.testing.assert_array_equal(out.action, [0, 0])  # what mctx's root-only invalid_actions gives


def test_all_root_actions_vetoed_returns_the_fallback():
    out = search(two_step_tables(), 2, threshold=1.0, fallback=2, root_id=3.0)
    assert out.veto_mask.all() and out.used_fallback.all()
    np.testing.assert_array_equal(out.action, [2, 2])
    # Inside the search only the fallback stayed admissible at the root.
    np.testing.assert_array_equal(np.asarray(out.visit_counts)[..., :2], 0)


def test_a_vetoed_transition_if_expanded_is_penalised_and_terminal():
    recurrent_fn = make_recurrent_fn(tree_models(two_step_tables(), NUM_ACTIONS), PROPOSAL, discount=0.9,
                                     fallback_action=0, veto=epistemic_std_veto(1.0), veto_penalty=-123.0,
                                     world_major=False)
    embedding = SearchEmbedding(obs=jnp.ones((2, 1)), world_index=jnp.array([0, 3]),
                                veto_mask=jnp.array([[False, False, True], [False, False, True]]))
    output, child = jax.jit(recurrent_fn)(None, jax.random.key(0), jnp.array([2, 0]), embedding)
    assert isinstance(output, mctx.RecurrentFnOutput)
    np.testing.assert_allclose(output.reward, [-123.0, 0.0])
    np.testing.assert_allclose(output.discount, [0.0, 0.9])
    np.testing.assert_allclose(child.obs[:, 0], [6.0, 4.0])
    np.testing.assert_array_equal(child.world_index, [0, 3])
    np.testing.assert_allclose(output.reward[1], two_step_tables()[3, 4])  # T in the row's own world


def test_world_major_fast_path_matches_the_per_row_world_index():
    models = tree_models(two_step_tables(), NUM_ACTIONS)
    embedding = SearchEmbedding(obs=jnp.tile(jnp.array([[0.0], [1.0]]), (NUM_WORLDS, 1)),
                                world_index=jnp.repeat(jnp.arange(NUM_WORLDS), 2),
                                veto_mask=jnp.zeros((2 * NUM_WORLDS, NUM_ACTIONS), bool))
    action = jnp.tile(jnp.array([2, 2]), NUM_WORLDS)
    outputs = [
        jax.jit(make_recurrent_fn(models, PROPOSAL, discount=0.9, fallback_action=0, veto=epistemic_std_veto(1.0),
                                  world_major=world_major))(None, jax.random.key(0), action, embedding)
        for world_major in (True, False)
    ]
    jax.tree.map(np.testing.assert_array_equal, outputs[0], outputs[1])
    np.testing.assert_allclose(outputs[0][0].reward[1::2], two_step_tables()[:, 6])  # node 6 in each world


def test_mcts_rejects_continuous_models():
    models = PlanningModels(world=linear_draws(np.zeros((2, 2, 1))), terminal=linear_draws(np.zeros((2, 1, 1))),
                            terminal_columns=(0,), action_low=-jnp.ones(1), action_high=jnp.ones(1))
    with pytest.raises(ValueError, match="discrete"):
        plan_mcts(models, PROPOSAL, None, jax.random.key(0), jnp.zeros((1, 1)), num_simulations=4, fallback_action=0)
