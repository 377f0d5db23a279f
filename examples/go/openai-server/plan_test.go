package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

func getJSON(t *testing.T, url string) (int, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("GET %s: %s: %v", url, body, err)
	}
	return resp.StatusCode, v
}

// GET /v1/loraplex/plan answers for the running server's configuration: with no parameters its
// memory is the engine's own (stats JSON "memory"); parameters change the workload; bad ones
// are 400s naming them; the other routes still work.
func TestPlanEndpoint(t *testing.T) {
	cfg := loraplex.Config{Model: testModelPath(t), Threads: 2, MaxModelLen: 256, MaxCPULoras: 3, MaxGPULoras: 2, MaxLoraRank: 8}
	e, err := loraplex.NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(withPlan(newServer(e).routes(), cfg))
	t.Cleanup(func() { ts.Close(); e.Close() })

	status, plan := getJSON(t, ts.URL+planPath)
	if status != 200 || plan["fits"] != true {
		t.Fatalf("plan: %d %v", status, plan)
	}
	st, err := e.StatsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var stats map[string]any
	if err := json.Unmarshal(st, &stats); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(stats["memory"])
	got, _ := json.Marshal(plan["memory"])
	if !bytes.Equal(got, want) {
		t.Fatalf("plan memory %s, engine memory %s", got, want)
	}

	status, plan = getJSON(t, ts.URL+planPath+"?max_num_seqs=2&max_model_len=64&memory_budget_bytes=1000")
	w := plan["workload"].(map[string]any)
	if status != 200 || w["max_num_seqs"] != 2.0 || w["max_model_len"] != 64.0 || plan["fits"] != false ||
		!strings.Contains(plan["reason"].(string), "memory_budget_bytes 1000") {
		t.Fatalf("workload plan: %d %v", status, plan)
	}

	for query, want := range map[string]string{
		"?max_num_seqs=abc":     "max_num_seqs",
		"?sequences=4":          `unknown query parameter "sequences"`,
		"?max_model_len=999999": "max_position_embeddings",
		"?max_gpu_loras=9":      "max_gpu_loras (9) must not exceed max_cpu_loras (3)",
	} {
		status, body := getJSON(t, ts.URL+planPath+query)
		msg, _ := body["error"].(map[string]any)["message"].(string)
		if status != 400 || !strings.Contains(msg, want) {
			t.Errorf("%s: %d %v, want 400 naming %q", query, status, body, want)
		}
	}
	resp, err := http.Post(ts.URL+planPath, "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST plan: %d", resp.StatusCode)
	}
	if status, body := getJSON(t, ts.URL+"/health"); status != 200 || body["status"] != "ok" {
		t.Errorf("health behind the plan route: %d %v", status, body)
	}
}

// -plan prints the plan as indented JSON and reports whether it fits.
func TestPlanFlag(t *testing.T) {
	cfg := loraplex.Config{Model: testModelPath(t), MaxNumSeqs: 4, MaxModelLen: 128}
	var out bytes.Buffer
	fits, err := printPlan(cfg, &out)
	if err != nil || !fits {
		t.Fatalf("printPlan: %v %v\n%s", fits, err, out.String())
	}
	var p loraplex.Plan
	if err := json.Unmarshal(out.Bytes(), &p); err != nil || !strings.Contains(out.String(), "\n  \"fits\": true") {
		t.Fatalf("output %s: %v", out.String(), err)
	}
	if p.Workload.MaxNumSeqs != 4 || p.KV.BlocksNeeded != 4*8 || p.Memory == nil || p.Memory.KVCacheBytes != p.KV.Blocks*p.KV.BlockBytes {
		t.Fatalf("plan %+v", p)
	}
	cfg.MemoryBudgetBytes = p.RequiredBytes - 1
	out.Reset()
	if fits, err := printPlan(cfg, &out); err != nil || fits {
		t.Fatalf("one byte short: %v %v", fits, err)
	}
	if _, err := printPlan(loraplex.Config{Model: "/nonexistent.gguf"}, &out); loraplex.CodeOf(err) != loraplex.CodeIO {
		t.Fatalf("missing model: %v", err)
	}
}
