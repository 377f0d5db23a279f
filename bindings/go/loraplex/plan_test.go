package loraplex

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// The plan's memory is what an engine built with the workload's values allocates (its stats
// JSON "memory"), and the Go decoding holds the library's numbers.
func TestPlanMatchesTheEngine(t *testing.T) {
	model, _ := testModel(t)
	cfg := Config{Model: model, Threads: 1, MaxCPULoras: 3, MaxGPULoras: 2, MaxLoraRank: 8, WeightDType: WeightQ8_0}
	w := Workload{MaxNumSeqs: 3, MaxModelLen: 96, MaxLoraRank: 4}
	p, err := PlanCapacity(cfg, w)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Fits || p.Reason != "" || p.Memory == nil {
		t.Fatalf("plan does not fit: %+v", p)
	}
	if p.Workload.MaxNumSeqs != 3 || p.Workload.MaxModelLen != 96 || p.Workload.WeightDType != "q8_0" {
		t.Fatalf("workload not applied: %+v", p.Workload)
	}
	if p.KV.Blocks < p.KV.BlocksNeeded || p.KV.BlocksNeeded != 3*6 {
		t.Fatalf("KV: %+v", p.KV)
	}
	cfg.MaxNumSeqs, cfg.MaxModelLen, cfg.MaxLoraRank = 3, 96, 4
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	st, err := e.StatsJSON()
	if err != nil {
		t.Fatal(err)
	}
	var stats struct {
		Memory MemoryPlan `json:"memory"`
	}
	if err := json.Unmarshal(st, &stats); err != nil {
		t.Fatal(err)
	}
	if stats.Memory != *p.Memory || stats.Memory.Total() != p.Memory.Total() {
		t.Fatalf("engine memory %+v, plan %+v", stats.Memory, *p.Memory)
	}
	// With a budget of exactly the required bytes it still fits; one byte less does not.
	w.MemoryBudgetBytes = p.RequiredBytes
	if q, err := PlanCapacity(cfg, w); err != nil || !q.Fits {
		t.Fatalf("budget = required: %+v %v", q, err)
	}
	w.MemoryBudgetBytes = p.RequiredBytes - 1
	q, err := PlanCapacity(cfg, w)
	if err != nil || q.Fits || !strings.Contains(q.Reason, "KV cache") {
		t.Fatalf("budget = required - 1: %+v %v", q, err)
	}
	if l := q.Largest.MaxNumSeqs; l.Value == nil || *l.Value != 2 || l.Bound != "kv_cache" {
		t.Fatalf("largest max_num_seqs: %+v", l)
	}
}

func TestPlanBadWorkloadNamesTheKey(t *testing.T) {
	model, _ := testModel(t)
	cfg := Config{Model: model}
	for body, want := range map[string]string{
		`{"max_num_seqs": -2}`:       `"max_num_seqs"`,
		`{"seqs": 2}`:                `unknown key "seqs"`,
		`{"max_model_len": 1000000}`: "max_position_embeddings",
	} {
		_, err := PlanJSON(cfg, body)
		var le *Error
		if !errors.As(err, &le) || le.Code != CodeInvalidArgument || !strings.Contains(le.Message, want) {
			t.Errorf("%s: got %v, want INVALID_ARGUMENT containing %q", body, err, want)
		}
	}
	if _, err := PlanJSON(Config{}, ""); err == nil {
		t.Error("a config without a model must fail")
	}
}
