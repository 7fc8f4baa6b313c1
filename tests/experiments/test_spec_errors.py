"""A corpus of malformed specs: each is rejected with the right field path."""

import copy
import tomllib
from pathlib import Path

import pytest

from priorguard.experiments import ExperimentSpec
from priorguard.priors import SpecError

SHIPPED = Path(__file__).resolve().parents[2] / "experiments" / "coin-shift.toml"
BASE = tomllib.loads(SHIPPED.read_text())

DEL = object()


def mutate(changes):
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        node = data
        keys = path.split("/")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is DEL:
            node.pop(keys[-1], None)
        else:
            node[keys[-1]] = value
    return data


NORMAL = {"dist": "Normal", "loc": 0.0, "scale": 1.0}

# (id, changes, expected path, fragment of the message)
CORPUS = [
    ("unknown-top-key", {"nmae": "x"}, "nmae", "did you mean 'name'"),
    ("missing-env", {"env": DEL}, "env", "required"),
    ("unknown-env", {"env": "priorguard/CoinShfit-v1"}, "env", "did you mean"),
    ("bad-name", {"name": "has space"}, "name", "letters"),
    ("name-type", {"name": 3}, "name", "string"),
    ("seeds-empty", {"seeds": []}, "seeds", "at least 1"),
    ("seeds-negative", {"seeds": [0, -1]}, "seeds[1]", ">= 0"),
    ("seeds-dup", {"seeds": [1, 1]}, "seeds", "duplicates"),
    ("seeds-type", {"seeds": "0"}, "seeds", "list"),
    ("train-episodes-zero", {"data/train_episodes": 0}, "data.train_episodes", ">= 1"),
    ("train-episodes-float", {"data/train_episodes": 2.5}, "data.train_episodes", "integer"),
    ("data-unknown", {"data/train_episode": 10}, "data.train_episode", "did you mean 'train_episodes'"),
    ("calibration-range", {"data/calibration_fraction": 1.5}, "data.calibration_fraction", "< 1"),
    ("behaviour-unknown", {"data/behaviour": "behavior"}, "data.behaviour", "did you mean"),
    ("terminal-missing", {"terminal": DEL}, "terminal", "required"),
    ("model-unknown", {"terminal/model": "gpp"}, "terminal.model", "did you mean 'gp'"),
    ("feature-unknown", {"terminal/features": ["coin_dxx", "agent_x"]}, "terminal.features[0]", "did you mean 'coin_dx'"),
    ("features-empty", {"terminal/features": []}, "terminal.features", "at least one"),
    ("features-dup", {"terminal/features": ["agent_x", "agent_x"]}, "terminal.features", "duplicates"),
    ("noise-normal", {"terminal/noise": NORMAL}, "terminal.noise", "support"),
    ("noise-negative", {"terminal/noise": -0.1}, "terminal.noise", "> 0"),
    ("noise-nan", {"terminal/noise": float("nan")}, "terminal.noise", "finite"),
    ("dist-unknown", {"terminal/noise": {"dist": "HalfNormall", "scale": 0.1}}, "terminal.noise.dist", "did you mean 'HalfNormal'"),
    ("dist-param-unknown", {"terminal/noise": {"dist": "HalfNormal", "scal": 0.1}}, "terminal.noise.scal", "did you mean 'scale'"),
    ("dist-param-missing", {"terminal/noise": {"dist": "Gamma", "rate": 1.0}}, "terminal.noise", "concentration"),
    ("dist-param-negative", {"terminal/kernel/lengthscale": {"dist": "LogNormal", "loc": 0.0, "scale": -1.0}},
     "terminal.kernel.lengthscale.scale", "must be > 0, got -1.0"),
    ("dist-param-inf", {"terminal/kernel/lengthscale": {"dist": "LogNormal", "loc": float("inf"), "scale": 1.0}},
     "terminal.kernel.lengthscale.loc", "finite"),
    ("dist-missing-dist", {"terminal/kernel/variance": {"scale": 1.0}}, "terminal.kernel.variance", "needs `dist`"),
    ("lengthscale-normal", {"terminal/kernel/lengthscale": NORMAL}, "terminal.kernel.lengthscale", "support"),
    ("variance-normal", {"terminal/kernel/variance": NORMAL}, "terminal.kernel.variance", "support"),
    ("hyperprior-support", {"terminal/kernel/lengthscale": {"dist": "LogNormal", "loc": 0.0, "scale": NORMAL}},
     "terminal.kernel.lengthscale.scale", "hyperprior"),
    ("uniform-order", {"terminal/kernel/lengthscale": {"dist": "Uniform", "low": 2.0, "high": 1.0}},
     "terminal.kernel.lengthscale", "low < high"),
    ("uniform-negative-support", {"terminal/kernel/lengthscale": {"dist": "Uniform", "low": -1.0, "high": 1.0}},
     "terminal.kernel.lengthscale", "support"),
    ("kernel-unknown", {"terminal/kernel/kind": "rbff"}, "terminal.kernel.kind", "did you mean 'rbf'"),
    ("kernel-missing-kind", {"terminal/kernel": {"lengthscale": 1.0}}, "terminal.kernel", "needs `kind`"),
    ("kernel-unknown-key", {"terminal/kernel/lenghtscale": 1.0}, "terminal.kernel.lenghtscale", "did you mean 'lengthscale'"),
    ("kernel-linear-lengthscale", {"instrumental/kernel": {"kind": "linear", "lengthscale": 1.0}},
     "instrumental.kernel.lengthscale", "unknown key"),
    ("kernel-sum-one-term", {"instrumental/kernel": {"kind": "sum", "terms": [{"kind": "rbf"}]}},
     "instrumental.kernel.terms", "at least 2"),
    ("kernel-term-unknown", {"instrumental/kernel": {"kind": "sum", "terms": [{"kind": "matern52"}, {"kind": "linearr"}]}},
     "instrumental.kernel.terms[1].kind", "did you mean 'linear'"),
    ("active-dims-unknown", {"terminal/kernel/active_dims": ["coin_x"]}, "terminal.kernel.active_dims[0]", "not among"),
    ("active-dims-range", {"terminal/kernel/active_dims": [5]}, "terminal.kernel.active_dims[0]", "out of range"),
    # only W sees the action: T's kernel cannot name it
    ("active-dims-action-on-t", {"terminal/kernel/active_dims": ["right"]}, "terminal.kernel.active_dims[0]",
     "not among"),
    ("active-dims-world-range", {"world": {"model": "gp", "features": ["agent_x"], "kernel": {
        "kind": "rbf", "active_dims": [4]}}}, "world.kernel.active_dims[0]", "sees 4 features"),
    ("polynomial-degree", {"terminal/kernel": {"kind": "polynomial", "degree": 0}}, "terminal.kernel.degree", ">= 1"),
    ("search-empty", {"terminal/kernel": {"search": []}}, "terminal.kernel.search", "at least 1"),
    ("search-unknown", {"terminal/kernel": {"search": ["rbf", "lineer"]}}, "terminal.kernel.search", "did you mean 'linear'"),
    ("search-max-terms", {"terminal/kernel": {"search": ["rbf"], "max_terms": 0}}, "terminal.kernel.max_terms", ">= 1"),
    ("search-simplicity", {"terminal/kernel": {"search": ["rbf"], "simplicity": -1.0}}, "terminal.kernel.simplicity", ">= 0"),
    ("search-operators", {"terminal/kernel": {"search": ["rbf"], "operators": []}}, "terminal.kernel.operators", "at least 1"),
    ("inference-unknown", {"terminal/inference": {"method": "mcmc"}}, "terminal.inference.method", "method"),
    ("gp-svi", {"terminal/inference": {"method": "svi"}}, "terminal.inference.method", "map or nuts"),
    ("nuts-accept", {"terminal/inference": {"method": "nuts", "target_accept": 1.2}}, "terminal.inference.target_accept", "< 1"),
    ("bnn-hidden-zero", {"world/hidden": [32, 0]}, "world.hidden[1]", ">= 1"),
    ("bnn-activation", {"world/activation": "tahn"}, "world.activation", "did you mean 'tanh'"),
    ("bnn-weights-discrete", {"world/weights": {"dist": "Poisson", "rate": 1.0}}, "world.weights", "does not fit"),
    ("horseshoe-unknown", {"world/simplicity": {"kind": "horshoe"}}, "world.simplicity.kind", "horseshoe"),
    ("horseshoe-scale", {"world/simplicity": {"kind": "horseshoe", "global_scale": 0.0}}, "world.simplicity.global_scale", "> 0"),
    ("speed-kind", {"world/speed": {"kind": "width", "max_depth": 3}}, "world.speed.kind", "depth"),
    ("speed-depth-small", {"world/hidden": [16, 16], "world/speed": {"kind": "depth", "max_depth": 1}}, "world.speed",
     "max_depth"),
    ("speed-strength", {"world/speed": {"kind": "depth", "max_depth": 3, "strength": -1.0}}, "world.speed.strength", ">= 0"),
    ("svi-steps", {"world/inference": {"method": "svi", "steps": 0}}, "world.inference.steps", ">= 1"),
    ("discount-range", {"instrumental/discount": 1.5}, "instrumental.discount", "<= 1"),
    ("discount-on-terminal", {"terminal/discount": 0.9}, "terminal.discount", "unknown key"),
    ("planner-kind", {"planner/kind": "mtcs"}, "planner.kind", "did you mean 'mcts'"),
    ("planner-cem-discrete", {"planner/kind": "cem"}, "planner.kind", "discrete"),
    ("planner-proposals", {"planner/proposals": 0}, "planner.proposals", ">= 1"),
    ("veto-alpha", {"planner/veto/alpha": 0.0}, "planner.veto.alpha", "> 0"),
    ("veto-threshold", {"planner/veto/epistemic_std": "automatic"}, "planner.veto.epistemic_std", "auto"),
    ("veto-threshold-negative", {"planner/veto/epistemic_std": -1.0}, "planner.veto.epistemic_std", "> 0"),
    ("veto-fallback-range", {"planner/veto/fallback": 7}, "planner.veto.fallback", "action index"),
    ("veto-calibrate-on", {"planner/veto/calibrate_on": "distinct_states"}, "planner.veto.calibrate_on",
     "allowed: 'decisions', 'distinct' or 'visits'"),
    ("veto-value-drop", {"planner/veto/value_drop": -1.0}, "planner.veto.value_drop", "> 0"),
    ("veto-auto-drop-needs-decisions", {"planner/veto/value_drop": "auto", "planner/veto/calibrate_on": "distinct"},
     "planner.veto.value_drop", 'needs calibrate_on = "decisions"'),
    ("veto-on-repeat", {"planner/veto/on_repeat": "retry"}, "planner.veto.on_repeat", "'abstain' or 'fallback'"),
    ("cem-elites", {"planner/cem": {"elites": 100, "population": 10}}, "planner.cem.elites", "<= population"),
    ("sweep-empty", {"sweep": {"terminal.kernel.kind": []}}, "sweep", "at least one value"),
    ("sweep-bad-path", {"sweep": {"terminal.kernal.kind": ["rbf"]}}, 'sweep."terminal.kernal.kind"', "did you mean 'kernel'"),
    ("sweep-bad-value", {"sweep": {"terminal.kernel.kind": ["rbf", "matern"]}}, 'sweep."terminal.kernel.kind"[1]', "unknown kernel kind"),
    ("sweep-bad-number", {"sweep": {"planner.proposals": [4, -4]}}, 'sweep."planner.proposals"[1]', ">= 1"),
    ("sweep-index-path", {"sweep": {"seeds[3]": [1]}}, 'sweep."seeds[3]"', "no item"),
    ("sweep-linked-length", {"sweep": {"terminal.features, instrumental.features": [[["agent_x"]]]}}, "sweep",
     "needs a list of 2 values"),
    ("sweep-linked-repeat", {"sweep": {"planner.depth, planner.depth": [[1, 2]]}}, "sweep", "distinct"),
    ("sweep-linked-bad-path", {"sweep": {"terminal.features, instrumental.featurs": [[["agent_x"], ["agent_x"]]]}},
     'sweep."terminal.features, instrumental.featurs"', "did you mean 'features'"),
    ("sweep-linked-bad-value", {"sweep": {"terminal.features, instrumental.features": [[["agent_x"], ["nope"]]]}},
     'sweep."terminal.features, instrumental.features"[0]', "no feature 'nope'"),
]


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_spec_rejected_with_path(case):
    _, changes, path, fragment = case
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(mutate(changes))
    issues = info.value.issues
    assert path in [i.path for i in issues], f"paths {[str(i) for i in issues]}"
    msgs = " | ".join(i.message for i in issues if i.path == path)
    assert fragment.lower() in msgs.lower(), msgs


def test_corpus_is_large_and_base_is_valid():
    assert len(CORPUS) >= 40
    ExperimentSpec.from_dict(BASE)


def test_a_world_kernel_may_name_the_action_columns():
    # W's inputs are its features, then the one-hot actions under their names
    spec = ExperimentSpec.from_dict(mutate({"world": {"model": "gp", "features": ["agent_x"], "kernel": {
        "kind": "product", "terms": [{"kind": "linear", "active_dims": ["agent_x"]},
                                     {"kind": "linear", "active_dims": ["left", "stay", "right"]}]}}}))
    assert spec.world.kernel.terms[1].active_dims == ["left", "stay", "right"]
    ExperimentSpec.from_dict(mutate({"world": {"model": "gp", "features": ["agent_x"],
                                               "kernel": {"kind": "rbf", "active_dims": [3]}}}))  # column 3: right


def test_toml_syntax_error_names_line():
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_toml('name = "x"\nenv = \n')
    assert info.value.issues[0].path == "<toml>"
    assert "line 2" in info.value.issues[0].message


def test_lengthscale_message_matches_documented_form():
    with pytest.raises(SpecError) as info:
        ExperimentSpec.from_dict(mutate({"terminal/kernel/lengthscale": {"dist": "LogNormal", "loc": 0.0, "scale": -1.0}}))
    assert str(info.value.issues[0]) == "terminal.kernel.lengthscale.scale: must be > 0, got -1.0"


def test_override_rejects_unknown_path_and_bad_value():
    spec = ExperimentSpec.from_dict(BASE)
    with pytest.raises(SpecError) as info:
        spec.with_overrides({"planner.veto.alhpa": 0.1})
    assert "did you mean 'alpha'" in info.value.issues[0].message
    with pytest.raises(SpecError) as info:
        spec.with_overrides({"planner.veto.alpha": 2.0})
    assert info.value.issues[0].path == "planner.veto.alpha"
