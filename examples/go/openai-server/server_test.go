package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

func TestStatusMapping(t *testing.T) {
	cases := []struct {
		code   loraplex.Code
		status int
	}{
		{loraplex.CodeCapacity, 429},
		{loraplex.CodeQueueFull, 429},
		{loraplex.CodeNotFound, 404},
		{loraplex.CodeInvalidArgument, 400},
		{loraplex.CodeInvalidAdapter, 400},
		{loraplex.CodeUnsupported, 400},
		{loraplex.CodeEngineFailed, 500},
		{loraplex.CodeInternal, 500},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		writeEngineError(rec, &loraplex.Error{Code: c.code, Message: "m"})
		if rec.Code != c.status {
			t.Errorf("%v: status %d, want %d", c.code, rec.Code, c.status)
		}
		if got := rec.Header().Get("Retry-After"); (c.status == 429) != (got == "1") {
			t.Errorf("%v: Retry-After %q", c.code, got)
		}
		var body struct {
			Error map[string]any `json:"error"`
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
			t.Fatalf("%v: body %s: %v", c.code, rec.Body, err)
		}
		for _, k := range []string{"message", "type", "param", "code"} {
			if _, ok := body.Error[k]; !ok {
				t.Errorf("%v: error body %s lacks %q", c.code, rec.Body, k)
			}
		}
	}
}

// A 429's Retry-After is the engine's estimate rounded up to whole seconds (1 without one).
func TestRetryAfterFromEngine(t *testing.T) {
	cases := []struct {
		after time.Duration
		want  string
	}{{0, "1"}, {time.Second, "1"}, {2500 * time.Millisecond, "3"}, {42 * time.Second, "42"}}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		writeEngineError(rec, &loraplex.Error{Code: loraplex.CodeQueueFull, Message: "limit max_queue (8) reached", Limit: "max_queue", RetryAfter: c.after})
		if got := rec.Header().Get("Retry-After"); got != c.want {
			t.Errorf("RetryAfter %v: header %q, want %q", c.after, got, c.want)
		}
		if !strings.Contains(rec.Body.String(), "max_queue") {
			t.Errorf("body %s does not name the limit", rec.Body)
		}
	}
}

func TestCheckBody(t *testing.T) {
	cases := []struct {
		body   string
		chat   bool
		ok     bool
		stream bool
	}{
		{`{"prompt":"x"}`, false, true, false},
		{`{"prompt":"x","stream":true}`, false, true, true},
		{`{"prompt":"x","stream":null}`, false, true, false},
		{`{"messages":[],"stream":true}`, true, true, true},
		{`{"messages":[]}`, false, false, false},
		{`{"prompt":"x"}`, true, false, false},
		{`{"prompt":"x","stream":"yes"}`, false, false, false},
		{`[1]`, false, false, false},
	}
	for _, c := range cases {
		stream, err := checkBody([]byte(c.body), c.chat)
		if (err == nil) != c.ok || stream != c.stream {
			t.Errorf("checkBody(%s, chat=%v) = %v, %v", c.body, c.chat, stream, err)
		}
		if err != nil && loraplex.CodeOf(err) != loraplex.CodeInvalidArgument {
			t.Errorf("checkBody(%s): code %v", c.body, loraplex.CodeOf(err))
		}
	}
}

// testServer serves the shared tiny-llama fixture (see testModelPath).
func testServer(t *testing.T) (*httptest.Server, *loraplex.Engine) {
	model := testModelPath(t)
	e, err := loraplex.NewEngine(loraplex.Config{Model: model, ServedModelName: "base", Threads: 2, MaxModelLen: 2048})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(newServer(e).routes())
	t.Cleanup(func() { ts.Close(); e.Close() })
	return ts, e
}

// testModelPath is the shared tiny-llama fixture ($LPX_TEST_MODEL, $LORAPLEX_SHARED or
// <repo>/../shared); when absent the test fails under CI (CI=true or 1) and is skipped elsewhere.
func testModelPath(t *testing.T) string {
	model := os.Getenv("LPX_TEST_MODEL")
	if model == "" {
		shared := os.Getenv("LORAPLEX_SHARED")
		if shared == "" {
			_, file, _, _ := runtime.Caller(0)
			shared = filepath.Join(filepath.Dir(file), "../../../../shared")
		}
		model = filepath.Join(shared, "fixtures/tiny-llama/model")
	}
	if _, err := os.Stat(model); err != nil {
		if ci := os.Getenv("CI"); ci == "1" || strings.EqualFold(ci, "true") {
			t.Fatalf("missing under CI=true (tests must not skip there): test model %s is absent: %v", model, err)
		}
		t.Skipf("skipping: test model %s is absent: %v", model, err)
	}
	return model
}

func TestHTTPStreamAndDisconnect(t *testing.T) {
	ts, e := testServer(t)
	resp, err := http.Post(ts.URL+"/v1/chat/completions", "application/json", strings.NewReader(
		`{"model":"base","messages":[{"role":"user","content":"Hi"}],"max_tokens":3,"stream":true}`))
	if err != nil {
		t.Fatal(err)
	}
	var events []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "data: ") {
			events = append(events, strings.TrimPrefix(line, "data: "))
		}
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || len(events) < 2 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("status %d, events %q", resp.StatusCode, events)
	}
	for _, ev := range events[:len(events)-1] {
		var c map[string]any
		if err := json.Unmarshal([]byte(ev), &c); err != nil || c["object"] != "chat.completion.chunk" {
			t.Fatalf("event %s: %v", ev, err)
		}
	}

	// A client that goes away mid-stream cancels its request: the engine ends up idle.
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "POST", ts.URL+"/v1/completions", strings.NewReader(
		`{"prompt":"Hi","max_tokens":100000,"ignore_eos":true,"stream":true}`))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(resp.Body)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stats, err := e.StatsJSON()
		if err != nil {
			t.Fatal(err)
		}
		var s struct {
			Requests struct{ Running, Waiting int }
			Steps    int
		}
		if err := json.Unmarshal(stats, &s); err != nil {
			t.Fatalf("stats %s: %v", stats, err)
		}
		if s.Requests.Running == 0 && s.Requests.Waiting == 0 {
			// Running to the 2048-token context limit would take > 2000 steps.
			if s.Steps > 1500 {
				t.Fatalf("the disconnected request ran on (%d engine steps)", s.Steps)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request still running 10 s after the client disconnected: %s", stats)
		}
		time.Sleep(20 * time.Millisecond)
	}

	resp, err = http.Post(ts.URL+"/v1/completions", "application/json", strings.NewReader(`{"model":"nope","prompt":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Fatalf("unknown model: status %d", resp.StatusCode)
	}
}

// postJSON posts body to path and returns the status and the response body.
func postJSON(t *testing.T, url, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteString("\n")
	}
	return resp.StatusCode, b.String()
}

func TestHTTPUnhonouredFieldsAreRefused(t *testing.T) {
	ts, _ := testServer(t)
	cases := []struct{ path, body, field string }{
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"yaml"}}`, "response_format"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"nonsense"}}}}`, ""},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"function","function":{"name":"f"}}]}`, "tools"},
		{"/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"tool_choice":"auto"}`, "tool_choice"},
		{"/v1/completions", `{"prompt":"Hi","logit_bias":{"1":500}}`, "logit_bias"},
		{"/v1/completions", `{"prompt":"Hi","logit_bias":{"one":5}}`, "logit_bias"},
		{"/v1/completions", `{"prompt":"Hi","n":0}`, `"n"`},
		{"/v1/completions", `{"prompt":"Hi","best_of":3,"stream":true}`, "best_of"},
		{"/v1/completions", `{"prompt":"Hi","guided_regex":"a","guided_choice":["b"]}`, "guided_choice"},
		{"/v1/completions", `{"prompt":"Hi","suffix":"end"}`, "suffix"},
		{"/v1/completions", `{"prompt":"Hi","seed":-3}`, "seed"},
		{"/v1/completions", `{"prompt":"Hi","stream":true,"stream_options":{"continuous_usage_stats":true}}`, "stream_options.continuous_usage_stats"},
	}
	for _, c := range cases {
		status, body := postJSON(t, ts.URL+c.path, c.body)
		var e struct {
			Error struct{ Message, Code string }
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil {
			t.Fatalf("%s: body %s: %v", c.body, body, err)
		}
		if status != 400 || e.Error.Code != "invalid_argument" || !strings.Contains(e.Error.Message, c.field) {
			t.Errorf("%s: status %d, body %s; want 400 invalid_argument naming %q", c.body, status, body, c.field)
		}
	}
	// Harmless fields are accepted.
	status, body := postJSON(t, ts.URL+"/v1/completions", `{"prompt":"Hi","max_tokens":2,"user":"u1","metadata":{"k":"v"},"n":1}`)
	if status != 200 {
		t.Fatalf("harmless fields: status %d, body %s", status, body)
	}
}

func TestHTTPStreamIncludeUsage(t *testing.T) {
	ts, _ := testServer(t)
	for _, include := range []bool{true, false} {
		body := fmt.Sprintf(`{"prompt":"Hi","max_tokens":3,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":%v}}`, include)
		status, text := postJSON(t, ts.URL+"/v1/completions", body)
		var events []string
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, "data: ") {
				events = append(events, strings.TrimPrefix(line, "data: "))
			}
		}
		// At least one content chunk (tokens that are ready together arrive in one chunk),
		// the usage chunk when asked for, then [DONE].
		minEvents := 2
		if include {
			minEvents = 3
		}
		if status != 200 || len(events) < minEvents || events[len(events)-1] != "[DONE]" {
			t.Fatalf("include_usage=%v: status %d, events %q", include, status, events)
		}
		var last struct {
			Choices []any
			Usage   *struct {
				CompletionTokens int `json:"completion_tokens"`
			}
		}
		if err := json.Unmarshal([]byte(events[len(events)-2]), &last); err != nil {
			t.Fatal(err)
		}
		gotUsageChunk := len(last.Choices) == 0 && last.Usage != nil && last.Usage.CompletionTokens == 3
		if gotUsageChunk != include {
			t.Errorf("include_usage=%v: last chunk %s", include, events[len(events)-2])
		}
		// With include_usage every content chunk carries "usage": null; without it none
		// carries usage at all (OpenAI sends usage only in the extra chunk).
		content := events[:len(events)-1]
		if include {
			content = events[:len(events)-2]
		}
		for _, ev := range content {
			var c map[string]any
			if err := json.Unmarshal([]byte(ev), &c); err != nil {
				t.Fatal(err)
			}
			u, ok := c["usage"]
			if include && (!ok || u != nil) {
				t.Errorf("content chunk %s: want \"usage\": null", ev)
			}
			if !include && ok {
				t.Errorf("content chunk %s carries usage without include_usage", ev)
			}
		}
	}
}

// sseEvents posts body and returns the data payloads of the SSE stream (without [DONE]).
func sseEvents(t *testing.T, url, body string) []string {
	t.Helper()
	status, text := postJSON(t, url, body)
	if status != 200 {
		t.Fatalf("%s: status %d: %s", body, status, text)
	}
	var events []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "data: ") {
			events = append(events, strings.TrimPrefix(line, "data: "))
		}
	}
	if len(events) == 0 || events[len(events)-1] != "[DONE]" {
		t.Fatalf("%s: events %q do not end with [DONE]", body, events)
	}
	return events[:len(events)-1]
}

func TestHTTPSeveralChoicesAndConstraints(t *testing.T) {
	ts, _ := testServer(t)
	// Not streamed: one object with every choice and the summed usage.
	status, body := postJSON(t, ts.URL+"/v1/completions", `{"prompt":"Hi","n":3,"max_tokens":3,"ignore_eos":true,"seed":1}`)
	var cmpl struct {
		Choices []struct {
			Index        int
			FinishReason string `json:"finish_reason"`
		}
		Usage struct {
			CompletionTokens int `json:"completion_tokens"`
		}
	}
	if status != 200 || json.Unmarshal([]byte(body), &cmpl) != nil || len(cmpl.Choices) != 3 || cmpl.Usage.CompletionTokens != 9 {
		t.Fatalf("n=3: status %d, body %s", status, body)
	}
	for i, c := range cmpl.Choices {
		if c.Index != i || c.FinishReason != "length" {
			t.Fatalf("n=3 choice %d: %s", i, body)
		}
	}
	// Streamed: chunks of both choices, each choice finishing once, then the usage chunk.
	events := sseEvents(t, ts.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"Hi"}],"n":2,
		"max_tokens":3,"ignore_eos":true,"stream":true,"stream_options":{"include_usage":true}}`)
	finished := map[int]int{}
	for _, ev := range events[:len(events)-1] {
		var c struct {
			Choices []struct {
				Index        int
				FinishReason *string `json:"finish_reason"`
			}
		}
		if err := json.Unmarshal([]byte(ev), &c); err != nil || len(c.Choices) != 1 {
			t.Fatalf("chunk %s: %v", ev, err)
		}
		if c.Choices[0].FinishReason != nil {
			finished[c.Choices[0].Index]++
		}
	}
	if finished[0] != 1 || finished[1] != 1 {
		t.Fatalf("finish reasons per choice %v in %q", finished, events)
	}
	if !strings.Contains(events[len(events)-1], `"completion_tokens":6`) {
		t.Fatalf("usage chunk %s", events[len(events)-1])
	}
	// A choice constraint: the text is one of the choices, finish_reason stop.
	status, body = postJSON(t, ts.URL+"/v1/completions", `{"prompt":"Hi","max_tokens":20,"temperature":0,"guided_choice":["red","green"]}`)
	var one struct {
		Choices []struct {
			Text         string
			FinishReason string `json:"finish_reason"`
		}
	}
	if status != 200 || json.Unmarshal([]byte(body), &one) != nil || len(one.Choices) != 1 ||
		(one.Choices[0].Text != "red" && one.Choices[0].Text != "green") || one.Choices[0].FinishReason != "stop" {
		t.Fatalf("guided_choice: status %d, body %s", status, body)
	}
}
