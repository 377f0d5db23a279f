module github.com/loraplex/loraplex/examples/go/openai-server

go 1.19

require github.com/loraplex/loraplex/bindings/go/loraplex v0.0.0

replace github.com/loraplex/loraplex/bindings/go/loraplex => ../../../bindings/go/loraplex
