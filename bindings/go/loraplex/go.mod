module github.com/loraplex/loraplex/bindings/go/loraplex

go 1.19
