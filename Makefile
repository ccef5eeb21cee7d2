# The two commands: `make demo` and `make test`.  Both do all set-up first.
.PHONY: setup demo test lint bench fuzz clean
DEMO_DIR ?= /tmp/hostsetup-demo
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/hostsetup sandbox down --dir $(DEMO_DIR) >/dev/null 2>&1 || true
	.venv/bin/hostsetup sandbox up --dir $(DEMO_DIR)
	.venv/bin/hostsetup --answers $(DEMO_DIR)/demo-answers.yaml --log $(DEMO_DIR)/wizard.log --report $(DEMO_DIR)/report.json; \
	  rc=$$?; .venv/bin/hostsetup sandbox down --dir $(DEMO_DIR); exit $$rc

lint: setup
	.venv/bin/ruff check --no-cache wizard steps backends tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

test: lint
	$(PY) -m pytest -q tests

# The answers loader's property test, long and randomized (make test runs a seeded sample).
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --timeout=3600 tests/test_answers_fuzz.py

bench: setup
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .venv
