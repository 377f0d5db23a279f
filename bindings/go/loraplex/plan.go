package loraplex

/*
#include <stdlib.h>
#include "loraplex.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
)

// Workload is what to plan for (the workload JSON of lpx_engine_plan_json). A zero field takes
// the value of the Config it is planned with, as Config's zero fields take the library
// defaults; to plan without a budget, leave both MemoryBudgetBytes fields zero.
type Workload struct {
	// MaxLoraRank is the largest adapter rank served.
	MaxLoraRank uint64 `json:"max_lora_rank,omitempty"`
	// MaxGPULoras is the number of adapters resident in device slots.
	MaxGPULoras uint64 `json:"max_gpu_loras,omitempty"`
	// MaxCPULoras is the number of adapters in the host cache.
	MaxCPULoras uint64 `json:"max_cpu_loras,omitempty"`
	// MaxNumSeqs is the number of sequences running at once.
	MaxNumSeqs uint64 `json:"max_num_seqs,omitempty"`
	// MaxModelLen is the context per sequence (prompt + completion tokens).
	MaxModelLen uint64 `json:"max_model_len,omitempty"`
	// MaxBatchTokens is the most tokens in one step.
	MaxBatchTokens uint64 `json:"max_batch_tokens,omitempty"`
	// MemoryBudgetBytes is the total memory budget.
	MemoryBudgetBytes uint64 `json:"memory_budget_bytes,omitempty"`
}

// MemoryPlan is the bytes per part of an engine (stats JSON "memory").
type MemoryPlan struct {
	WeightsBytes            uint64 `json:"weights_bytes"`
	HostAdapterCacheBytes   uint64 `json:"host_adapter_cache_bytes"`
	DeviceAdapterCacheBytes uint64 `json:"device_adapter_cache_bytes"`
	ActivationsBytes        uint64 `json:"activations_bytes"`
	KVCacheBytes            uint64 `json:"kv_cache_bytes"`
}

// Total is the sum of the parts.
func (m MemoryPlan) Total() uint64 {
	return m.WeightsBytes + m.HostAdapterCacheBytes + m.DeviceAdapterCacheBytes + m.ActivationsBytes + m.KVCacheBytes
}

// KnobLimit is the largest value of one knob that fits (Value nil: none fits, or memory does
// not bound it) and what stops it: "memory_budget", "kv_cache", "max_position_embeddings",
// "max_cpu_loras", "unbounded" or "does_not_fit".
type KnobLimit struct {
	Value *uint64 `json:"value"`
	Bound string  `json:"bound"`
}

// Plan is the capacity plan of lpx_engine_plan_json, decoded.
type Plan struct {
	// Workload holds the settings planned for (the workload applied to the config).
	Workload struct {
		Model                 string `json:"model"`
		Device                string `json:"device"`
		WeightDType           string `json:"weight_dtype"`
		MaxLoraRank           uint64 `json:"max_lora_rank"`
		MaxGPULoras           uint64 `json:"max_gpu_loras"`
		MaxCPULoras           uint64 `json:"max_cpu_loras"`
		MaxNumSeqs            uint64 `json:"max_num_seqs"`
		MaxModelLen           uint64 `json:"max_model_len"`
		MaxModelLenBound      string `json:"max_model_len_bound"`
		MaxBatchTokens        uint64 `json:"max_batch_tokens"`
		KVBlockSize           uint64 `json:"kv_block_size"`
		KVCacheBytes          uint64 `json:"kv_cache_bytes"`
		MemoryBudgetBytes     uint64 `json:"memory_budget_bytes"`
		MaxPositionEmbeddings uint64 `json:"max_position_embeddings"`
	} `json:"workload"`
	// Fits says whether the engine starts and its KV cache holds the workload.
	Fits bool `json:"fits"`
	// Reason says why not, naming the part ("" when it fits).
	Reason string `json:"reason"`
	// Memory is what the engine would allocate; nil when it would not start.
	Memory *MemoryPlan `json:"memory"`
	// Required is the plan with a KV cache of exactly the workload's blocks; RequiredBytes,
	// its total, is the smallest budget that fits.
	Required      MemoryPlan `json:"required"`
	RequiredBytes uint64     `json:"required_bytes"`
	// KV compares the KV cache with the workload.
	KV struct {
		BlockSize    uint64 `json:"block_size"`
		BlockBytes   uint64 `json:"block_bytes"`
		Blocks       uint64 `json:"blocks"`
		Tokens       uint64 `json:"tokens"`
		BlocksNeeded uint64 `json:"blocks_needed"`
		TokensNeeded uint64 `json:"tokens_needed"`
	} `json:"kv"`
	// Largest holds, per knob, the largest value that fits with the others held.
	Largest struct {
		MaxLoraRank    KnobLimit `json:"max_lora_rank"`
		MaxGPULoras    KnobLimit `json:"max_gpu_loras"`
		MaxCPULoras    KnobLimit `json:"max_cpu_loras"`
		MaxNumSeqs     KnobLimit `json:"max_num_seqs"`
		MaxModelLen    KnobLimit `json:"max_model_len"`
		MaxBatchTokens KnobLimit `json:"max_batch_tokens"`
	} `json:"largest"`
}

// PlanJSON returns the capacity plan (lpx_engine_plan_json) for the engine cfg would create and
// workloadJSON (a JSON object with the keys of Workload's tags; "" = the config's values),
// without loading weights. A workload that does not fit is not an error ("fits": false).
// Errors: InvalidArgument naming the field or key, IO / InvalidModel for the model,
// Unsupported for the device. Safe for concurrent use; needs no Engine.
func PlanJSON(cfg Config, workloadJSON string) ([]byte, error) {
	var a cArena
	defer a.free()
	var c C.lpx_engine_config
	if err := cfg.toC(&a, &c); err != nil {
		return nil, err
	}
	w, err := a.str("workload", workloadJSON)
	if err != nil {
		return nil, err
	}
	var out *C.char
	if err := takeError(C.lpx_engine_plan_json(&c, w, &out)); err != nil {
		return nil, err
	}
	return []byte(takeString(out)), nil
}

// PlanCapacity is PlanJSON for a Workload, decoded.
func PlanCapacity(cfg Config, w Workload) (*Plan, error) {
	body, err := json.Marshal(w)
	if err != nil {
		return nil, fmt.Errorf("loraplex: workload JSON: %w", err)
	}
	js, err := PlanJSON(cfg, string(body))
	if err != nil {
		return nil, err
	}
	var p Plan
	if err := json.Unmarshal(js, &p); err != nil {
		return nil, fmt.Errorf("loraplex: plan JSON: %w", err)
	}
	return &p, nil
}
