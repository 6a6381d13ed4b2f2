# kvmotion — common tasks. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CP := tests/control-plane

.PHONY: help build crds crds-check lint unit test integration \
        control-plane-build control-plane-up control-plane-down lab-up lab-down clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

build: ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

crds: ## Regenerate crds/*.yaml from the Rust types in api/
	$(CARGO) run --quiet -p kvmotion-api --bin crdgen -- crds

lint: ## rustfmt and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Unit tests (no cluster needed; includes the CRD drift check)
	$(CARGO) test --workspace --lib --bins

integration: ## Integration tests against the real control plane (started if needed)
	$(CARGO) test -p kvmotion-tests

# The whole suite. A control plane that was already running is left running;
# one started here is stopped afterwards, whatever the result.
test: lint ## Lint, unit and integration tests: what CI runs
	@$(CP)/build.sh
	@was_up=false; \
	  if [ -f target/control-plane/kubeconfig ] && $(CP)/up.sh >/dev/null 2>&1; then was_up=true; fi; \
	  $(CP)/up.sh && \
	  $(CARGO) test --workspace --no-fail-fast; rc=$$?; \
	  $$was_up || $(CP)/down.sh; \
	  exit $$rc

control-plane-build: ## Build kube-apiserver, etcd, kubectl and helm (cached outside the clone)
	$(CP)/build.sh

control-plane-up: ## Start (or reuse) the test control plane; then: source target/control-plane/env
	$(CP)/up.sh

control-plane-down: ## Stop the test control plane and delete its data
	$(CP)/down.sh

lab-up: ## Start the two-node libvirt lab (root; installs libvirt/QEMU, builds the guest)
	tests/lab/lab.sh up

lab-down: ## Stop the lab: guests, libvirtds, namespaces, state
	tests/lab/lab.sh down

clean: control-plane-down ## Stop everything and remove build output
	$(CARGO) clean
