"""The spec format: the shipped example, TOML <-> objects round trips, sweeps, schema."""

import json
from pathlib import Path

import pytest

from priorguard.experiments import ExperimentSpec, load_spec, parse_override
from priorguard.priors import (
    BNNModel,
    CompositeKernel,
    GPModel,
    Prior,
    StationaryKernel,
    StructureSearch,
)

SHIPPED = Path(__file__).resolve().parents[2] / "experiments" / "coin-shift.toml"
#: The example spec of the priors design, exactly as written there.
EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "spec-example.toml"


def test_design_example_validates_as_written():
    spec = load_spec(EXAMPLE)
    assert spec.name == "coin-shift"
    assert spec.seeds == [0, 1, 2]
    assert isinstance(spec.terminal, GPModel)
    assert spec.terminal.kernel.kind == "rbf"
    assert spec.terminal.kernel.lengthscale == Prior(dist="LogNormal", params={"loc": 0.0, "scale": 1.0})
    assert isinstance(spec.world, BNNModel)
    assert spec.world.speed.max_depth == 3
    assert spec.world.simplicity.kind == "horseshoe"
    assert isinstance(spec.instrumental.kernel, CompositeKernel)
    assert spec.instrumental.discount == 0.95
    assert spec.planner.veto.epistemic_std == "auto"
    assert spec.planner.veto.value_drop == 1.0
    assert spec.sweep == {"terminal.kernel.kind": ["rbf", "matern52"]}


def test_load_by_name():
    assert load_spec("coin-shift") == load_spec(SHIPPED)


@pytest.mark.parametrize("path", [SHIPPED, EXAMPLE], ids=["flagship", "example"])
def test_toml_round_trip_both_ways(path):
    spec = load_spec(path)
    again = ExperimentSpec.from_toml(spec.to_toml())
    assert again == spec
    assert again.to_toml() == spec.to_toml()


def test_python_objects_round_trip_to_toml():
    spec = ExperimentSpec(
        name="objects",
        env="priorguard/CoinShift-v1",
        terminal=GPModel(
            model="gp",
            features=["coin_dx"],
            kernel=CompositeKernel(kind="sum", terms=[StationaryKernel(kind="matern32", lengthscale=0.3),
                                                      StationaryKernel(kind="rbf")]),
            noise=Prior(dist="HalfNormal", params={"scale": Prior(dist="Exponential", params={"rate": 10.0})}),
        ),
        world=BNNModel(model="bnn", hidden=[16]),
    )
    text = spec.to_toml()
    assert 'dist = "Exponential"' in text
    assert ExperimentSpec.from_toml(text) == spec


def test_structure_search_spec():
    spec = ExperimentSpec.from_dict({
        "name": "s", "env": "priorguard/CoinShift-v1",
        "terminal": {"model": "gp", "kernel": {"search": ["rbf", "linear", "periodic"], "max_terms": 3,
                                                "simplicity": 1.0}},
        "world": {"model": "bnn"},
    })
    assert isinstance(spec.terminal.kernel, StructureSearch)
    assert spec.terminal.kernel.max_terms == 3


def test_sweep_expands_grid_times_seeds():
    spec = load_spec(EXAMPLE)
    runs = spec.expand()
    assert len(runs) == 2 * 3
    kinds = sorted({r[1].terminal.kernel.kind for r in runs})
    assert kinds == ["matern52", "rbf"]
    assert all(r[1].sweep == {} for r in runs)
    # the matern52 point keeps the declared hyperpriors
    m52 = next(r[1] for r in runs if r[1].terminal.kernel.kind == "matern52")
    assert m52.terminal.kernel.lengthscale == spec.terminal.kernel.lengthscale


def test_linked_sweep_axis_sets_its_paths_together():
    spec = load_spec(EXAMPLE).model_copy(update={"sweep": {}})
    data = spec.to_dict()
    data["sweep"] = {"terminal.features, instrumental.features": [[["agent_x"], ["agent_x"]],
                                                                  [["coin_dx"], ["agent_x", "coin_dx"]]],
                     "planner.depth": [2, 3]}
    linked = type(spec).from_dict(data)
    points = list(linked.sweep_points())
    assert len(points) == 4 and all(set(p) == {"terminal.features", "instrumental.features", "planner.depth"}
                                    for p in points)
    resolved = {(tuple(r.terminal.features), tuple(r.instrumental.features), r.planner.depth)
                for _, r, _ in linked.expand()}
    assert resolved == {(("agent_x",), ("agent_x",), 2), (("agent_x",), ("agent_x",), 3),
                        (("coin_dx",), ("agent_x", "coin_dx"), 2), (("coin_dx",), ("agent_x", "coin_dx"), 3)}
    assert type(spec).from_toml(linked.to_toml()).sweep == linked.sweep  # round trip


def test_override_parsing():
    assert parse_override("planner.veto.alpha=0.1") == ("planner.veto.alpha", 0.1)
    assert parse_override("terminal.kernel.kind=matern52") == ("terminal.kernel.kind", "matern52")
    assert parse_override('seeds=[4, 5]') == ("seeds", [4, 5])
    spec = load_spec(SHIPPED).with_overrides({"planner.veto.alpha": 0.1, "seeds": [4, 5]})
    assert spec.planner.veto.alpha == 0.1 and spec.seeds == [4, 5]


def test_json_schema_is_generated_and_matches_models():
    schema = ExperimentSpec.model_json_schema()
    assert set(schema["required"]) == {"name", "env", "terminal", "world"}
    text = json.dumps(schema)
    assert "horseshoe" in text and "matern52" in text
    shipped = Path(__file__).resolve().parents[2] / "docs" / "spec.schema.json"
    assert json.loads(shipped.read_text()) == json.loads(json.dumps(schema, sort_keys=True)), (
        "docs/spec.schema.json is stale: regenerate with `priorguard schema --out docs/spec.schema.json`"
    )


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.toml")))
def test_every_shipped_spec_validates(path):
    load_spec(path)
