"""The report as a reader sees it: opened in a real headless browser (Debian's chromium), every
image shown, every linked run plot found. .ci/run installs chromium; without it these tests say so."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from priorguard.analysis.report import build_report
from priorguard.store import ResultStore, write_json

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(BROWSER is None, reason="chromium is not installed (.ci/run installs it)")

#: Appended to a copy of the page: once everything has loaded, loads every <img> and every
#: linked .png again and writes [source, natural width] of each into the DOM (0: it did not load).
CHECK = """<script>
window.addEventListener('load', async () => {
  const name = src => src.startsWith('data:') ? src.slice(0, 30) : src;
  const load = src => new Promise(done => { const im = new Image();
    im.onload = () => done([name(src), im.naturalWidth]); im.onerror = () => done([name(src), 0]);
    im.src = src; });
  const srcs = [...document.images].map(i => i.src).concat(
    [...document.querySelectorAll('a[href$=".png"]')].map(a => a.href));
  const out = document.createElement('pre'); out.id = 'pg-images';
  out.textContent = JSON.stringify(await Promise.all(srcs.map(load)));
  document.body.appendChild(out);
});
</script>"""


def images_in_browser(page: Path) -> list[tuple[str, int]]:
    """Opens ``page`` in headless chromium; returns (source, natural width) of every image and linked png."""
    probe = page.with_name(".browser-check.html")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECK + "</body>"), encoding="utf-8")
    try:
        r = subprocess.run([BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                            "--allow-file-access-from-files", "--virtual-time-budget=20000", "--dump-dom",
                            probe.resolve().as_uri()], capture_output=True, text=True, timeout=180)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="pg-images">(.*?)</pre>', r.stdout, re.S)
    assert found, f"the check never ran (exit {r.returncode}): {r.stderr[-2000:]}"
    return [tuple(x) for x in json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))]


def png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path, dpi=40)
    plt.close(fig)


def store_with_plots(root: Path) -> ResultStore:
    store = ResultStore(root)
    for label, regrets in {"rbf": [0.5, 0.6], "matern52": [0.1, 0.2]}.items():
        for seed, regret in enumerate(regrets):
            run_id = f"{label}-{seed}"
            store.register(run_id, experiment="exp", env="e", seed=seed, overrides={"terminal.kernel.kind": label})
            metrics = {"regret": regret, "proposal_alone_regret": 0.7, "veto_rate": 0.1, "veto_threshold": 0.3,
                       "terminal_coverage90_train": 0.9, "terminal_coverage90_deploy": 0.6,
                       "terminal_epistemic_auroc": 0.8, "train_false_veto_rate": 0.02,
                       "train_false_veto_bound": 0.08}
            with store.writing(run_id) as folder:
                write_json(folder / "metrics.json", metrics)
                png(folder / "outcomes.png")
                png(folder / "coverage.png")
            store.mark_done(run_id, metrics)
    return store


@needs_browser
def test_every_image_of_the_report_loads_in_a_browser(tmp_path):
    store = store_with_plots(tmp_path / "store")
    page = build_report(store.root, tmp_path / "store" / "report")
    loaded = images_in_browser(page)
    embedded = [w for src, w in loaded if src.startswith("data:image/png")]
    linked = [(src, w) for src, w in loaded if src.startswith("file:")]
    assert len(embedded) == page.read_text().count("data:image/png;base64,") >= 5
    assert len(linked) == 8  # outcomes and coverage of each of the 4 runs
    assert all(w > 0 for _, w in loaded), [s for s, w in loaded if w == 0]


@needs_browser
def test_the_browser_check_sees_an_image_that_does_not_load(tmp_path):
    store = store_with_plots(tmp_path / "store")
    page = build_report(store.root, tmp_path / "report")
    (store.run_dir("rbf-0") / "coverage.png").unlink()  # a run plot the report links, gone
    broken = [src for src, w in images_in_browser(page) if w == 0]
    assert len(broken) == 1 and broken[0].endswith("rbf-0/coverage.png"), broken
    # and the report, made again, names the run whose files changed
    build_report(store.root, tmp_path / "report")
    text = (tmp_path / "report" / "index.md").read_text()
    assert "Run rbf-0's files changed since it was written (coverage.png)" in text
    assert "matern52-0's files changed" not in text
