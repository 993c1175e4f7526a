# One command runs the platform, one runs the tests. Only Python 3.11+ and make are needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

.PHONY: run test test-fast chromium lint bench fuzz soak clean

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

## run: web, three workers, beat and Flower (and a bundled Redis when none answers)
run: $(INSTALLED)
	$(PY) -m project.launcher

## test: the whole suite against real Redis, worker, beat and Flower processes (and headless Chromium)
test: $(INSTALLED) chromium var/local.env
	$(PY) -m pytest $(PYTEST_ARGS)

## test-fast: the fast tier, in under a minute: the job engine's contract (tests/fast: every transition
## of both engine implementations against the test database and Redis, and their races on two
## connections) and the unit tests; in-process, no worker, beat, web or Flower process (`make test` runs them too)
test-fast: $(INSTALLED) var/local.env
	$(PY) -m pytest tests/fast tests/unit $(PYTEST_ARGS)

## var/local.env: this checkout's local settings, generated secrets and local defaults, read by every
## process (project/localconfig.py); written once, never overwritten (`make run` writes it too)
var/local.env: | $(INSTALLED)
	$(PY) -c 'from project import localconfig; localconfig.main()'

## chromium: Debian's Chromium for the browser tests (tests/e2e/test_job_page.py), installed as root
## when missing; Playwright drives it, its own browser download is never used.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ -x $(CHROMIUM) ]; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium for the browser tests"; \
		apt-get update && apt-get install -y --no-install-recommends chromium; \
	else \
		echo "$(CHROMIUM) is missing: the browser tests will fail. Install it with:"; \
		echo "    sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium"; \
	fi

## bench: the suite of issue #8 against raw Celery (drain, enqueue, groups, memory, latency, costs),
## a median of BENCH_RUNS runs each, into bench/results/ (latest.md, latest.json, plots); then a
## report's worker memory over 10k vs 100k orders. BENCH_DATABASE_URL / BENCH_REDIS_URL: see bench/environment.py
BENCH_RUNS ?= 3
bench: $(INSTALLED)
	$(PY) -m bench --runs $(BENCH_RUNS) $(BENCH_ARGS)
	$(PY) -m bench.report_memory

## fuzz: the schemathesis runs against the API (in-process, and over HTTP against a web process they
## start) and the payload property tests, far longer than in `make test` (FUZZ_EXAMPLES per API
## operation, PROPERTY_EXAMPLES per payload schema), with fresh random data each run (FUZZ_RANDOM)
## instead of CI's fixed seed.
## fuzz FUZZ_LIVE=1: schemathesis (`st run`, every check) against a live `make run`: the one answering
## at WEB_PORT, else one it starts and stops; a fresh seed each run, printed (FUZZ_SEED=<seed> replays)
FUZZ_EXAMPLES ?= 500
PROPERTY_EXAMPLES ?= 5000
FUZZ_LIVE ?=
FUZZ_SEED ?=
fuzz: $(INSTALLED)
ifeq ($(FUZZ_LIVE),)
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) PROPERTY_EXAMPLES=$(PROPERTY_EXAMPLES) FUZZ_RANDOM=1 \
		$(PY) -m pytest -o timeout=3600 \
		tests/integration/test_fuzz_api.py tests/integration/test_fuzz_live.py tests/unit/test_payload_properties.py \
		$(PYTEST_ARGS)
else
	$(PY) -m tests.fuzz_live --examples $(FUZZ_EXAMPLES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED))
endif

## soak: the randomized fault soak (tests/soak; root, for its network namespaces): five hosts, a steady load
## and faults of random kinds for SOAK_SECONDS, then a report of jobs lost, effects run twice, schedule
## ticks and recovery per fault kind; SOAK_SEED=<seed> replays a run (`make test` runs a short, seeded one)
SOAK_SECONDS ?= 1800
SOAK_SEED ?=
soak: $(INSTALLED) var/local.env
	$(PY) -m tests.soak --duration $(SOAK_SECONDS) $(if $(SOAK_SEED),--seed $(SOAK_SEED))

## lint: ruff, and the architecture contract (pyproject.toml's [tool.importlinter]; `make test` checks it too)
lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache --no-logo

clean:
	rm -rf $(VENV) var staticfiles .pytest_cache .ruff_cache
