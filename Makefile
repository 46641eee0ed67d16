# portcullis — `make test` runs every test; `make demo` starts the whole stack locally.
# Both install what is missing first (`make deps`).

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build deps test lint unit demo clean

all: build

build:
	$(CARGO) build --release

## deps: install what the tests and the demo need (idempotent).
deps:
	@scripts/ensure-deps.sh

## lint: formatting, clippy (warnings are errors) and cargo-deny's licence, ban and source checks (deny.toml).
## The advisory check needs a database that cannot be fetched here, so it stays out.
lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny check licenses bans sources

## test: everything — lint, unit and integration tests against real Redis, IdP and Envoy, manifests.
test: deps lint
	$(CARGO) test --workspace --all-targets
	STRICT_METRICS=1 scripts/validate-manifests.sh
	d=$$(mktemp -d) && DEMO_ONESHOT=1 DEMO_DIR=$$d scripts/demo.sh && rm -rf $$d

## demo: Redis, the IdP, Envoy, an upstream and portcullis on free local ports; Ctrl-C stops everything.
demo: deps
	@scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf .venv .demo tests/idp/node_modules
