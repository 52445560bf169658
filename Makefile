# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# VENV can point elsewhere (CI reuses one venv across fresh clones: see .ci/run).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The dependency set is keyed on the pins and the metadata: change either and the
# next run re-installs into the venv (pip moves only what changed).
DEPS_KEY := $(shell cat constraints.txt setup.cfg | sha256sum | cut -c1-12)
STAMP := $(VENV)/.torchfit-deps-$(DEPS_KEY)
EXTRAS ?= dev

.PHONY: install demo test bench notebooks clean

$(STAMP): constraints.txt setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.torchfit-deps-*
	touch $@

# The editable install is re-pointed at this checkout every time (cheap), so one
# shared venv serves any number of clones.
install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

demo: install
	$(PY) examples/demo.py --out demo_output

test: install
	TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 $(PY) -m pytest -q

bench: install
	$(PY) benchmarks/overhead.py

notebooks: install
	$(PY) notebooks/run_notebooks.py --write

clean:
	rm -rf .venv build *.egg-info demo_output .pytest_cache
