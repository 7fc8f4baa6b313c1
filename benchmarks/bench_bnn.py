"""BNN through priorguard vs raw numpyro on the same model: NUTS ESS/s and SVI steps/s.

Run from the repository root::

    .venv/bin/python benchmarks/bench_bnn.py           # float64 (priorguard's NUTS default)
    .venv/bin/python benchmarks/bench_bnn.py --x32     # float32
    .venv/bin/python benchmarks/bench_bnn.py --rounds=2  # fastest of 2 alternating rounds (shared machines)

The model is a 1x20 tanh BNN (Normal(0, 1) weights and biases, LogNormal(-2, 1)
noise on standardised targets) on N = 200 points. NUTS: 2 chains x (500 warmup
+ 500 draws), in parallel over 2 host devices. ESS is the minimum bulk ESS over
every parameter (ArviZ), time is wall-clock including compilation ("cold"),
and again for a second fit with the same shapes ("warm": priorguard compiles
nothing; numpyro's ``MCMC.run`` / ``svi.run`` compile again).

priorguard's fit is handed the key numpyro's run gets and uses numpyro's NUTS
kernel and initialisation, so both start the same chains; rounding differences
(``lax.scan`` vs numpyro's ``fori_loop``) then grow chaotically over 1000
iterations of up to 1023 leapfrog steps, and ESS differs by Monte-Carlo noise
only (tests/models/test_bnn.py checks draw-for-draw equality on a short run).
Each side runs in its own fresh process, one after the other, so on a
shared machine a change of load between them shows up as a speed difference;
``--rounds=2`` alternates the order and keeps the fastest time of each fit.
Two fits per side (one cold, one warm; ``--repeats=N`` for N warm ones): one
NUTS fit's ESS swings by 20-30% with the chain's luck, so read the pooled rows,
and add repeats for tighter figures. Prints one table; one round takes about
1.5-3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import sys

# Host devices must be set before JAX starts (this is what the priorguard CLI does).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()

import time  # noqa: E402
import warnings  # noqa: E402

import numpyro  # noqa: E402

numpyro.set_host_device_count(2)

import jax  # noqa: E402

X64 = "--x32" not in sys.argv
jax.config.update("jax_enable_x64", X64)

import arviz as az  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import numpyro.distributions as dist  # noqa: E402
import xarray as xr  # noqa: E402
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO  # noqa: E402
from numpyro.infer.autoguide import AutoNormal  # noqa: E402

from priorguard._compile import TRACE_COUNTS  # noqa: E402
from priorguard.models.inference import SamplingWarning  # noqa: E402
from priorguard.models.base import as_data  # noqa: E402
from priorguard.models.bnn import fit_bnn  # noqa: E402
from priorguard.priors.models import BNNModel  # noqa: E402

N, HIDDEN, WARMUP, SAMPLES, CHAINS = 200, 20, 500, 500, 2
SVI_STEPS = 5000
DTYPE = jnp.float64 if X64 else jnp.float32


def raw_model(x, y=None):
    """The same BNN written directly in numpyro (same site names, so the same flattening)."""
    d = x.shape[1]
    w0 = numpyro.sample("world/layer0/w", dist.Normal(0.0, 1.0).expand([d, HIDDEN]).to_event(2))
    b0 = numpyro.sample("world/layer0/b", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    w1 = numpyro.sample("world/layer1/w", dist.Normal(0.0, 1.0).expand([HIDDEN, 1]).to_event(2))
    b1 = numpyro.sample("world/layer1/b", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    sigma = numpyro.sample("world/noise", dist.LogNormal(-2.0, 1.0).expand([1]).to_event(1))
    f = jnp.tanh(x @ w0 + b0) @ w1 + b1
    with numpyro.plate("world/obs", x.shape[0]):
        numpyro.sample("world/y", dist.Normal(f, sigma).to_event(1), obs=y)


def data(seed: int):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.0, 1.0, size=(N, 1))
    y = np.sin(3.0 * x) + 0.2 * rng.normal(size=(N, 1))
    return x, y


def min_bulk_ess(samples: dict) -> float:
    ds = xr.Dataset({
        k.replace("/", "."): (["chain", "draw", *[f"{k}_{i}" for i in range(np.ndim(v) - 2)]], np.asarray(v))
        for k, v in samples.items()
    })
    ess = az.ess(ds, method="bulk")
    return float(min(np.nanmin(np.asarray(v)) for v in ess.data_vars.values()))


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    jax.block_until_ready(jax.tree_util.tree_leaves(out))
    return out, time.perf_counter() - t0


def fit_key(key):
    """The key priorguard's fit hands its (single-depth) sampler: split(key, 2)[1]."""
    return jax.random.split(key, 2)[1]


def run_side(side: str, repeats: int) -> dict:
    """Every timed fit of one side, in this (fresh) process: cold first, then warm."""
    out: dict = {"nuts": [], "svi": []}
    nuts_spec = BNNModel(model="bnn", hidden=[HIDDEN], activation="tanh", noise=None,
                         inference={"method": "nuts", "warmup": WARMUP, "samples": SAMPLES, "chains": CHAINS})
    svi_spec = BNNModel(model="bnn", hidden=[HIDDEN], activation="tanh",
                        inference={"method": "svi", "steps": SVI_STEPS, "learning_rate": 0.01, "samples": 200})
    mcmc = MCMC(NUTS(raw_model), num_warmup=WARMUP, num_samples=SAMPLES, num_chains=CHAINS,
                chain_method="parallel", progress_bar=False)
    svi = SVI(raw_model, AutoNormal(raw_model), numpyro.optim.Adam(0.01), Trace_ELBO())
    for seed in range(1 + repeats):  # the same data and keys on both sides
        x, y = data(seed)
        key = jax.random.key(seed)
        before = dict(TRACE_COUNTS)
        if side == "priorguard":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SamplingWarning)
                post, t = timed(lambda: fit_bnn(nuts_spec, as_data(x, y, dtype=DTYPE), key=key))
            samples = post.samples()
            steps = int(np.sum(post.fit_at().sample_stats["num_steps"]))
        else:
            xs = jnp.asarray(x, DTYPE)
            ys = jnp.asarray((y - y.mean(0)) / y.std(0), DTYPE)

            def run():
                mcmc.run(fit_key(key), xs, ys, extra_fields=("num_steps",))
                return mcmc.get_samples(group_by_chain=True)

            samples, t = timed(run)
            steps = int(np.sum(np.asarray(mcmc.get_extra_fields()["num_steps"])))
        traced = sum(v - before.get(k, 0) for k, v in TRACE_COUNTS.items())
        out["nuts"].append({"time": t, "ess": min_bulk_ess(samples), "traced": traced, "steps": steps,
                            "first_draw": {k: np.asarray(v)[:, :1].tolist() for k, v in samples.items()}})
    for seed in range(1 + repeats):
        x, y = data(seed)
        key = jax.random.key(seed)
        before = dict(TRACE_COUNTS)
        if side == "priorguard":
            _, t = timed(lambda: fit_bnn(svi_spec, as_data(x, y, dtype=DTYPE), key=key))
        else:
            xs = jnp.asarray(x, DTYPE)
            ys = jnp.asarray((y - y.mean(0)) / y.std(0), DTYPE)
            _, t = timed(lambda: svi.run(fit_key(key), SVI_STEPS, xs, ys, progress_bar=False).losses)
        traced = sum(v - before.get(k, 0) for k, v in TRACE_COUNTS.items())
        out["svi"].append({"time": t, "traced": traced})
    return out


def main() -> None:
    import json
    import subprocess

    repeats = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--repeats=")), "1"))
    if "--side" in sys.argv:
        side = sys.argv[sys.argv.index("--side") + 1]
        print("RESULT " + json.dumps(run_side(side, repeats)))
        return
    rounds = int(next((a.split("=")[1] for a in sys.argv if a.startswith("--rounds=")), "1"))
    t_start = time.perf_counter()
    results: dict = {}
    for r in range(rounds):  # alternate the order; keep each fit's fastest time over rounds
        for side in (("priorguard", "numpyro") if r % 2 == 0 else ("numpyro", "priorguard")):
            # One fresh process per side and round: "cold" is a first fit in a new process.
            cmd = [sys.executable, __file__, "--side", side, f"--repeats={repeats}"] + (["--x32"] if not X64 else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{side} run failed:\n{proc.stdout}\n{proc.stderr}")
            new = json.loads(line[len("RESULT "):])
            if side not in results:
                results[side] = new
            else:
                for kind in ("nuts", "svi"):
                    for old_row, new_row in zip(results[side][kind], new[kind]):
                        old_row["time"] = min(old_row["time"], new_row["time"])
    pg, raw = results["priorguard"], results["numpyro"]

    rows = []
    for i, r_pg in enumerate(pg["nuts"]):
        r_raw = raw["nuts"][i]
        label = "cold (fresh process)" if i == 0 else f"warm (fit {i + 1}, same shapes)"
        rows.append((f"NUTS {label}", f"{r_pg['time']:.2f} s", f"{r_raw['time']:.2f} s",
                     f"{r_pg['ess']:.0f} / {r_raw['ess']:.0f}", f"{r_pg['steps']:,} / {r_raw['steps']:,}",
                     f"{(r_pg['ess'] / r_pg['time']) / (r_raw['ess'] / r_raw['time']):.2f}",
                     f"{r_pg['time'] / r_raw['time']:.2f}", str(r_pg["traced"])))
    for name, sel in (("NUTS all fits pooled", slice(None)), ("NUTS warm fits pooled", slice(1, None))):
        p_, r_ = pg["nuts"][sel], raw["nuts"][sel]
        if not p_:
            continue
        ess_p, t_p = sum(r["ess"] for r in p_), sum(r["time"] for r in p_)
        ess_r, t_r = sum(r["ess"] for r in r_), sum(r["time"] for r in r_)
        st_p, st_r = sum(r["steps"] for r in p_), sum(r["steps"] for r in r_)
        rows.append((name, f"{t_p:.2f} s", f"{t_r:.2f} s", f"{ess_p:.0f} / {ess_r:.0f}", f"{st_p:,} / {st_r:,}",
                     f"{(ess_p / t_p) / (ess_r / t_r):.2f}", f"{t_p / t_r:.2f}", "-"))
    for i, r_pg in enumerate(pg["svi"]):
        r_raw = raw["svi"][i]
        label = "cold (fresh process)" if i == 0 else f"warm (fit {i + 1}, same shapes)"
        rows.append((f"SVI {label}", f"{SVI_STEPS / r_pg['time']:,.0f} steps/s",
                     f"{SVI_STEPS / r_raw['time']:,.0f} steps/s", "-", "-",
                     f"{r_raw['time'] / r_pg['time']:.2f}", f"{r_pg['time'] / r_raw['time']:.2f}",
                     str(r_pg["traced"])))

    same = max(float(np.max(np.abs(np.asarray(pg["nuts"][0]["first_draw"][k])
                                   - np.asarray(raw["nuts"][0]["first_draw"][k]))))
               for k in raw["nuts"][0]["first_draw"])
    print(f"\nBNN 1x{HIDDEN} tanh, N={N}, {'float64' if X64 else 'float32'}, 2 host devices;"
          f" NUTS {CHAINS} chains x ({WARMUP}+{SAMPLES}) in parallel; SVI {SVI_STEPS} steps AutoNormal/Adam")
    header = ("", "priorguard", "raw numpyro", "min bulk ESS pg / raw", "leapfrogs after warmup pg / raw",
              "speed ratio pg/raw",
              "time ratio pg/raw", "programs traced (pg)")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print("speed ratio: ESS/s (NUTS) or steps/s (SVI) of priorguard over raw numpyro; > 1 is faster.")
    print("One NUTS fit's ESS varies by 20-30% with the chain's luck, so read the pooled rows (--repeats=N adds fits).")
    print("priorguard's sampler is numpyro's NUTS kernel with numpyro's initialisation: with the same key the")
    print("chains agree to rounding for the first iterations, then separate chaotically (first post-warmup")
    print(f"draw, max |difference| over parameters: {same:.2e}), so ESS differences are Monte-Carlo noise.")
    print(f"total benchmark time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
