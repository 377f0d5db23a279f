package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

// sample is one Prometheus text-format sample.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

var (
	sampleRe = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$`)
	labelRe  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"`)
	metaRe   = regexp.MustCompile(`^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$`)
)

// parseProm parses Prometheus text exposition format 0.0.4 strictly: every line is a HELP/TYPE
// comment or a sample; each sample's family has a TYPE line before it.
func parseProm(t *testing.T, text string) []sample {
	t.Helper()
	typed := map[string]string{}
	var out []sample
	for _, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		if m := metaRe.FindStringSubmatch(line); m != nil {
			if m[1] == "TYPE" {
				typed[m[2]] = m[3]
			}
			continue
		}
		m := sampleRe.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("malformed metrics line %q", line)
		}
		v, err := strconv.ParseFloat(m[4], 64)
		if err != nil {
			t.Fatalf("metrics line %q: value: %v", line, err)
		}
		family := strings.TrimSuffix(m[1], "_total")
		if typed[m[1]] == "" && typed[family] == "" {
			t.Fatalf("sample %q has no TYPE line before it", line)
		}
		labels := map[string]string{}
		for _, l := range labelRe.FindAllStringSubmatch(m[3], -1) {
			labels[l[1]] = l[2]
		}
		out = append(out, sample{m[1], labels, v})
	}
	return out
}

func find(ss []sample, name string, labels map[string]string) *sample {
	for i := range ss {
		if ss[i].name != name {
			continue
		}
		match := true
		for k, v := range labels {
			if ss[i].labels[k] != v {
				match = false
			}
		}
		if match {
			return &ss[i]
		}
	}
	return nil
}

// The metrics an Inference Extension endpoint picker scrapes (the model-server protocol): queued
// and running requests, KV-cache utilisation, lora_requests_info with running/waiting adapters
// and max_lora, and per-adapter residency, read while one adapter's request runs and another's
// waits.
func TestMetricsMeetTheModelServerProtocol(t *testing.T) {
	model := testModelPath(t)
	peft := t.TempDir()
	src := filepath.Join(filepath.Dir(model), "adapters")
	for _, a := range []string{"hf-all-r8", "hf-rslora-r4"} {
		if out, err := exec.Command("cp", "-r", filepath.Join(src, a), filepath.Join(peft, a)).CombinedOutput(); err != nil {
			t.Fatalf("copying %s: %v %s", a, err, out)
		}
	}
	e, err := loraplex.NewEngine(loraplex.Config{Model: model, ServedModelName: "base", Threads: 2,
		MaxModelLen: 2048, PeftSource: peft, MaxNumSeqs: 1, MaxGPULoras: 2, MaxCPULoras: 2})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(newServer(e).routes())
	t.Cleanup(func() { ts.Close(); e.Close() })
	submit := func(adapter string, tokens int) uint64 {
		id, err := e.SubmitJSON([]byte(fmt.Sprintf(`{"model":%q,"prompt":"Hello","max_tokens":%d,"ignore_eos":true}`, adapter, tokens)))
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	// One sequence per step: the first runs, the second waits.
	running := submit("hf-all-r8", 1500)
	waiting := submit("hf-rslora-r4", 2)
	var ss []sample
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(ts.URL + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
			t.Fatalf("Content-Type %q", ct)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ss = parseProm(t, string(body))
		info := find(ss, "vllm:lora_requests_info", nil)
		if info != nil && info.labels["running_lora_adapters"] == "hf-all-r8" && info.labels["waiting_lora_adapters"] == "hf-rslora-r4" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never saw one adapter running and the other waiting:\n%s", body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := func(name string, labels map[string]string, ok func(float64) bool) {
		t.Helper()
		s := find(ss, name, labels)
		if s == nil || !ok(s.value) {
			t.Errorf("%s%v: got %+v", name, labels, s)
		}
	}
	one := func(v float64) bool { return v == 1 }
	want("vllm:num_requests_running", map[string]string{"model_name": "base"}, one)
	want("vllm:num_requests_waiting", map[string]string{"model_name": "base"}, one)
	want("vllm:gpu_cache_usage_perc", nil, func(v float64) bool { return v > 0 && v <= 1 })
	want("vllm:kv_cache_usage_perc", nil, func(v float64) bool { return v > 0 && v <= 1 })
	want("vllm:lora_requests_info", map[string]string{"max_lora": "2"}, func(v float64) bool { return v > 0 })
	want("loraplex:adapter_device_resident", map[string]string{"adapter": "hf-all-r8"}, one)
	e.Cancel(running)
	e.Cancel(waiting)
}
