# Every target sets itself up: a fresh machine needs only python3 (3.10+) and make.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
JOBS   ?= 4

.PHONY: install test lint demo bench bench-full bench-slow bench-crosscheck clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# An editable install leaves pcopy's own modules uncompiled; where PYTHONDONTWRITEBYTECODE is
	# set, every start would compile them again (~30 ms).
	$(PY) -m compileall -q pcopy
	touch $(STAMP)

install: $(STAMP)

## make test: set up and run the whole test suite (what CI runs)
test: $(STAMP)
	$(PY) -m pytest -q

## make lint: ruff on everything, mypy --strict on the package
lint: $(STAMP)
	$(VENV)/bin/ruff check pcopy tests benchmarks
	$(VENV)/bin/mypy

## make demo: set up, generate a sample tree (a few thousand small files and some large ones),
## copy it with `pcopy SRC DST -j $(JOBS)` and a progress bar, then check the copy
demo: $(STAMP)
	$(PY) benchmarks/sample_tree.py demo/src
	rm -rf demo/dst
	$(VENV)/bin/pcopy demo/src demo/dst -j $(JOBS) --progress
	$(PY) benchmarks/sample_tree.py --compare demo/src demo/dst

## make bench: the quick benchmark suite (a few minutes); make bench-full: every workload
bench: $(STAMP)
	$(PY) benchmarks/bench.py --quick

bench-full: $(STAMP)
	$(PY) benchmarks/bench.py --full

## make bench-slow: pcopy and its peers on a FUSE mount that adds a delay to every request
## (docs/benchmarks-slow.md); installs fuse3 & co. first. SLOW_ARGS= (empty) runs the full matrix.
SLOW_ARGS ?= --quick
bench-slow: $(STAMP)
	bash benchmarks/slowfs/setup.sh
	$(PY) benchmarks/slowfs/bench_slow.py $(SLOW_ARGS)

## make bench-crosscheck: pcopy's slow-storage defaults on a second, independent mount (Python,
## libfuse's high-level API) with four other tree shapes, against cp -a and rsync -a
## (docs/benchmarks-slow.md, "A second mount"). CROSS_ARGS=--delays 0.2,1,5 for all three delays.
CROSS_ARGS ?= --delays 1
bench-crosscheck: $(STAMP)
	bash benchmarks/slowfs/setup.sh
	$(PY) benchmarks/slowfs/crosscheck.py $(CROSS_ARGS)

## make clean: everything generated (the venv, demo and benchmark trees, build output, caches);
## tracked benchmark results stay
clean:
	rm -rf $(VENV) demo benchmarks/work build dist .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
