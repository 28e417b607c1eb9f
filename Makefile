# The two commands of the README: `make serve` and `make test`. Each does its own set-up on a fresh
# machine with only Python on it (a virtualenv in .venv, the project installed into it).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPO ?= var/model_repo
MODEL ?=

.PHONY: install serve test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[serve,train,dev]'
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# The default repository is built from the committed demo runs on first use, then reused.
serve: $(STAMP)
	$(if $(filter var/model_repo,$(MODEL_REPO)),$(BIN)/dynadapter demo build --out $(MODEL_REPO))
	$(BIN)/dynadapter serve --model-repo $(MODEL_REPO) --host $(HOST) --port $(PORT) $(if $(MODEL),--model-name $(MODEL))

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
