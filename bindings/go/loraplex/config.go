package loraplex

/*
#include "loraplex.h"
*/
import "C"

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// WeightDType is how base weights are stored (lpx_weight_dtype).
type WeightDType uint32

// Base weight storage types.
const (
	WeightF32  WeightDType = C.LPX_WEIGHT_DTYPE_F32
	WeightBF16 WeightDType = C.LPX_WEIGHT_DTYPE_BF16
	// WeightQ8_0 and WeightQ4_K quantize a dense checkpoint at load (llama.cpp's Q8_0 and
	// Q4_K_M mixes); quantized checkpoints are kept as stored.
	WeightQ8_0 WeightDType = C.LPX_WEIGHT_DTYPE_Q8_0
	WeightQ4_K WeightDType = C.LPX_WEIGHT_DTYPE_Q4_K
)

// Config configures an engine (lpx_engine_config). Every zero field (and "" string) means "the
// library default", so Config{Model: path} is a complete configuration; DefaultConfig and
// ConfigFromEnv return the defaults (and environment overrides) spelled out.
type Config struct {
	// Model is a HuggingFace model directory or a .gguf file (required).
	Model string
	// ServedModelName is the name clients use for the base model ("" = the file/dir stem).
	ServedModelName string
	// Device is "cpu" or "cuda:N" (UNSUPPORTED in builds without CUDA).
	Device string
	// Threads is the number of compute threads (0 = all cores).
	Threads uint32
	// WeightDType is how base weights are stored.
	WeightDType WeightDType
	// MaxNumSeqs is the most sequences in one step.
	MaxNumSeqs uint32
	// MaxBatchTokens is the most tokens in one step.
	MaxBatchTokens uint32
	// MaxModelLen is the longest prompt + completion in tokens (0 = the model's limit).
	MaxModelLen uint32
	// KVBlockSize is the number of token positions per KV block.
	KVBlockSize uint32
	// KVCacheBytes is the KV cache size (0 = sized from MaxNumSeqs × MaxModelLen).
	KVCacheBytes uint64
	// MaxQueue is the most requests in flight before Submit answers QUEUE_FULL.
	MaxQueue uint32
	// PeftSource lists PEFT source directories separated by ':' (NIM_PEFT_SOURCE).
	PeftSource string
	// PeftRefreshInterval is the PEFT source rescan interval (0 = never), millisecond precision.
	PeftRefreshInterval time.Duration
	// MaxCPULoras is the host adapter cache capacity (NIM_MAX_CPU_LORAS).
	MaxCPULoras uint32
	// MaxGPULoras is the number of device adapter slots (NIM_MAX_GPU_LORAS).
	MaxGPULoras uint32
	// MaxLoraRank is the largest accepted LoRA rank (NIM_MAX_LORA_RANK).
	MaxLoraRank uint32
	// MemoryBudgetBytes is the total for weights, adapter caches, activations and KV cache
	// (0 = no budget); with KVCacheBytes 0 the KV cache gets what is left
	// (LPX_MEMORY_BUDGET_BYTES).
	MemoryBudgetBytes uint64
	// DisablePrefixCaching turns off the prefix cache, which reuses the KV blocks of earlier
	// requests whose tokens (and adapter generation) start the same way (LPX_PREFIX_CACHING=0;
	// outputs are the same either way). The zero value keeps the default: on.
	DisablePrefixCaching bool
	// AdapterWeights are admission weights by tenant (an adapter's name or the served base
	// model name; weight >= 1, absent = 1): while both wait, a tenant of weight w is admitted w
	// times as often as one of weight 1 (LPX_ADAPTER_WEIGHTS).
	AdapterWeights map[string]uint32
	// MaxRunningPerAdapter caps the sequences of one adapter running at once (0 = no cap;
	// LPX_MAX_RUNNING_PER_ADAPTER).
	MaxRunningPerAdapter uint32
	// AdapterMaxRunning are running caps by tenant overriding MaxRunningPerAdapter (0 = no
	// cap; LPX_ADAPTER_MAX_RUNNING).
	AdapterMaxRunning map[string]uint32
}

// tenantMap formats m as the C ABI's "name=value,..." (sorted by name).
func tenantMap(m map[string]uint32) string {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, ",")
}

// parseTenantMap reads the C ABI's "name=value,..." (written by the library, so well formed);
// nil for "".
func parseTenantMap(s string) map[string]uint32 {
	if s == "" {
		return nil
	}
	m := map[string]uint32{}
	for _, item := range strings.Split(s, ",") {
		if i := strings.LastIndexByte(item, '='); i > 0 {
			if v, err := strconv.ParseUint(item[i+1:], 10, 32); err == nil {
				m[item[:i]] = uint32(v)
			}
		}
	}
	return m
}

func goStr(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// configFromC copies a C config into Go (the C strings are borrowed, not freed).
func configFromC(c *C.lpx_engine_config) Config {
	return Config{
		Model:                goStr(c.model),
		ServedModelName:      goStr(c.served_model_name),
		Device:               goStr(c.device),
		Threads:              uint32(c.threads),
		WeightDType:          WeightDType(c.weight_dtype),
		MaxNumSeqs:           uint32(c.max_num_seqs),
		MaxBatchTokens:       uint32(c.max_batch_tokens),
		MaxModelLen:          uint32(c.max_model_len),
		KVBlockSize:          uint32(c.kv_block_size),
		KVCacheBytes:         uint64(c.kv_cache_bytes),
		MaxQueue:             uint32(c.max_queue),
		PeftSource:           goStr(c.peft_source),
		PeftRefreshInterval:  time.Duration(c.peft_refresh_interval_ms) * time.Millisecond,
		MaxCPULoras:          uint32(c.max_cpu_loras),
		MaxGPULoras:          uint32(c.max_gpu_loras),
		MaxLoraRank:          uint32(c.max_lora_rank),
		MemoryBudgetBytes:    uint64(c.memory_budget_bytes),
		DisablePrefixCaching: !bool(c.prefix_caching),
		AdapterWeights:       parseTenantMap(goStr(c.adapter_weights)),
		MaxRunningPerAdapter: uint32(c.max_running_per_adapter),
		AdapterMaxRunning:    parseTenantMap(goStr(c.adapter_max_running)),
	}
}

// initConfig writes the library defaults into *c with lpx_engine_config_init_sized and this
// package's sizeof(lpx_engine_config). cgo cannot expand the header's lpx_engine_config_init
// macro: C.lpx_engine_config_init is the binary-compatibility symbol, which initialises only the
// first (oldest) layout, so the fields appended since would be ignored.
func initConfig(c *C.lpx_engine_config) error {
	return takeError(C.lpx_engine_config_init_sized(c, C.sizeof_lpx_engine_config))
}

// DefaultConfig returns the library defaults (lpx_engine_config_init); Model is empty.
func DefaultConfig() Config {
	var c C.lpx_engine_config
	if err := initConfig(&c); err != nil {
		// Unreachable: a non-NULL struct of this header's size always initialises.
		panic(fmt.Sprintf("loraplex: %v", err))
	}
	return configFromC(&c)
}

// ConfigFromEnv returns the defaults with the environment overrides applied
// (lpx_engine_config_from_env: LPX_MODEL, LPX_SERVED_MODEL_NAME, LPX_DEVICE, LPX_THREADS,
// LPX_WEIGHT_DTYPE, LPX_MAX_NUM_SEQS, LPX_MAX_BATCH_TOKENS, LPX_MAX_MODEL_LEN,
// LPX_KV_BLOCK_SIZE, LPX_KV_CACHE_BYTES, LPX_MEMORY_BUDGET_BYTES, LPX_MAX_QUEUE, LPX_PREFIX_CACHING,
// LPX_ADAPTER_WEIGHTS, LPX_MAX_RUNNING_PER_ADAPTER, LPX_ADAPTER_MAX_RUNNING,
// NIM_PEFT_SOURCE, NIM_PEFT_REFRESH_INTERVAL,
// NIM_MAX_CPU_LORAS, NIM_MAX_GPU_LORAS, NIM_MAX_LORA_RANK). Set fields on the result to
// override further. Errors: InvalidArgument naming a malformed variable.
func ConfigFromEnv() (Config, error) {
	var c C.lpx_engine_config
	if err := initConfig(&c); err != nil {
		return Config{}, err
	}
	if err := takeError(C.lpx_engine_config_from_env(&c)); err != nil {
		return Config{}, err
	}
	return configFromC(&c), nil
}

// toC fills *c (initialised with the defaults) with the non-zero fields of cfg; strings are
// allocated in a.
func (cfg *Config) toC(a *cArena, c *C.lpx_engine_config) error {
	if err := initConfig(c); err != nil {
		return err
	}
	var err error
	if c.model, err = a.optStr("Config.Model", cfg.Model); err != nil {
		return err
	}
	if c.served_model_name, err = a.optStr("Config.ServedModelName", cfg.ServedModelName); err != nil {
		return err
	}
	if cfg.Device != "" {
		if c.device, err = a.str("Config.Device", cfg.Device); err != nil {
			return err
		}
	}
	if c.peft_source, err = a.optStr("Config.PeftSource", cfg.PeftSource); err != nil {
		return err
	}
	if len(cfg.AdapterWeights) > 0 {
		if c.adapter_weights, err = a.str("Config.AdapterWeights", tenantMap(cfg.AdapterWeights)); err != nil {
			return err
		}
	}
	if len(cfg.AdapterMaxRunning) > 0 {
		if c.adapter_max_running, err = a.str("Config.AdapterMaxRunning", tenantMap(cfg.AdapterMaxRunning)); err != nil {
			return err
		}
	}
	setU32 := func(dst *C.uint32_t, v uint32) {
		if v != 0 {
			*dst = C.uint32_t(v)
		}
	}
	setU32(&c.threads, cfg.Threads)
	setU32(&c.weight_dtype, uint32(cfg.WeightDType))
	setU32(&c.max_num_seqs, cfg.MaxNumSeqs)
	setU32(&c.max_batch_tokens, cfg.MaxBatchTokens)
	setU32(&c.max_model_len, cfg.MaxModelLen)
	setU32(&c.kv_block_size, cfg.KVBlockSize)
	setU32(&c.max_queue, cfg.MaxQueue)
	setU32(&c.max_cpu_loras, cfg.MaxCPULoras)
	setU32(&c.max_gpu_loras, cfg.MaxGPULoras)
	setU32(&c.max_lora_rank, cfg.MaxLoraRank)
	setU32(&c.max_running_per_adapter, cfg.MaxRunningPerAdapter)
	setU64 := func(dst *C.uint64_t, v uint64) {
		if v != 0 {
			*dst = C.uint64_t(v)
		}
	}
	setU64(&c.kv_cache_bytes, cfg.KVCacheBytes)
	setU64(&c.memory_budget_bytes, cfg.MemoryBudgetBytes)
	if cfg.DisablePrefixCaching {
		c.prefix_caching = false
	}
	if cfg.PeftRefreshInterval < 0 {
		return &Error{Code: CodeInvalidArgument, Message: "Config.PeftRefreshInterval is negative"}
	}
	if cfg.PeftRefreshInterval != 0 {
		ms := cfg.PeftRefreshInterval.Milliseconds()
		if ms == 0 {
			ms = 1
		}
		c.peft_refresh_interval_ms = C.uint64_t(ms)
	}
	return nil
}
