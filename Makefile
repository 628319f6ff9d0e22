# The two commands of the README: `make demo` and `make test`.
# Each runs scripts/setup.sh first (Debian packages, .venv), so a fresh
# Debian 12 machine needs nothing else. Both need root.
PY := .venv/bin/python

.PHONY: setup demo test lint bench clean

.venv/.setup-done: scripts/setup.sh pyproject.toml
	./scripts/setup.sh

setup: .venv/.setup-done

demo: setup
	$(PY) demo/demo.py

test: setup
	PATCHD_REQUIRE_LAB=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(PY) -m pytest -m lint

bench: setup
	$(PY) bench/bench_apply.py

clean:
	rm -rf .venv build *.egg-info
