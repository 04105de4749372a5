# Circuit Breaker. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
CARGO ?= cargo
NATS_BIN_FILE := target/nats-server-bin
# Tests find nats-server through NATS_SERVER_BIN, written by `make setup`.
WITH_NATS = NATS_SERVER_BIN="$$(cat $(NATS_BIN_FILE))"

.PHONY: setup test lint unit bench bench-quick clean

## setup: add the wasm32-wasip2 target, find or install nats-server >= 2.12
setup:
	@scripts/setup.sh

## lint: rustfmt and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## test: everything CI runs: setup, lint, all tests against real nats-server
test: setup lint
	$(WITH_NATS) $(CARGO) test --workspace --all-targets
	$(WITH_NATS) $(CARGO) test --workspace --doc

## bench: storage benchmarks with raw async-nats baselines (release build)
bench: setup
	$(WITH_NATS) $(CARGO) bench --bench storage

## bench-quick: the same with fewer iterations
bench-quick: setup
	$(WITH_NATS) CB_BENCH_QUICK=1 $(CARGO) bench --bench storage

clean:
	$(CARGO) clean
