# Two commands on a fresh machine: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup demo test test-fast bench bench-gpu clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23"
	$(PY) -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/rayprof submit jobs/fleet.yaml

test: $(STAMP)
	$(PY) -m pytest -q -ra tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra tests/unit

# Each benchmark prints its table and rewrites its section of benchmarks/RESULTS.md. scaling.py's
# multi-node rows need cluster/local_cluster.sh to start here; where it cannot, the page says why.
bench: $(STAMP)  # the CPU set, about half an hour on a 2-core CPU-only machine
	$(PY) benchmarks/instrumentation_overhead.py
	$(PY) benchmarks/sink_throughput.py
	$(PY) benchmarks/query_summary.py
	$(PY) benchmarks/decode.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/startup.py
	$(PY) benchmarks/scaling.py
	$(PY) benchmarks/load.py

bench-gpu: $(STAMP)  # on a machine with a CUDA GPU (without one it says so and exits 0)
	$(PY) benchmarks/gpu_set.py

clean:
	rm -rf $(VENV) runs .pytest_cache
