package loraplex

import (
	"context"
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestSeveralChoicesAreIndexedAndReproducible(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx := context.Background()
	req := Request{Prompt: "Once", MaxTokens: 5, Temperature: Float32(1), Seed: Uint64(3), IgnoreEOS: true, N: 3}
	a, err := e.GenerateAll(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.GenerateAll(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 3 || len(b) != 3 {
		t.Fatalf("%d and %d choices, want 3", len(a), len(b))
	}
	for i, r := range a {
		if r.Index != i || len(r.TokenIDs) != 5 || r.FinishReason != FinishLength || r.Usage.CompletionTokens != 5 {
			t.Fatalf("choice %d: %+v", i, r)
		}
		if r.CumulativeLogprob >= 0 {
			t.Fatalf("choice %d: cumulative logprob %v", i, r.CumulativeLogprob)
		}
		if r.Text != b[i].Text || len(r.TokenIDs) != len(b[i].TokenIDs) {
			t.Fatalf("choice %d differs between seeded runs: %q vs %q", i, r.Text, b[i].Text)
		}
	}
	// Choice 0 is what the same request with one choice gives.
	one := req
	one.N = 1
	c, err := e.Generate(ctx, one)
	if err != nil {
		t.Fatal(err)
	}
	if c.Text != a[0].Text {
		t.Fatalf("n=1 gives %q, choice 0 of n=3 %q", c.Text, a[0].Text)
	}
	if _, err := e.Generate(ctx, req); !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), "GenerateAll") {
		t.Fatalf("Generate with N=3: %v", err)
	}
	// best_of: N results out of BestOf sequences.
	best, err := e.GenerateAll(ctx, Request{Prompt: "Once", MaxTokens: 4, Temperature: Float32(1), Seed: Uint64(3), IgnoreEOS: true, N: 2, BestOf: 4})
	if err != nil {
		t.Fatal(err)
	}
	if len(best) != 2 || best[0].Index != 0 || best[1].Index != 1 {
		t.Fatalf("best_of: %+v", best)
	}
	// Stream ends at the request's last output, after every choice's final one.
	id, err := e.Submit(req)
	if err != nil {
		t.Fatal(err)
	}
	finals := map[int]int{}
	dones := 0
	err = e.Stream(ctx, id, func(o *Output) error {
		if o.IsFinal() {
			finals[o.Index()]++
		}
		if o.IsDone() {
			dones++
			if len(finals) != 3 {
				t.Errorf("done before every choice ended: %v", finals)
			}
		}
		return nil
	})
	if err != nil || dones != 1 || len(finals) != 3 {
		t.Fatalf("stream: err %v, %d done outputs, finals %v", err, dones, finals)
	}
}

func TestEchoAndPromptLogprobs(t *testing.T) {
	e := newTestEngine(t, nil)
	rs, err := e.GenerateAll(context.Background(), Request{Prompt: "Hello there", MaxTokens: 2, Temperature: Float32(0),
		IgnoreEOS: true, N: 2, Echo: true, PromptLogprobs: Int(2)})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		p := r.Prompt
		if p == nil || p.Text != "Hello there" || len(p.TokenIDs) < 2 {
			t.Fatalf("choice %d prompt %+v", r.Index, p)
		}
		if len(p.Logprobs) != len(p.TokenIDs)-1 {
			t.Fatalf("%d prompt logprobs for %d prompt tokens", len(p.Logprobs), len(p.TokenIDs))
		}
		for i, l := range p.Logprobs {
			if l.Token != p.TokenIDs[i+1] || l.Logprob > 0 || len(l.Top) != 2 {
				t.Fatalf("prompt logprob %d: %+v (token %d)", i, l, p.TokenIDs[i+1])
			}
		}
	}
	// Without Echo / PromptLogprobs no prompt is carried.
	r, err := e.Generate(context.Background(), greedy("Hello there", 2))
	if err != nil {
		t.Fatal(err)
	}
	if r.Prompt != nil {
		t.Fatalf("unrequested prompt %+v", r.Prompt)
	}
}

func TestLogitBiasForcesAndBans(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx := context.Background()
	forced, err := e.Generate(ctx, Request{Prompt: "Hi", MaxTokens: 5, Temperature: Float32(0), IgnoreEOS: true,
		LogitBias: map[uint32]float32{1000: 100}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range forced.TokenIDs {
		if tok != 1000 {
			t.Fatalf("forced token 1000, got %v", forced.TokenIDs)
		}
	}
	plain, err := e.Generate(ctx, greedy("Hi", 5))
	if err != nil {
		t.Fatal(err)
	}
	ban := map[uint32]float32{}
	for _, tok := range plain.TokenIDs {
		ban[tok] = -100
	}
	banned, err := e.Generate(ctx, Request{Prompt: "Hi", MaxTokens: 5, Temperature: Float32(0), IgnoreEOS: true, LogitBias: ban})
	if err != nil {
		t.Fatal(err)
	}
	for _, tok := range banned.TokenIDs {
		if _, ok := ban[tok]; ok {
			t.Fatalf("banned token %d generated: %v", tok, banned.TokenIDs)
		}
	}
}

func TestResponseFormats(t *testing.T) {
	e := newTestEngine(t, nil)
	ctx := context.Background()
	choice, err := e.Generate(ctx, Request{Prompt: "Answer:", MaxTokens: 20, Temperature: Float32(0),
		ResponseFormat: ResponseFormat{Type: FormatChoice, Choices: []string{"yes", "no"}}})
	if err != nil {
		t.Fatal(err)
	}
	if (choice.Text != "yes" && choice.Text != "no") || choice.FinishReason != FinishStop {
		t.Fatalf("choice: %q, %v", choice.Text, choice.FinishReason)
	}
	re, err := e.Generate(ctx, Request{Prompt: "Code:", MaxTokens: 30, Temperature: Float32(0),
		ResponseFormat: ResponseFormat{Type: FormatRegex, Value: "[0-9]{3}-[A-Z]{2}"}})
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9]{3}-[A-Z]{2}$`).MatchString(re.Text) || re.FinishReason != FinishStop {
		t.Fatalf("regex: %q, %v", re.Text, re.FinishReason)
	}
	schema := `{"type":"object","properties":{"n":{"type":"integer","minimum":1,"maximum":5},
		"tag":{"type":"string","enum":["a","b"]}},"required":["n","tag"],"additionalProperties":false}`
	rs, err := e.GenerateAll(ctx, Request{Prompt: "JSON:", MaxTokens: 60, Temperature: Float32(1), Seed: Uint64(1), N: 2,
		ResponseFormat: ResponseFormat{Type: FormatJSONSchema, Value: schema}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		var v struct {
			N   int
			Tag string
		}
		if err := json.Unmarshal([]byte(r.Text), &v); err != nil || v.N < 1 || v.N > 5 || (v.Tag != "a" && v.Tag != "b") || r.FinishReason != FinishStop {
			t.Fatalf("schema choice %d: %q (%v), %v", r.Index, r.Text, err, r.FinishReason)
		}
	}
	cases := []struct {
		req Request
		in  string
	}{
		{Request{Prompt: "x", N: 65}, "req->n"},
		{Request{Prompt: "x", N: 3, BestOf: 2}, "req->best_of"},
		{Request{Prompt: "x", LogitBias: map[uint32]float32{7: 101}}, "req->logit_bias[0].bias"},
		{Request{Prompt: "x", ResponseFormat: ResponseFormat{Type: FormatJSONSchema, Value: "{nope"}}, "req->response_format_value"},
		{Request{Prompt: "x", ResponseFormat: ResponseFormat{Type: FormatChoice}}, "req->response_format_choices"},
		{Request{Prompt: "x", ResponseFormat: ResponseFormat{Type: FormatChoice, Choices: []string{"a\x00"}}}, "Choices[0]"},
		{Request{Prompt: "x", PromptLogprobs: Int(21)}, "req->prompt_logprobs"},
	}
	for _, c := range cases {
		_, err := e.Submit(c.req)
		if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), c.in) {
			t.Errorf("%+v: got %v, want INVALID_ARGUMENT naming %q", c.req, err, c.in)
		}
	}
	if _, err := e.Submit(Request{Prompt: "x", ResponseFormat: ResponseFormat{Type: FormatJSONSchema, Value: `{"type":"nonsense"}`}}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("invalid schema: got %v, want INVALID_ARGUMENT", err)
	}
}

func TestSubmitJSONSeveralChoices(t *testing.T) {
	e := newTestEngine(t, nil)
	id, err := e.SubmitJSON([]byte(`{"prompt":"Hello","n":3,"max_tokens":3,"ignore_eos":true,"seed":2}`))
	if err != nil {
		t.Fatal(err)
	}
	outs := drainJSON(t, e, id)
	var cmpl struct {
		Choices []struct {
			Index int
			Text  string
		}
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if len(outs) != 1 || json.Unmarshal(outs[0], &cmpl) != nil || len(cmpl.Choices) != 3 || cmpl.Usage.CompletionTokens != 9 {
		t.Fatalf("non-streamed n=3: %q", outs)
	}
	for i, c := range cmpl.Choices {
		if c.Index != i {
			t.Fatalf("choice %d has index %d: %s", i, c.Index, outs[0])
		}
	}
	id, err = e.SubmitJSON([]byte(`{"messages":[{"role":"user","content":"Hi"}],"n":2,"max_tokens":3,"ignore_eos":true,
		"stream":true,"stream_options":{"include_usage":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	roles := map[int]int{}
	var usage []byte
	err = e.Stream(context.Background(), id, func(o *Output) error {
		js, err := o.JSON()
		if err != nil {
			return err
		}
		var c struct {
			Choices []struct {
				Index int
				Delta struct{ Role string }
			}
		}
		if err := json.Unmarshal(js, &c); err != nil || len(c.Choices) != 1 || c.Choices[0].Index != o.Index() {
			t.Errorf("chunk %s: %v", js, err)
		} else if c.Choices[0].Delta.Role == "assistant" {
			roles[o.Index()]++
		}
		u, err := o.UsageJSON()
		if (u != nil) != o.IsDone() {
			t.Errorf("usage chunk %s on an output with done=%v", u, o.IsDone())
		}
		if u != nil {
			usage = u
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if roles[0] != 1 || roles[1] != 1 {
		t.Fatalf("role announced %v times per choice, want once each", roles)
	}
	if !strings.Contains(string(usage), `"completion_tokens":6`) {
		t.Fatalf("usage chunk %s", usage)
	}
}
