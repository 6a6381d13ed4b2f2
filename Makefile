# kvmotion — common tasks. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
CP := tests/control-plane

.PHONY: help deps build crds crds-check manifests chart-lint lint unit test test-build demo demo-down integration \
        bench-agent bench bench-evacuation bench-transports control-plane-build control-plane-up control-plane-down lab-up \
        lab-down clean images

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-22s %s\n", $$1, $$2}'

deps: ## Install system packages the build and the lab need (Debian, root)
	tests/lab/install.sh

build: deps ## Build every crate and binary
	$(CARGO) build --workspace --all-targets

images: deps ## Build the controller and agent OCI images into target/images/ (no registry; root)
	tests/images/build.sh

crds: ## Regenerate crds/*.yaml from the Rust types in api/ (and the chart's copies)
	$(CARGO) run --quiet -p kvmotion-api --bin crdgen -- crds
	cp crds/*.yaml charts/kvmotion/crds/

# helm installs the CRDs from the chart's crds/, which must hold the same
# files as crds/; config/ is rendered from the chart with the pinned helm.
manifests: ## Copy crds/ into the chart and render config/ from charts/kvmotion
	cp crds/*.yaml charts/kvmotion/crds/
	charts/render.sh

chart-lint: ## helm lint --strict of charts/kvmotion (pinned helm, built if missing)
	@$(CP)/build.sh helm
	@. $(CP)/lib.sh && "$$HELM_BIN/helm" lint --strict charts/kvmotion

lint: deps ## rustfmt and clippy (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Unit tests (no cluster needed; includes the CRD drift check)
	$(CARGO) test --workspace --lib --bins

integration: ## Integration tests against the real control plane (started if needed)
	$(CARGO) test -p kvmotion-tests

# The whole suite. A control plane or lab that was already running is left
# running; what this target started it stops, whatever the result.
test: deps ## Lint, unit, integration and lab tests: what CI runs
	@$(CP)/build.sh
	@tests/with-lab.sh --meanwhile $(MAKE) --no-print-directory test-build -- \
	  tests/retry-guest-faults.sh $(CARGO) test --workspace --no-fail-fast

# What `make test` does while the control plane and the lab start.
test-build: lint ## Lint, then compile every test without running it
	$(CARGO) test --workspace --no-run

# KEEP=1 leaves the control plane, the lab with its kubelets, the release
# and the guest running; `make demo-down` stops them.
demo: deps ## helm-install kvmotion on the lab's two kubelet nodes and live-migrate a guest with `kubectl migrate --wait` (KEEP=1: leave it running)
	@$(CP)/build.sh
	@tests/with-lab.sh $(CARGO) run -q -p kvmotion-tests --bin demo

demo-down: ## Stop what `make demo KEEP=1` left running: the release, guest, kubelets, lab, control plane
	@. $(CP)/lib.sh && cp_ready && "$$HELM_BIN/helm" --kubeconfig "$$CP_STATE/kubeconfig" uninstall kvmotion -n kvmotion-system --wait >/dev/null 2>&1 || true
	@rm -f target/demo/kept
	@tests/lab/lab.sh down
	@$(CP)/down.sh

bench-agent: ## Agent vs virsh on the lab; writes target/bench/agent.json
	@$(CP)/up.sh && tests/lab/lab.sh up && \
	  $(CARGO) run --release -q -p kvmotion-tests --bin bench-agent

bench: ## Controller vs virsh on the lab, 1,000 migrations on fake agents, the transports; writes target/bench/controller.json and transports.json
	@$(CP)/up.sh && tests/lab/lab.sh up && \
	  KVMOTION_DIRTY_RATE_EVERY_SECONDS=2 $(CARGO) run --release -q -p kvmotion-tests --bin bench-controller && \
	  $(CARGO) run --release -q -p kvmotion-tests --bin bench-scale && \
	  $(CARGO) run --release -q -p kvmotion-tests --bin bench-transports

bench-transports: ## One guest moved Direct, Tunnelled, TLS and Tunnelled over qemu+tls, side by side; writes target/bench/transports.json
	@$(CP)/up.sh && tests/lab/lab.sh up && \
	  $(CARGO) run --release -q -p kvmotion-tests --bin bench-transports

bench-evacuation: ## Four guests evacuated by a NodeEvacuation vs a sequential virsh loop, and a 100-node fleet's plan time; writes target/bench/evacuation.json
	@$(CP)/up.sh && tests/lab/lab.sh up && \
	  $(CARGO) run --release -q -p kvmotion-tests --bin bench-evacuation

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
