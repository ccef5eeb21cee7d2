# The two commands: `make demo` and `make test`.  Both do all set-up first.
.PHONY: setup demo test check lint bytecode bench bench-suite clean fuzz
DEMO_DIR ?= /tmp/hostsetup-demo
PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	@.venv/bin/hostsetup sandbox down --dir $(DEMO_DIR) >/dev/null 2>&1 || true
	.venv/bin/hostsetup sandbox up --dir $(DEMO_DIR)
	.venv/bin/hostsetup sandbox shell --dir $(DEMO_DIR) -- $(CURDIR)/.venv/bin/hostsetup --answers $(DEMO_DIR)/demo-answers.yaml --log $(DEMO_DIR)/wizard.log --report $(DEMO_DIR)/report.json; \
	  rc=$$?; .venv/bin/hostsetup sandbox down --dir $(DEMO_DIR); exit $$rc

lint: setup
	.venv/bin/ruff check --no-cache wizard steps backends sandbox tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports

# Every test, 3 at a time.  --dist loadgroup: the tests that share a module's sandbox
# run on one worker, longest first (tests/conftest.py).
test: lint bytecode
	$(PY) -m pytest -q -n 3 --dist loadgroup tests

# The checkout's bytecode: under PYTHONDONTWRITEBYTECODE every process the tests start
# (CLI, agents, wizards) would otherwise compile the product again (~8% of a CLI run).
bytecode: setup
	$(PY) -m compileall -q wizard steps backends sandbox tests

# Lint + the fast layer (fakes, models, no process, no daemon): seconds.
check: setup
	.venv/bin/ruff check --no-cache wizard steps backends tests bench
	.venv/bin/mypy
	.venv/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider -m "not daemons and not processes" tests

# The long randomized suites (make test runs a seeded sample of each): the answers
# loader's property test, randomized, the wizard's key-mash test, a few hundred
# random key sequences (HOSTSETUP_FUZZ_SEED=N to vary), and the journal's kill test at
# every operation boundary.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q --timeout=3600 tests/test_answers_fuzz.py
	HOSTSETUP_FUZZ=1 $(PY) -m pytest -q --timeout=0 tests/test_tui_keymash.py
	HOSTSETUP_FUZZ=1 $(PY) -m pytest -q --timeout=0 tests/test_resume_undo.py -k boundary

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

# Where the test suite's time goes (runs the whole suite, as make test does).
bench-suite: bytecode
	$(PY) bench/suite_times.py

clean:
	rm -rf .venv
