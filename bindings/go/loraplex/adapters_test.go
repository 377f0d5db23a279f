package loraplex

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
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

// A one-adapter mixture at scale 1 is the adapter itself; a mixture of two differs from both
// parts; a mixture next to a model naming an adapter is refused naming the field.
func TestAdapterMixture(t *testing.T) {
	e, src, peft := adapterEngine(t, nil)
	copyAdapter(t, peft, "hf-rslora-r4", src, "b")
	if err := e.Refresh(); err != nil {
		t.Fatal(err)
	}
	req := Request{Prompt: "Hello there", MaxTokens: 3, Temperature: Float32(0), Logprobs: Int(0), IgnoreEOS: true}
	gen := func(r Request) *Result {
		t.Helper()
		out, err := e.Generate(context.Background(), r)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	plain := req
	plain.Model = "a"
	one := req
	one.Adapters = []AdapterMix{{Name: "a", Scale: 1}}
	x, y := gen(plain), gen(one)
	if !reflect.DeepEqual(x.TokenIDs, y.TokenIDs) || x.Logprobs[0].Logprob != y.Logprobs[0].Logprob {
		t.Fatalf("mixture {a: 1} differs from model a: %+v vs %+v", x.Logprobs, y.Logprobs)
	}
	two := req
	two.Adapters = []AdapterMix{{Name: "a", Scale: 0.5}, {Name: "b", Scale: 2}}
	z := gen(two)
	if z.Logprobs[0].Logprob == x.Logprobs[0].Logprob {
		t.Fatalf("the mixture equals adapter a alone: %+v", z.Logprobs[0])
	}
	bad := two
	bad.Model = "a"
	_, err := e.Submit(bad)
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "adapters") {
		t.Fatalf("mixture with model a: got %v, want INVALID_ARGUMENT naming adapters", err)
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
