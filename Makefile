# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv with Python >= 3.12 (via .python-version / pyenv) and
# install the locked dependency set from constraints.txt.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
PG := $(VENV)/bin/priorguard

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "priorguard needs Python >= 3.12; found " + sys.version.split()[0] + " (install 3.12 or set PYTHON=python3.12)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

.PHONY: setup demo test bench
setup: $(STAMP)

# The flagship: coin-shift's sweep (position, signed offset, even offset for T and I) x seeds on 2 workers, then its report.
demo: $(STAMP)
	$(PG) sweep coin-shift --workers 2 --out runs/coin-shift
	$(PG) report runs/coin-shift

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --durations=25

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(VENV)/bin/python $$b; done
