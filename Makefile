# loraplex: the two front-door commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
SHARED ?= ../shared
export LORAPLEX_SHARED := $(abspath $(SHARED))

.PHONY: all build demo demo-rust test test-deps test-rust bench fuzz model samples lint header quickstart c-test install go-test e2e

all: build

model: $(MODEL)

$(MODEL):
	bash scripts/fetch-model.sh

build:
	$(CARGO) build --release --all-targets

SAMPLES ?= models/sample-adapters

samples: $(SAMPLES)/samples.json

$(SAMPLES)/samples.json: | model
	$(CARGO) run --release --example gen_sample_adapters -- --out $(SAMPLES) --shape smollm2

# The main job: the C quickstart on SmolLM2 with sample adapters in every format (HF safetensors
# and .bin, NeMo fused and canonical, TensorRT-LLM npy and bin), one mixed batch.
demo: model samples quickstart
	target/quickstart $(MODEL) $(SAMPLES)

demo-rust: model samples
	$(CARGO) run --release --example demo -- --model $(MODEL) --adapters $(SAMPLES)

# Everything: lint first (fails fast), then Rust unit/integration tests (incl. the C/C++ ABI
# checks and valgrind on the C quickstart) and the README doc test, the Go binding (go test,
# go test -race) and the OpenAI-server end-to-end test. Under CI=true a missing fixture, model
# or tool fails its test instead of skipping it.
test: lint model test-deps test-rust go-test e2e router-test manifests cuda-check

test-deps:
	bash scripts/install-test-deps.sh

test-rust: model
	$(CARGO) build --release --lib
	mkdir -p target && $(CARGO) test --release --all-targets 2>&1 | tee target/test.log; exit $${PIPESTATUS[0]}
	$(CARGO) test --release --doc
	# The GGUF tokenizers against the vocabularies llama.cpp tests its own with (the pinned sdist's
	# models/ggml-vocab-*, downloaded once, not built).
	LLAMA_CPP_VOCABS="$$(bash scripts/llama-cpp.sh --source | tail -n 1)/models" \
	  $(CARGO) test --release --test gguf_tokenizer -- --ignored

# cargo fmt --check and clippy with every warning an error, over every target.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Side by side with llama.cpp (built from the llama-cpp-python sdist by scripts/llama-cpp.sh) on
# the GGUF files of scripts/bench-models.sh; writes bench-report.json. BIG=1 adds the 8B-shape
# model; BENCH_ARGS are passed to examples/bench (e.g. --sections compare --models smollm2-135m-bf16).
BENCH_ARGS ?=
bench: model
	bash scripts/bench-models.sh $(if $(BIG),--big)
	$(CARGO) run --release --example bench -- --model $(MODEL) --out bench-report.json \
	  --llama-bin "$$(bash scripts/llama-cpp.sh | tail -n 1)" --decode-tokens 32 $(if $(BIG),--big) $(BENCH_ARGS)

fuzz:
	bash scripts/fuzz.sh

# C ABI: regenerate the committed header, build the C quickstart, run the C/C++ checks, install.
PREFIX ?= /usr/local
LPX_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

header:
	LPX_WRITE_HEADER=1 $(CARGO) build --release --lib

target/release/libloraplex.so: FORCE
	$(CARGO) build --release --lib

quickstart: target/release/libloraplex.so
	gcc -std=c99 -Wall -Wextra -Werror -pedantic -O2 -Iinclude examples/quickstart.c \
	  -o target/quickstart -Ltarget/release -lloraplex -Wl,-rpath,$(abspath target/release)
	@echo "built target/quickstart; run: target/quickstart [MODEL] [PEFT_SOURCE]"

c-test:
	$(CARGO) test --release --test c_abi --test ffi_contract --test header_fresh

install: target/release/libloraplex.so
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/lib/cmake/loraplex \
	  $(DESTDIR)$(PREFIX)/include
	install -m 644 include/loraplex.h bindings/cpp/loraplex.hpp $(DESTDIR)$(PREFIX)/include/
	install -m 755 target/release/libloraplex.so $(DESTDIR)$(PREFIX)/lib/
	install -m 644 target/release/libloraplex.a $(DESTDIR)$(PREFIX)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(LPX_VERSION)|' loraplex.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/loraplex.pc
	install -m 644 cmake/loraplexConfig.cmake $(DESTDIR)$(PREFIX)/lib/cmake/loraplex/

.PHONY: FORCE
FORCE:

# Go binding (bindings/go/loraplex), Go OpenAI server (examples/go/openai-server) and its
# end-to-end test (tests/e2e). Go is installed by scripts/install-go.sh when missing.
GO ?= go
.PHONY: go-test e2e router-test

go-test:
	bash scripts/install-go.sh
	$(CARGO) build --release --lib
	cd bindings/go/loraplex && $(GO) vet ./... && $(GO) test -count=1 ./... && $(GO) test -count=1 -race ./...
	cd examples/go/openai-server && $(GO) vet ./... && $(GO) test -count=1 ./...

e2e:
	bash tests/e2e/openai_e2e.sh

# Three replicas behind vllm-router (PyPI): correctness, adapter residency per routing policy,
# SIGKILL failover and SIGTERM drain under load. Bounded: 15 minutes at most.
router-test:
	timeout 900 bash tests/e2e/router_e2e.sh

# deploy/ (Dockerfile, Kubernetes and Inference Extension manifests) checked offline: strict
# Kubernetes schemas, deploy/schema, cross-checks against the server's sources, and a self-test.
.PHONY: manifests
manifests:
	bash scripts/check-manifests.sh

# The CUDA backend without a GPU: every kernels/*.cu compiled to PTX for compute_80/90 and
# assembled for sm_80/90 (no warnings, no register spills, parameters as kernels/README.md), every
# kernel run on the CPU against references under the host emulation (kernels/emu, g++ plain and
# ASan+UBSan), and the crate linted with --features cuda and its CUDA unit tests built and run
# (nvcc from PyPI wheels, scripts/install-cuda-tools.sh). The test binary compiles and links the
# whole library with the feature, so a separate release build of it (2 more minutes of CI) would
# check nothing more; scripts/gpu-bundle.sh builds the cuda-enabled libloraplex.so it ships.
.PHONY: cuda-check
cuda-check:
	bash scripts/check-kernels.sh
	bash scripts/emu-kernels.sh
	$(CARGO) clippy --release --all-targets --features cuda -- -D warnings
	$(CARGO) test --release --features cuda --lib backend::cuda

# The bundle scripts/gpu-check.sh runs on a GPU machine (test binaries, gpu_bench and
# libloraplex.so built with --features cuda, stripped, plus the tiny-llama fixtures):
# gpu-bundle/loraplex-gpu-bundle.tar.xz, at most 64 MiB. See scripts/gpu-bundle.sh.
.PHONY: gpu-bundle
gpu-bundle:
	bash scripts/gpu-bundle.sh
