# loraplex: the two front-door commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
SHARED ?= ../shared
export LORAPLEX_SHARED := $(abspath $(SHARED))

.PHONY: all build demo demo-rust test bench fuzz model samples lint

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

demo: demo-rust

demo-rust: model samples
	$(CARGO) run --release --example demo -- --model $(MODEL) --adapters $(SAMPLES)

test: model
	mkdir -p target && $(CARGO) test --release --all-targets 2>&1 | tee target/test.log; exit $${PIPESTATUS[0]}

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: model
	$(CARGO) run --release --example bench -- --model $(MODEL) --out bench-report.json

fuzz:
	bash scripts/fuzz.sh
