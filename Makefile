# The two commands of the README: `make serve` and `make test`. Each does its own set-up on a fresh
# machine with only Python on it (a virtualenv in .venv, the project installed into it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPO ?= var/model_repo
# The DINOv2 demo by default; the repository also holds the tiny fixture (MODEL=digits-tiny).
MODEL ?= $(if $(filter var/model_repo,$(MODEL_REPO)),mnist,)

.PHONY: install promtool serve test lint clean docker-smoke lock wrk triton-venv bench-serve

$(STAMP): pyproject.toml
	@echo "installing the project into $(VENV) (about 2 min the first time: PyTorch, OpenVINO, ...; later runs skip this)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,train,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The default repository is built from the committed demo runs on first use, then reused.
serve: $(STAMP)
	$(if $(filter var/model_repo,$(MODEL_REPO)),@echo "building the demo model repository in $(MODEL_REPO) (about 2 min the first time; later runs reuse it)")
	$(if $(filter var/model_repo,$(MODEL_REPO)),$(BIN)/dynadapter demo build --out $(MODEL_REPO))
	$(BIN)/dynadapter serve --model-repo $(MODEL_REPO) --host $(HOST) --port $(PORT) $(if $(MODEL),--model-name $(MODEL))

# The metrics tests check the exposition with the real promtool (Debian's prometheus package).
promtool:
	@command -v promtool >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
	  echo "promtool could not be installed: the promtool tests will be skipped"

# `dynadapter bench serve`'s load generator (bench/lab/wrk.py) is wrk (Debian's package), apt-installed as root.
wrk:
	@command -v wrk >/dev/null || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; } || \
	  echo "wrk could not be installed: install it (apt-get install wrk) before dynadapter bench serve"

# The Triton peer of `bench serve` runs from its own environment: nvidia-pytriton pins numpy < 2.
triton-venv:
	test -x var/triton-venv/bin/python || $(PYTHON) -m venv var/triton-venv
	var/triton-venv/bin/python -m pip install --quiet -e '.[serve,bench]'

# The serving benchmark's final numbers (docs/results.md "Serving" and "Kernel ceiling"), about 35 minutes on
# 2 cores: the demo model, every variant and its +tuned row, 1 and 32 connections, 3 interleaved rounds of 10 s.
bench-serve: $(STAMP) wrk triton-venv
	$(BIN)/dynadapter bench serve --images 500 --concurrency 1,32 --rounds 3 --duration 10
	$(BIN)/dynadapter bench kernels

test: $(STAMP) promtool lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The serving image end to end: build, run, /readyz, /classify, /metrics, stop (docker/README.md).
# Uses docker, else podman (apt-installed as root if missing); ~3.5 min cold, ~20 s warm.
docker-smoke:
	PYTHON=$(PYTHON) bash docker/smoke.sh

# ruff (lint and format), then the import contracts (import-linter) and the type checker (mypy) on
# an installed copy: the checkout's folders become dynadapter.* only when installed, and neither
# tool follows the editable install's import hook (docs/architecture.md).
LINT_SITE := build/lint-site
TYPED := dynadapter.service dynadapter.contract dynadapter.options dynadapter.errors dynadapter.cpu
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	# setuptools builds in build/lib and keeps what is there: a module moved away would come back.
	rm -rf $(LINT_SITE) build/lib && $(BIN)/python -m pip install --quiet --no-deps --target $(LINT_SITE) .
	cd $(LINT_SITE) && $(CURDIR)/$(BIN)/lint-imports --no-cache $(CURDIR)/pyproject.toml
	cd $(LINT_SITE) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml --cache-dir /dev/null $(addprefix -p ,$(TYPED))

# docker/serve.lock: the serving image's pins, re-resolved from pyproject.toml's serve extra today.
lock: $(STAMP)
	mkdir -p build && $(PYTHON) docker/requirements.py pyproject.toml --extras serve --cuda-libs > build/serve-cuda.txt
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report build/serve-report.json \
	  --requirement build/serve-cuda.txt
	$(PYTHON) docker/requirements.py --lock-from build/serve-report.json > docker/serve.lock

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
