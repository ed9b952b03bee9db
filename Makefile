# jtl: `make demo` runs the main job, `make test` the suite; both set up on first use.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
APT_PKGS := python3-torchvision dataset-fashion-mnist slurm-wlm munge
# timm on Debian's torch, for the parity tests of the timm families (tests/conftest.py: timm_python).
TIMM_VENV := .venv-timm
TIMM_STAMP := $(TIMM_VENV)/.setup-stamp
TIMM_PKGS := timm==1.0.31 pyyaml huggingface_hub safetensors

.PHONY: setup test test-slow test-all demo bench clean

setup: $(STAMP) $(TIMM_STAMP)

$(STAMP): pyproject.toml constraints.txt
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; fi; \
	else echo "setup: not root or no apt-get; install $(APT_PKGS) yourself for the reference tests"; fi
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

$(TIMM_STAMP): Makefile $(STAMP)
	@if /usr/bin/python3 -c "import torch, torchvision" 2>/dev/null; then \
	  test -x $(TIMM_VENV)/bin/python || /usr/bin/python3 -m venv --system-site-packages $(TIMM_VENV); \
	  $(TIMM_VENV)/bin/pip install -q --no-deps $(TIMM_PKGS) && touch $(TIMM_STAMP); \
	else echo "setup: no torch for /usr/bin/python3 (python3-torchvision); timm parity tests will fail in CI"; fi

# Two pytest workers (pytest-xdist), one test file each at a time (module fixtures build their
# references once): compiling is single-threaded, so two files overlap on a 2-core machine.
TEST_JOBS ?= 2

test: setup
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow" tests

test-slow: setup
	$(BIN)/python -m pytest -q -m slow tests

test-all: setup
	$(BIN)/python -m pytest -q tests

demo: setup
	$(BIN)/python scripts/demo_transfer.py --workdir out/demo

bench: setup
	$(BIN)/python scripts/bench_port.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) out .pytest_cache
