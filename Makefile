# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# `make demo` installs what the demo needs (torch, numpy, pandas, scikit-learn,
# tqdm, matplotlib); `make test` adds the dev set (pytest, jupyter, tensorboard, mlflow, wandb, ray...).
# VENV can point elsewhere (CI reuses one venv across fresh clones: see .ci/run).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The dependency set is keyed on the pins and the metadata: change either and the
# next run re-installs into the venv (pip moves only what changed).
DEPS_KEY := $(shell cat constraints.txt setup.cfg | sha256sum | cut -c1-12)
STAMP := $(VENV)/.torchfit-deps-$(DEPS_KEY)
DEMO_STAMP := $(VENV)/.torchfit-demo-deps-$(DEPS_KEY)
EXTRAS ?= dev
DEMO_EXTRAS ?= plot

.PHONY: install install-demo demo test test-torch bench bench-tiny bench-checkpoint bench-peers gpu-check notebooks clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel

# The dev set, with the pinned torch (the CUDA build where the registry's default is one).
$(STAMP): constraints.txt setup.cfg | $(VENV)/bin/python
	$(PY) -m pip install -c constraints.txt -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.torchfit-deps-* $(VENV)/.torchfit-demo-deps-*
	touch $@ $(DEMO_STAMP)

# The runtime set only. Without an NVIDIA GPU, a CPU-only torch where pip can see one
# (tools/cpu_torch.py: a `+cpu` wheel in pip's find-links), else the pinned build; a venv
# that had the dev set (an older stamp) keeps the pinned build, which its torchvision needs.
$(DEMO_STAMP): constraints.txt setup.cfg tools/cpu_torch.py | $(VENV)/bin/python
	cpu_torch="$$(ls $(VENV)/.torchfit-deps-* >/dev/null 2>&1 || $(PY) tools/cpu_torch.py)"; \
	if [ -n "$$cpu_torch" ]; then \
		grep -v '^torch==' constraints.txt > $(VENV)/demo-constraints.txt; \
		echo "no NVIDIA GPU: $$cpu_torch (CPU-only build)"; \
	else cp constraints.txt $(VENV)/demo-constraints.txt; fi; \
	$(PY) -m pip install -c $(VENV)/demo-constraints.txt $$cpu_torch -e ".[$(DEMO_EXTRAS)]"
	rm -f $(VENV)/.torchfit-demo-deps-*
	touch $@

# The editable install is re-pointed at this checkout every time (cheap), so one
# shared venv serves any number of clones.
install: $(STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

install-demo: $(DEMO_STAMP)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .

demo: install-demo
	$(PY) examples/demo.py --out demo_output

test: install
	TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 $(PY) -m pytest -q

# The suite on another torch than the pinned one, in its own venv (never the shared one):
#   make test-torch TORCH=2.15.0 TORCHVISION=0.29.2   # the newest on the registry
#   make test-torch TORCH=2.3.0 TORCHVISION=0.18.0    # the oldest setup.cfg admits
# TORCHVISION may be left out (pip picks one that fits); TORCH_PINS adds requirements
# (e.g. TORCH_PINS='numpy<2').
# The venv stays for reruns; `make clean` removes it.
TORCH_VENV = .venv-torch-$(TORCH)
test-torch:
	@test -n "$(TORCH)" || { echo "usage: make test-torch TORCH=2.15.0 [TORCHVISION=0.29.2] [TORCH_PINS='numpy<2']"; exit 2; }
	test -x $(TORCH_VENV)/bin/python || $(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(TORCH_VENV)/bin/python -m pip install "torch==$(TORCH)" $(if $(TORCHVISION),"torchvision==$(TORCHVISION)") \
		$(foreach pin,$(TORCH_PINS),"$(pin)") -e ".[dev]"
	$(TORCH_VENV)/bin/python -m pip list 2>/dev/null | grep -E '^(torch|torchvision|numpy) '
	TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 $(TORCH_VENV)/bin/python -m pytest -q

# `make bench BENCH_ARGS=--quick` for a short run; results go to benchmarks/results/.
bench: install
	$(PY) benchmarks/overhead.py $(BENCH_ARGS)
	$(PY) benchmarks/tiny_fit.py $(filter --quick,$(BENCH_ARGS))
	$(PY) benchmarks/checkpoint_cost.py

# What exact mid-epoch checkpoints (ModelCheckpoint(save_freq=N), BackupAndRestore) and resuming cost.
bench-checkpoint: install
	$(PY) benchmarks/checkpoint_cost.py $(BENCH_ARGS)

# A unit-test-sized fit (128 rows, 3 epochs, validation) against a hand-written loop.
bench-tiny: install
	$(PY) benchmarks/tiny_fit.py $(BENCH_ARGS)

# The peers (benchmarks/requirements-peers.txt) live in their own venv, never the shared
# one: it sees the shared venv's packages (torch...) through a .pth line.
PEERS_VENV ?= benchmarks/.venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python
$(PEERS_VENV)/.installed: benchmarks/requirements-peers.txt constraints.txt
	test -x $(PEERS_PY) || $(PY) -m venv $(PEERS_VENV)
	$(PY) -c "import os, site; print(os.path.realpath(site.getsitepackages()[0]))" \
		> "$$($(PEERS_PY) -c 'import site; print(site.getsitepackages()[0])')/torchfit-shared-venv.pth"
	$(PEERS_PY) -m pip install -q -c constraints.txt -r benchmarks/requirements-peers.txt
	touch $@

bench-peers: install $(PEERS_VENV)/.installed
	$(PEERS_PY) benchmarks/overhead.py $(BENCH_ARGS)

# Everything that needs a CUDA GPU (CI has none): benchmarks/README.md, "On a GPU".
gpu-check: install
	PYTHON=$(PY) benchmarks/gpu_check.sh

notebooks: install
	$(PY) notebooks/run_notebooks.py --write

clean:
	rm -rf .venv .venv-torch-* build *.egg-info demo_output .pytest_cache
