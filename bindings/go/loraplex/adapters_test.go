package loraplex

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// copyAdapter copies adapter directory name of the fixture PEFT source into dst/as.
func copyAdapter(t *testing.T, peft, name, dst, as string) {
	t.Helper()
	src := filepath.Join(peft, name)
	entries, err := os.ReadDir(src)
	if err != nil {
		missing(t, "adapter fixture %s is absent: %v", src, err)
	}
	if err := os.MkdirAll(filepath.Join(dst, as), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, en := range entries {
		in, err := os.Open(filepath.Join(src, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out, err := os.Create(filepath.Join(dst, as, en.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
		in.Close()
		if err := out.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// adapterEngine starts an engine without PEFT sources, registers a fresh source holding the
// fixture adapter hf-all-r8 as "a" and returns both.
func adapterEngine(t *testing.T, mod func(*Config)) (*Engine, string, string) {
	t.Helper()
	_, peft := testModel(t)
	src := t.TempDir()
	copyAdapter(t, peft, "hf-all-r8", src, "a")
	e := newTestEngine(t, func(c *Config) {
		c.PeftSource = ""
		if mod != nil {
			mod(c)
		}
	})
	if err := e.RegisterPeftSource(src, 0); err != nil {
		t.Fatal(err)
	}
	return e, src, peft
}

type modelList struct {
	Data []struct {
		ID     string  `json:"id"`
		Parent *string `json:"parent"`
	} `json:"data"`
}

func models(t *testing.T, e *Engine) map[string]*string {
	t.Helper()
	js, err := e.ModelsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var l modelList
	if err := json.Unmarshal(js, &l); err != nil {
		t.Fatalf("models %s: %v", js, err)
	}
	m := map[string]*string{}
	for _, d := range l.Data {
		m[d.ID] = d.Parent
	}
	return m
}

func TestAdaptersServeRegisterAndRefresh(t *testing.T) {
	e, src, peft := adapterEngine(t, nil)
	m := models(t, e)
	parent, ok := m["a"]
	if !ok || parent == nil || m[*parent] != nil {
		t.Fatalf("models %v: want adapter a with the base model as parent", m)
	}
	req := Request{Prompt: "Hello there", MaxTokens: 3, Temperature: Float32(0), Logprobs: Int(1), IgnoreEOS: true}
	base, err := e.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	req.Model = "a"
	lora, err := e.Generate(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if math.Abs(float64(base.Logprobs[0].Logprob-lora.Logprobs[0].Logprob)) < 1e-6 && base.Logprobs[0].Token == lora.Logprobs[0].Token {
		t.Fatalf("adapter a changes nothing: base %+v, adapter %+v", base.Logprobs[0], lora.Logprobs[0])
	}
	if err := e.RegisterPeftSource(src, 0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("registering %s twice: got %v, want INVALID_ARGUMENT", src, err)
	}
	copyAdapter(t, peft, "hf-rslora-r4", src, "b")
	if err := e.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, ok := models(t, e)["b"]; !ok {
		t.Fatalf("adapter b missing after Refresh: %v", models(t, e))
	}
	if _, err := e.Generate(context.Background(), Request{Model: "b", Prompt: "x", MaxTokens: 2}); err != nil {
		t.Fatalf("adapter b: %v", err)
	}
}

// With room for one adapter in the host cache, a request on b while a long one holds a gets
// CAPACITY (at submit, or as the request's error).
func TestAdapterCapacityError(t *testing.T) {
	e, src, peft := adapterEngine(t, func(c *Config) { c.MaxCPULoras, c.MaxGPULoras = 1, 1 })
	copyAdapter(t, peft, "hf-rslora-r4", src, "b")
	if err := e.Refresh(); err != nil {
		t.Fatal(err)
	}
	hold, err := e.Submit(Request{Model: "a", Prompt: "hold", MaxTokens: 100000, IgnoreEOS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Cancel(hold)
	// Wait until a is loaded and generating.
	for {
		o, err := e.Poll(hold, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if o == nil {
			t.Fatal("no output of the holding request within 5 s")
		}
		got := len(o.TokenIDs())
		o.Close()
		if got > 0 {
			break
		}
	}
	id, err := e.Submit(Request{Model: "b", Prompt: "x", MaxTokens: 2})
	if err == nil {
		_, err = e.Generate(context.Background(), Request{Model: "b", Prompt: "x", MaxTokens: 2})
		e.Cancel(id)
	}
	if !errors.Is(err, ErrCapacity) {
		t.Fatalf("adapter b while a holds the only host slot: got %v, want CAPACITY", err)
	}
}
