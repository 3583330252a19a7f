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
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_finetune_vs_textbook.py
	$(VENV)/bin/python benchmarks/bench_export_speed.py
	$(VENV)/bin/python benchmarks/bench_runner_overhead.py
	$(VENV)/bin/python benchmarks/bench_int8_speedup.py prepare runs/int8-bench
	$(VENV)/bin/python benchmarks/bench_int8_speedup.py measure runs/int8-bench --threads 1,2 \
		--out benchmarks/results/int8_speedup_local.json

clean:
	rm -rf runs build dist *.egg-info
