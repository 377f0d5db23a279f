package main

import (
	"bufio"
	"context"
	"encoding/json"
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

// testServer serves the shared tiny-llama fixture ($LPX_TEST_MODEL, $LORAPLEX_SHARED or
// <repo>/../shared); skips when absent.
func testServer(t *testing.T) (*httptest.Server, *loraplex.Engine) {
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
		t.Skipf("skipping: test model %s is absent: %v", model, err)
	}
	e, err := loraplex.NewEngine(loraplex.Config{Model: model, ServedModelName: "base", Threads: 2, MaxModelLen: 2048})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(newServer(e).routes())
	t.Cleanup(func() { ts.Close(); e.Close() })
	return ts, e
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
