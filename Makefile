# goplugin: the two commands are `make demo` and `make test` (see README.md).
# Everything builds with one cargo profile (release): grpcio's C++ core is
# compiled once per profile, and a second profile would cost another ~10 min.

SHELL := /bin/sh
CARGO ?= cargo
CARGO_FLAGS := --release --locked
BUILD := .build
HOSTS := $(BUILD)/go-hosts
VENV := $(BUILD)/venv
PYGEN := $(BUILD)/python-kv
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR_OR_DEFAULT := $(abspath $(if $(TARGET_DIR),$(TARGET_DIR),target))
KV_PLUGIN_BIN := $(if $(TARGET_DIR),$(TARGET_DIR),target)/release/kv-plugin
COUNTER_PLUGIN_BIN := $(if $(TARGET_DIR),$(TARGET_DIR),target)/release/counter-plugin

.PHONY: demo test deps hosts terraform python-ref proto-corpus build lint doc bench bench-quick fuzz clean

## demo: install what is missing, build, and run kv put/get (and the bidirectional
## counter example) through the current go-plugin host, then a get through
## goplugin's own Rust host
demo: deps hosts
	$(CARGO) build $(CARGO_FLAGS) --workspace --bin kv-plugin --bin counter-plugin --bin kv-host
	@dir=$$(mktemp -d) && cd "$$dir" && \
	echo "== in $$dir, host = go-plugin $$(sed -n 's/.*hashicorp\/go-plugin \(v[0-9.]*\).*/\1/p' $(CURDIR)/tests/fixtures/go-host/go.mod), plugin = $(KV_PLUGIN_BIN)" && \
	echo '$$ kv put hello world' && \
	KV_PLUGIN="$(abspath $(KV_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/kv-host-current put hello world 2>host.log && \
	echo '$$ kv get hello' && \
	KV_PLUGIN="$(abspath $(KV_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/kv-host-current get hello 2>>host.log && \
	echo "$$ cat kv_hello" && cat kv_hello && echo && \
	echo '$$ kv get missing   (a missing key is NOT_FOUND)' && \
	{ KV_PLUGIN="$(abspath $(KV_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/kv-host-current get missing 2>>host.log || true; } && \
	echo '$$ bidirectional put hits 5; bidirectional put hits 7; bidirectional get hits   (go-plugin'"'"'s own example host; counter-plugin calls it back through the broker)' && \
	COUNTER_PLUGIN="$(abspath $(COUNTER_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/examples/bidirectional/bidirectional put hits 5 2>>host.log && \
	COUNTER_PLUGIN="$(abspath $(COUNTER_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/examples/bidirectional/bidirectional put hits 7 2>>host.log && \
	COUNTER_PLUGIN="$(abspath $(COUNTER_PLUGIN_BIN))" $(CURDIR)/$(HOSTS)/examples/bidirectional/bidirectional get hits 2>>host.log && \
	echo "$$ cat kv_hits" && cat kv_hits && echo && \
	echo '$$ kv-host get hello   (goplugin'"'"'s Rust host, driving go-plugin'"'"'s own Go plugin with AutoMTLS)' && \
	KV_HOST_AUTOMTLS=1 KV_PLUGIN="$(CURDIR)/$(HOSTS)/examples/grpc/plugin-go-grpc" $(TARGET_DIR_OR_DEFAULT)/release/kv-host get hello 2>>host.log && \
	echo "== the hosts' log of these calls: $$dir/host.log"

## test: install what is missing, then fmt, clippy, rustdoc and every test
test: deps hosts terraform python-ref proto-corpus lint doc bench-quick
	$(CARGO) build $(CARGO_FLAGS) --workspace --exclude greeter-plugin --bins --examples
	$(CARGO) test $(CARGO_FLAGS) --workspace --all-targets
	$(CARGO) test $(CARGO_FLAGS) --workspace --doc

## bench: Rust vs Go vs Python KV plugins through the current go-plugin host,
## goplugin's Rust host vs go-plugin's Go host on the same plugins, and the
## Rust provider vs a Go one through OpenTofu (5 interleaved runs each);
## writes bench/results/, bench/results-hosts/ and bench/results-providers/
BENCH_RUNS ?= 5
BENCH_CALLS ?= 5000
BENCH_BUILD := $(CARGO) build $(CARGO_FLAGS) --workspace --exclude greeter-plugin --bins --examples
bench: deps hosts terraform python-ref $(VENV)/bench-stamp
	$(BENCH_BUILD)
	$(VENV)/bin/python bench/run.py --runs $(BENCH_RUNS) --calls $(BENCH_CALLS)
	$(VENV)/bin/python bench/run.py --hosts --runs $(BENCH_RUNS) --calls $(BENCH_CALLS) --out bench/results-hosts
	$(VENV)/bin/python bench/providers.py --runs $(BENCH_RUNS)

## bench-quick: the same in a few hundred calls, into .build/bench* (run by `make test`)
bench-quick: terraform $(VENV)/bench-stamp
	$(BENCH_BUILD)
	$(VENV)/bin/python bench/run.py --runs 1 --calls 300 --out $(BUILD)/bench
	$(VENV)/bin/python bench/run.py --hosts --runs 1 --calls 300 --out $(BUILD)/bench-hosts
	$(VENV)/bin/python bench/providers.py --runs 1 --out $(BUILD)/bench-providers

$(VENV)/bench-stamp: $(VENV)/stamp bench/requirements.txt
	$(VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $@

deps:
	@.ci/install-deps

## hosts: the Go test hosts (kv and counter, current go-plugin and 1.0.1), the Go
## KV plugin, and go-plugin's own grpc and bidirectional examples, into .build/go-hosts
GO_HOSTS := $(addprefix $(HOSTS)/,kv-host-current kv-host-101 counter-host-current counter-host-101 streaming-host-current kv-plugin-go)
GO_EXAMPLES := $(addprefix $(HOSTS)/examples/,grpc/grpc grpc/plugin-go-grpc bidirectional/bidirectional bidirectional/plugin-go-grpc)
hosts: $(GO_HOSTS) $(GO_EXAMPLES)

$(GO_HOSTS) &: $(wildcard tests/fixtures/go-host/*.go tests/fixtures/go-counter-host/*.go tests/fixtures/go-streaming-host/*.go) tests/fixtures/go-host/go.mod tests/fixtures/go-host/go.sum tests/fixtures/go-host/build.sh tests/fixtures/go-kv-plugin/main.go examples/kv-plugin/proto/kv.proto examples/counter-plugin/proto/counter.proto examples/counter-plugin/proto/lender.proto examples/streaming-plugin/proto/streaming.proto
	tests/fixtures/go-host/build.sh $(HOSTS)

# go-plugin's examples at the version go.mod pins: rebuilt only when that changes.
$(GO_EXAMPLES) &: tests/fixtures/go-host/go.mod tests/fixtures/go-examples/build.sh
	tests/fixtures/go-examples/build.sh $(HOSTS)

## terraform: HashiCorp Terraform and OpenTofu at pinned releases, built from
## their Go modules, and the Go comparison provider on terraform-plugin-go,
## into .build/
TOFU := $(BUILD)/opentofu/tofu
TERRAFORM := $(BUILD)/terraform/terraform
GO_PROVIDER := $(BUILD)/go-provider/terraform-provider-kv
terraform: $(TERRAFORM) $(TOFU) $(GO_PROVIDER)

$(TERRAFORM): tests/fixtures/terraform/build.sh tests/fixtures/go-module-build.sh
	tests/fixtures/terraform/build.sh $(BUILD)/terraform

$(TOFU): tests/fixtures/opentofu/build.sh tests/fixtures/go-module-build.sh
	tests/fixtures/opentofu/build.sh $(BUILD)/opentofu

$(GO_PROVIDER): tests/fixtures/go-provider/main.go tests/fixtures/go-provider/go.mod tests/fixtures/go-provider/go.sum
	cd tests/fixtures/go-provider && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -o $(CURDIR)/$(GO_PROVIDER) .

python-ref: $(PYGEN)/stamp

## proto-corpus: real go-plugin ecosystems' .proto files at pinned versions
## (terraform-plugin-go, go-plugin, Vault's SDK, Grafana's SDK,
## go-kms-wrapping), from the Go module proxy into .build/proto-corpus, for
## the codegen tests (tests/fixtures/proto-corpus)
proto-corpus: $(BUILD)/proto-corpus/stamp

$(BUILD)/proto-corpus/stamp: tests/fixtures/proto-corpus/fetch.sh
	tests/fixtures/proto-corpus/fetch.sh $(BUILD)/proto-corpus

$(VENV)/stamp: tests/fixtures/python-kv/requirements.txt
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -r tests/fixtures/python-kv/requirements.txt
	touch $@

# The Python reference plugin's stubs, and the hostile test plugin's
# (tests/fixtures/python-hostile: stdio and broker too).
$(PYGEN)/stamp: $(VENV)/stamp examples/kv-plugin/proto/kv.proto proto/plugin/grpc_controller.proto proto/plugin/grpc_stdio.proto proto/plugin/grpc_broker.proto
	mkdir -p $(PYGEN)
	$(VENV)/bin/python -m grpc_tools.protoc -I examples/kv-plugin/proto -I proto/plugin \
		--python_out=$(PYGEN) --grpc_python_out=$(PYGEN) kv.proto grpc_controller.proto \
		grpc_stdio.proto grpc_broker.proto
	touch $@

build:
	$(CARGO) build $(CARGO_FLAGS) --workspace --all-targets

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy $(CARGO_FLAGS) --workspace --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc $(CARGO_FLAGS) --workspace --no-deps

## fuzz: run the env/handshake fuzz target for FUZZ_SECONDS (default 60); not part of `make test`:
## its instrumented build compiles gRPC's C++ core once more (~10 min)
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --release env_handshake -- -max_total_time=$(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD)
	$(CARGO) clean
