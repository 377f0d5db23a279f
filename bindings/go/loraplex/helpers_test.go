package loraplex

import (
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// testModel returns the model directory (or .gguf) and PEFT source directory the tests use:
// $LPX_TEST_MODEL / $LPX_TEST_PEFT_SOURCE, else the shared tiny-llama fixture
// ($LORAPLEX_SHARED or <repo>/../shared, fixtures/tiny-llama/{model,adapters}). Skips the test,
// saying so, when none is present.
func testModel(t testing.TB) (model, peft string) {
	t.Helper()
	model = os.Getenv("LPX_TEST_MODEL")
	peft = os.Getenv("LPX_TEST_PEFT_SOURCE")
	if model == "" {
		shared := os.Getenv("LORAPLEX_SHARED")
		if shared == "" {
			_, file, _, _ := runtime.Caller(0)
			shared = filepath.Join(filepath.Dir(file), "../../../../shared")
		}
		model = filepath.Join(shared, "fixtures/tiny-llama/model")
		if peft == "" {
			peft = filepath.Join(shared, "fixtures/tiny-llama/adapters")
		}
	}
	if _, err := os.Stat(model); err != nil {
		t.Skipf("skipping: test model %s is absent (set LPX_TEST_MODEL or provide ../shared): %v", model, err)
	}
	return model, peft
}

// newTestEngine starts an engine on the test model with its adapters; closed at test end.
func newTestEngine(t testing.TB, mod func(*Config)) *Engine {
	t.Helper()
	model, peft := testModel(t)
	cfg := Config{Model: model, PeftSource: peft, Threads: 2, MaxModelLen: 256}
	if mod != nil {
		mod(&cfg)
	}
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatalf("NewEngine(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}
