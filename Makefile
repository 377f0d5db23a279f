# loraplex: the two front-door commands are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
SHARED ?= ../shared
export LORAPLEX_SHARED := $(abspath $(SHARED))

.PHONY: all build demo test bench fuzz model lint clean-model

all: build

model: $(MODEL)

$(MODEL):
	bash scripts/fetch-model.sh

build:
	$(CARGO) build --release --all-targets

demo: model
	$(CARGO) run --release --example demo -- --model $(MODEL)

test: model
	mkdir -p target && $(CARGO) test --release --all-targets 2>&1 | tee target/test.log; exit $${PIPESTATUS[0]}

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

bench: model
	$(CARGO) run --release --example bench -- --model $(MODEL) --out bench-report.json

fuzz:
	bash scripts/fuzz.sh

# Go binding (bindings/go/loraplex), Go OpenAI server (examples/go/openai-server) and its
# end-to-end test (tests/e2e). Go is installed by scripts/install-go.sh when missing.
GO ?= go
.PHONY: go-test e2e

go-test:
	bash scripts/install-go.sh
	$(CARGO) build --release --lib
	cd bindings/go/loraplex && $(GO) vet ./... && $(GO) test -count=1 ./... && $(GO) test -count=1 -race ./...
	cd examples/go/openai-server && $(GO) vet ./... && $(GO) test -count=1 ./...

e2e:
	bash tests/e2e/openai_e2e.sh
