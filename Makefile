# Two commands do everything on a fresh machine:
#   make report   set up the pinned environment, then run the workflow on the embedded default model
#   make test     set up the pinned environment, then run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.portcheck-installed
CORES ?= 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup report test test-vllm-matrix test-slurm lock clean bench-workflow bench-harness bench-compact bench-real-shape calibrate train-tiny
LINES ?= 0.18,0.23,0.32

setup: $(STAMP)

$(STAMP): requirements/cpu.lock.txt requirements/overrides.txt pyproject.toml Makefile
	@# rsync: the fs storage plugin (profiles/shared-fs) copies with it; a system package, not a pip one.
	command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# --compile-bytecode: every snakemake start imports ~600 modules; without .pyc files (uv writes none by
	@# default, and PYTHONDONTWRITEBYTECODE stops Python writing them) each start recompiles them (~1.3 s).
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode --override requirements/overrides.txt -r requirements/cpu.lock.txt
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $@

report: setup
	$(BIN)/snakemake --cores $(CORES) report
	@echo "Report: $$(ls -t reports/*/report.md | head -n 1)"

test: setup
	$(BIN)/python -m pytest

# The vLLM lines of requirements/vllm-lines.yaml, each in its own environment (.venv-vllm/<line>): the vLLM tests
# inside it, then one workflow run with the hf reference here and cpu-vllm-bf16 there; prints a table.
# LINES=0.18 runs one line (CI runs the seed's line besides make test). tcmalloc: vLLM CPU 0.18 requires it preloaded.
test-vllm-matrix: setup
	dpkg -s libtcmalloc-minimal4 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4; }
	$(BIN)/python scripts/vllm_matrix.py --lines $(LINES)

# A real single-node Slurm on this machine (scripts/slurm_cluster.sh: Debian's slurmctld, slurmd, slurmdbd + MariaDB,
# munge; loopback-only network namespace) and the workflow through profiles/slurm on the CI config
# (tests/test_slurm.py). The submit host's Snakemake + executor plugin live in .venv-slurm (requirements/slurm.lock.txt:
# the plugin needs numpy >= 2.4.5, the CPU lock has 2.3.5); the jobs run .venv's python with the jobstep plugin added
# (.venv-slurm/job-bin/python). Prints its wall time.
SLURM_VENV := .venv-slurm
SLURM_STAMP := $(SLURM_VENV)/.portcheck-installed
SLURM_JOBSTEP := snakemake-executor-plugin-slurm-jobstep==0.6.1
SLURM_DEBS := slurmctld slurmd slurmdbd slurm-client munge mariadb-server

$(SLURM_STAMP): requirements/slurm.lock.txt | $(STAMP)
	rm -rf $(SLURM_VENV)
	$(PYTHON) -m venv --without-pip $(SLURM_VENV)
	$(BIN)/uv pip install --quiet --python $(SLURM_VENV)/bin/python --compile-bytecode -r requirements/slurm.lock.txt
	$(BIN)/uv pip install --quiet --target $(SLURM_VENV)/jobstep --no-deps $(SLURM_JOBSTEP)
	mkdir -p $(SLURM_VENV)/job-bin
	printf '#!/bin/sh\n# A job'"'"'s python: the project environment plus the jobstep plugin.\nPYTHONPATH="%s$${PYTHONPATH:+:$$PYTHONPATH}" exec "%s" "$$@"\n' \
		"$(abspath $(SLURM_VENV))/jobstep" "$(abspath $(BIN))/python" > $(SLURM_VENV)/job-bin/python
	chmod +x $(SLURM_VENV)/job-bin/python
	touch $@

test-slurm: setup $(SLURM_STAMP)
	@start=$$(date +%s); \
	dpkg -s $(SLURM_DEBS) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(SLURM_DEBS) >/dev/null; }; \
	scripts/slurm_cluster.sh run $(BIN)/python -m pytest -m slurm -p no:cacheprovider -v -s tests/test_slurm.py; \
	rc=$$?; echo "make test-slurm (packages + cluster + tests): $$(( $$(date +%s) - start )) s, exit $$rc"; exit $$rc

lock: setup
	$(BIN)/uv pip freeze --python $(BIN)/python --exclude-editable > requirements/cpu.lock.txt.new
	mv requirements/cpu.lock.txt.new requirements/cpu.lock.txt

bench-workflow: setup
	$(BIN)/python scripts/bench_workflow.py

# The workflow on a random-weight checkpoint of Qwen3.5-0.8B's full shape (12-block vision tower, MTP head): each
# job's and stage's cost printed. GOAL=<snakemake targets> runs a part (default: the whole report, hours on 2 cores).
GOAL ?= report
bench-real-shape: setup
	$(BIN)/python scripts/bench_real_shape.py --goal $(GOAL)

# This workflow's throughput vs `vllm bench throughput` (cpu-vllm-bf16), and the hf harness vs a bare loop.
bench-harness: setup
	$(BIN)/python scripts/bench_harness.py

# Compact logit storage at the real vocabulary (248,320 ids): its KLD error against the exact KLD and its bytes per
# position, on a random-weight checkpoint of Qwen3.5-0.8B's text shape; writes the record the report cites.
bench-compact: setup
	$(BIN)/python scripts/bench_compact.py

# The checks' detection table: every fault class of portcheck.faults at two magnitudes and 10 clean runs (issue 18).
calibrate: setup
	$(BIN)/python scripts/calibrate.py --ship

# The embedded model's text weights, retrained by the far-context curriculum (portcheck/model/curriculum.py) and
# shipped (~11 min on one core); run after changing the curriculum, then make calibrate.
train-tiny: setup
	$(BIN)/python scripts/train_tiny.py

# Outputs only: the tracked report template (reports/templates/) and the environment stay.
clean:
	rm -rf results resources logs .snakemake
	find reports -mindepth 1 -maxdepth 1 ! -name templates -exec rm -rf {} +
