package main

import (
	"bufio"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

func getStatus(t *testing.T, url string) (int, http.Header) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header
}

// A drain: readiness turns 503, a new request gets 503 with Retry-After, a streamed request in
// flight runs to its end ([DONE]), liveness stays 200, and the drain returns once it finished.
func TestDrainFinishesRequestsInFlightAndRefusesNewOnes(t *testing.T) {
	model := testModelPath(t)
	e, err := loraplex.NewEngine(loraplex.Config{Model: model, ServedModelName: "base", Threads: 2, MaxModelLen: 2048})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(e)
	ts := httptest.NewServer(s.routes())
	t.Cleanup(func() { ts.Close(); e.Close() })
	for _, p := range []string{"/v1/health/live", "/v1/health/ready", "/health"} {
		if code, _ := getStatus(t, ts.URL+p); code != 200 {
			t.Fatalf("%s before the drain: %d", p, code)
		}
	}
	// A long streamed request, read until its first chunk: it is in flight.
	body := `{"model":"base","prompt":"Hello","max_tokens":400,"ignore_eos":true,"temperature":0,"stream":true}`
	resp, err := http.Post(ts.URL+"/v1/completions", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	lines := bufio.NewScanner(resp.Body)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "data: {") {
		t.Fatalf("first chunk: %q", lines.Text())
	}
	drained := make(chan drainReport, 1)
	start := time.Now()
	go func() { drained <- s.replica.drain(time.Minute) }()
	for !s.replica.draining.Load() {
		time.Sleep(time.Millisecond)
	}
	if code, h := getStatus(t, ts.URL+"/v1/health/ready"); code != 503 || h.Get("Retry-After") == "" {
		t.Fatalf("ready while draining: %d, Retry-After %q", code, h.Get("Retry-After"))
	}
	if code, _ := getStatus(t, ts.URL+"/v1/health/live"); code != 200 {
		t.Fatalf("live while draining: %d", code)
	}
	r2, err := http.Post(ts.URL+"/v1/chat/completions", "application/json",
		strings.NewReader(`{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}`))
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 503 || r2.Header.Get("Retry-After") != "1" {
		t.Fatalf("new request while draining: %d, Retry-After %q", r2.StatusCode, r2.Header.Get("Retry-After"))
	}
	select {
	case <-drained:
		t.Fatal("the drain returned with a request in flight")
	default:
	}
	// The request in flight completes normally.
	var last, before string
	for lines.Scan() {
		if l := lines.Text(); l != "" {
			before, last = last, l
		}
	}
	if last != "data: [DONE]" || !strings.Contains(before, `"finish_reason":"length"`) {
		t.Fatalf("in-flight stream ended with %q after %q", last, before)
	}
	select {
	case report := <-drained:
		if !report.finished || report.inFlight != 1 || report.refused != 1 {
			t.Fatalf("drain report: finished %v, %v", report.finished, report)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("drain did not return after the request finished")
	}
	t.Logf("drained in %v", time.Since(start))
}

// A drain with a request that outlives the timeout reports it.
func TestDrainTimesOut(t *testing.T) {
	var rp replica
	w := httptest.NewRecorder()
	done := rp.admit(w)
	if done == nil {
		t.Fatal("refused before draining")
	}
	if r := rp.drain(20 * time.Millisecond); r.finished || r.inFlight != 1 {
		t.Fatalf("drain with a request in flight: finished %v, %v", r.finished, r)
	}
	done()
	if r := rp.drain(time.Second); !r.finished || r.inFlight != 0 {
		t.Fatalf("drain after the request finished: finished %v, %v", r.finished, r)
	}
	if rp.admit(httptest.NewRecorder()) != nil {
		t.Fatal("admitted while draining")
	}
	if r := rp.drain(time.Second); r.refused != 1 {
		t.Fatalf("refusals not counted: %v", r)
	}
}
