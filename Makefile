# Wallaby Gateway — every target installs what it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run test lint check bench bench-rest clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

install: $(VENV)/.installed node_modules/.installed

## run: start the gateway (and an embedded CouchDB-compatible server unless COUCHDB_URL is set)
run: install
	$(BIN)/python -m gateway run $(ARGS)

## test: the whole test suite against a real CouchDB-compatible server
test: install
	$(BIN)/pytest $(ARGS)

## lint: ruff and mypy --strict (for Python 3.11, the floor, and 3.12 and 3.13)
lint: install
	$(BIN)/ruff check gateway tests benches deploy
	$(BIN)/mypy
	$(BIN)/mypy --python-version 3.12
	$(BIN)/mypy --python-version 3.13

check: lint test

## bench-rest: REST proxy cost, direct vs nginx vs gateway (needs Debian's wrk and nginx), once
## with the scheduler placing every process, once with the proxy on a CPU of its own (~12 min)
bench-rest: install
	timeout 900 $(BIN)/python -m benches.rest_proxy
	timeout 900 $(BIN)/python -m benches.rest_proxy --placement split --output benches/results/rest_proxy-split.json

## bench-fanout: WebSocket fan-out to 100/1,000/10,000 subscribers vs direct feeds, 20
## changes/s to 10,000 (200,000 deliveries/s offered), a broadcast (1 change/s) to
## 10,000, and the machine's floor for that broadcast (~11 min)
bench-fanout: install
	timeout 1200 $(BIN)/python -m benches.fanout
	timeout 600 $(BIN)/python -m benches.fanout --clients 10000 --baseline --rate 20 --output benches/results/fanout-throughput.json
	timeout 600 $(BIN)/python -m benches.fanout --clients 10000 --baseline --rate 1 --output benches/results/fanout-broadcast.json
	timeout 300 $(BIN)/python -m benches.send_floor

## bench-reconnect: 1,000 subscribers drop and resume at once (~1 min)
bench-reconnect: install
	timeout 600 $(BIN)/python -m benches.reconnect

## bench-stream: 1 GiB attachment up and down, through the gateway and direct (~2 min)
bench-stream: install
	timeout 900 $(BIN)/python -m benches.stream

## bench-browser-reads: a 100-document query read plain, gzip-coded and revalidated (304)
## through the gateway, against direct (~2 min)
bench-browser-reads: install
	timeout 600 $(BIN)/python -m benches.browser_reads

## bench-big-answers: a ~43 MiB _all_docs?include_docs=true answer read direct, through nginx,
## through the gateway and through one buffering answers whole, plain and gzip (~1 min)
bench-big-answers: install
	timeout 300 $(BIN)/python -m benches.big_answers

## bench-calls: Python calls per REST request (GET, PUT, view), counted by cProfile; with
## BASE=<commit> also that commit's, and the functions whose counts differ (~1-2 min)
bench-calls: install
	timeout 600 $(BIN)/python -m benches.call_counts $(if $(BASE),--compare-commit $(BASE))

.PHONY: bench-fanout bench-reconnect bench-stream bench-browser-reads bench-big-answers bench-calls
## bench: every benchmark in turn (results in benches/results/, see BENCHMARKS.md)
bench: bench-rest bench-fanout bench-reconnect bench-stream bench-browser-reads bench-big-answers \
	bench-calls

## soak: mixed REST + WebSocket soak against a real gateway (SOAK_SECONDS, default 600; report in var/reliability/)
soak: install ; timeout $$(( $${SOAK_SECONDS:-600} + 300 )) $(BIN)/python -m tests.reliability.soak --duration $${SOAK_SECONDS:-600}

clean:
	rm -rf $(VENV) node_modules var .mypy_cache .ruff_cache .pytest_cache
