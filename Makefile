# The project's entry points. `make test` is what CI runs (after installing what it needs in
# .ci/run); `make lint` is the style gate.

CARGO ?= cargo
CARGO_FLAGS ?= --locked

.PHONY: build test lint fmt clean demo

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

# The end-to-end tests drive the built binaries, so those are built first. The manifests in
# deploy/ are validated offline against the Kubernetes API schemas (tests/tests/deploy.rs then
# checks they set only what the binaries read).
test:
	python3 deploy/validate
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	$(CARGO) test $(CARGO_FLAGS) --workspace

# As root: a storefront on two nodes (network namespaces), meshed by the real node agents and
# ztunnels, narrated step by step; everything it creates is removed at the end.
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
demo:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	$(TARGET_DIR)/debug/demo

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

# Benchmarks (as root: they create network namespaces and iptables rules): release binaries,
# then meshbench measures direct vs ours vs upstream ztunnel in one run, prints a table and
# writes JSON to bench/results/. Extra flags: make bench BENCH_ARGS="--window 8".
.PHONY: bench
bench:
	$(CARGO) build $(CARGO_FLAGS) --release --bins
	$(TARGET_DIR)/release/meshbench --ztunnel $(TARGET_DIR)/release/ztunnel $(BENCH_ARGS)
