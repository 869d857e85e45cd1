# make demo: the main job end to end on synthetic phantoms. make test: the test suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PTX    := $(VENV)/bin/ptxfast
DEMO   ?= demo

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check ptxfast tests bench
	$(VENV)/bin/ruff format --check ptxfast tests bench

demo: install
	$(PTX) synth $(DEMO)/phantoms --n 200 --seed 0 --preview $(DEMO)/preview.png

clean:
	rm -rf $(DEMO) runs exports
