# The two entry points a new user needs: `make demo` (the whole pipeline on an
# embedded dataset) and `make test`. Both create .venv/ on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.edgeft-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[train,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgeft demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run_all.py

clean:
	rm -rf runs build dist *.egg-info
