# The project's entry points. `make test` is what CI runs (after installing what it needs in
# .ci/run); `make lint` is the style gate.

CARGO ?= cargo
CARGO_FLAGS ?= --locked

.PHONY: build test lint fmt clean

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

# The end-to-end tests drive the built binaries, so those are built first.
test:
	$(CARGO) build $(CARGO_FLAGS) --workspace --bins
	$(CARGO) test $(CARGO_FLAGS) --workspace

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
BENCH_TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
bench:
	$(CARGO) build $(CARGO_FLAGS) --release --bins
	$(BENCH_TARGET_DIR)/release/meshbench --ztunnel $(BENCH_TARGET_DIR)/release/ztunnel $(BENCH_ARGS)
