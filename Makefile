# `make run` and `make test` work on a fresh machine: they create .venv and install
# the pinned versions in requirements.txt first (once; re-done when it changes).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install run test test-fast lint clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m conspo train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)  # the tier without the tests marked slow (end-to-end runs, torchrun, fault injection)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)  # ruff's settings are in pyproject.toml
	$(PY) -m ruff check conspo tests tests_verl bench examples
	$(PY) -m ruff format --check conspo tests tests_verl bench examples

clean:
	rm -rf $(VENV) $(VERL_VENV) .pytest_cache  # never runs/: results are not build output

# `make test-verl`: the verl plug-in's tests, in their own venv (verl 0.9.1 pins a transformers
# older than requirements.txt's), created from requirements-verl.txt on first use.
VERL_VENV  ?= .venv-verl
VERL_PY     = $(VERL_VENV)/bin/python
VERL_STAMP  = $(VERL_VENV)/.installed

.PHONY: test-verl

$(VERL_STAMP): requirements-verl.txt pyproject.toml
	test -x $(VERL_PY) || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_PY) -m pip install --quiet --upgrade pip
	$(VERL_PY) -m pip install --quiet -r requirements-verl.txt
	$(VERL_PY) -m pip install --quiet --no-deps -e .
	touch $(VERL_STAMP)

test-verl: $(VERL_STAMP)
	$(VERL_PY) -m pytest -q tests_verl $(PYTEST_ARGS)
