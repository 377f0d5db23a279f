package loraplex

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// missing is the one rule for a fixture a test needs but cannot find: under CI (CI=true or 1) the
// test fails naming it; elsewhere it is skipped, saying why.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if ci := os.Getenv("CI"); ci == "1" || strings.EqualFold(ci, "true") {
		t.Fatalf("missing under CI=true (tests must not skip there): "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// testModel returns the model directory (or .gguf) and PEFT source directory the tests use:
// $LPX_TEST_MODEL / $LPX_TEST_PEFT_SOURCE, else the shared tiny-llama fixture
// ($LORAPLEX_SHARED or <repo>/../shared, fixtures/tiny-llama/{model,adapters}). When none is
// present the test fails under CI and is skipped elsewhere (see missing).
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
		missing(t, "test model %s is absent (set LPX_TEST_MODEL or provide ../shared): %v", model, err)
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
