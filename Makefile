# Circuit Breaker. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo
NATS_BIN_FILE := target/nats-server-bin
# Tests find nats-server through NATS_SERVER_BIN, written by `make setup`.
WITH_NATS = NATS_SERVER_BIN="$$(cat $(NATS_BIN_FILE))"

.PHONY: setup test lint bench bench-quick plugins demo clean

## setup: add the wasm32-wasip2 target, find or install nats-server >= 2.12,
## install the pinned Python and JavaScript component toolchains
setup:
	@scripts/setup.sh
	@scripts/guest-tools.sh

GUARDS := -p amount-limit -p require-fields -p siblings-in-place -p business-hours
ACTIONS := -p auto-advance -p audit-log
PLUGINS_WASM = --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --target-dir target/wasm

## lint: rustfmt and clippy (host workspace, and the plugins as wasm), warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path plugins/Cargo.toml --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --release $(PLUGINS_WASM) $(GUARDS) -p misbehave -- -D warnings
	$(CARGO) clippy --release $(PLUGINS_WASM) $(ACTIONS) -p wrong-world -p misbehave-action -- -D warnings

## test: everything CI runs: setup, lint, all tests against real nats-server
## (benches are not run here: speed is measured by `make bench`, not in tests)
test: setup lint
	@scripts/run-tests.sh

## plugins: build the example plugins into target/plugins/<name>.wasm
plugins: setup
	$(CARGO) build --release $(PLUGINS_WASM) $(GUARDS)
	$(CARGO) build --release $(PLUGINS_WASM) $(ACTIONS)
	@mkdir -p target/plugins
	@for p in amount-limit require-fields siblings-in-place business-hours auto-advance audit-log; do \
		cp target/wasm/wasm32-wasip2/release/$$(echo $$p | tr - _).wasm target/plugins/$$p.wasm; done
	@scripts/guest-build.sh target/guest-plugins
	@cp target/guest-plugins/py-amount-limit.wasm target/guest-plugins/py-auto-advance.wasm \
		target/guest-plugins/js-require-fields.wasm target/guest-plugins/js-auto-advance.wasm target/plugins/
	@ls -l target/plugins

## demo: build the plugins and the binary, then run `cb-host demo`
demo: plugins
	$(CARGO) build --release -p cb-host-cli
	CB_NATS_SERVER_BIN="$$(cat $(NATS_BIN_FILE))" target/release/cb-host demo

## bench: every benchmark next to its baselines (raw async-nats, the original
## strategy), then one report: target/bench/report.md and report.json
# The CPU-bound plugin bench runs first, before the disk is busy writing
# back what the storage bench stored.
bench: setup
	$(CARGO) bench -p cb-bench --bench plugins
	$(WITH_NATS) $(CARGO) bench -p cb-bench --bench storage
	$(WITH_NATS) $(CARGO) bench -p cb-bench --bench engine
	$(WITH_NATS) $(CARGO) bench -p cb-bench --bench api
	$(WITH_NATS) $(CARGO) bench -p cb-bench --bench report

## bench-quick: the same with fewer iterations (under a minute once built)
bench-quick: setup
	CB_BENCH_QUICK=1 $(CARGO) bench -p cb-bench --bench plugins
	$(WITH_NATS) CB_BENCH_QUICK=1 $(CARGO) bench -p cb-bench --bench storage
	$(WITH_NATS) CB_BENCH_QUICK=1 $(CARGO) bench -p cb-bench --bench engine
	$(WITH_NATS) CB_BENCH_QUICK=1 $(CARGO) bench -p cb-bench --bench api
	$(WITH_NATS) $(CARGO) bench -p cb-bench --bench report

clean:
	$(CARGO) clean
