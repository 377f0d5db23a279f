// Command openai-server serves a loraplex engine over an OpenAI-compatible HTTP API using only
// the Go standard library:
//
//	GET  /health               200 {"status":"ok"} once the model is loaded
//	GET  /v1/health/live       200 while the process serves (NIM's liveness probe)
//	GET  /v1/health/ready      200 once the model is loaded and until a drain starts, then 503
//	GET  /v1/models            the base model and every adapter
//	POST /v1/completions       OpenAI completions ("stream": true gives Server-Sent Events)
//	POST /v1/chat/completions  OpenAI chat completions (idem)
//	GET  /metrics              Prometheus text
//	GET  /v1/loraplex/plan     the capacity plan of this configuration (workload keys as query
//	                           parameters: max_num_seqs, max_model_len, max_lora_rank, ...)
//
// -plan prints the capacity plan of the configuration (flags and environment) as JSON without
// loading weights, and exits: 0 when the workload fits, 3 when it does not.
//
// Configuration comes from the environment (LPX_MODEL, NIM_PEFT_SOURCE, NIM_MAX_CPU_LORAS, ...;
// see loraplex.ConfigFromEnv) and flags, which win. Errors are OpenAI-style bodies with
// statuses: CAPACITY / QUEUE_FULL → 429 naming the limit, with the engine's Retry-After estimate,
// NOT_FOUND → 404, invalid or unsupported requests → 400, anything else → 500. A client that
// disconnects cancels its request.
//
// SIGTERM or SIGINT drains: readiness turns 503 and new generation requests get 503 with
// Retry-After: 1, requests in flight finish (at most -drain-timeout, env LPX_DRAIN_TIMEOUT in
// seconds), then the server exits (status 0 when everything in flight finished).
package main

import (
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func main() {
	cfg, err := loraplex.ConfigFromEnv()
	if err != nil {
		log.Fatalf("openai-server: environment: %v", err)
	}
	flag.StringVar(&cfg.Model, "model", cfg.Model, "base model: HF directory or .gguf file (env LPX_MODEL)")
	flag.StringVar(&cfg.ServedModelName, "served-model-name", cfg.ServedModelName, "name of the base model in the API (env LPX_SERVED_MODEL_NAME)")
	flag.StringVar(&cfg.PeftSource, "peft-source", cfg.PeftSource, "PEFT source directories, ':'-separated (env NIM_PEFT_SOURCE)")
	refresh := flag.Duration("peft-refresh", cfg.PeftRefreshInterval, "PEFT source rescan interval, 0 = never (env NIM_PEFT_REFRESH_INTERVAL, seconds)")
	maxCPU := flag.Uint("max-cpu-loras", uint(cfg.MaxCPULoras), "host adapter cache capacity (env NIM_MAX_CPU_LORAS)")
	maxGPU := flag.Uint("max-gpu-loras", uint(cfg.MaxGPULoras), "device adapter slots, at most max-cpu-loras (env NIM_MAX_GPU_LORAS)")
	maxLen := flag.Uint("max-model-len", uint(cfg.MaxModelLen), "longest prompt + completion in tokens, 0 = the model's (env LPX_MAX_MODEL_LEN)")
	threads := flag.Uint("threads", uint(cfg.Threads), "compute threads, 0 = all cores (env LPX_THREADS)")
	maxRank := flag.Uint("max-lora-rank", uint(cfg.MaxLoraRank), "largest adapter rank, 0 = the default (env NIM_MAX_LORA_RANK)")
	maxSeqs := flag.Uint("max-num-seqs", uint(cfg.MaxNumSeqs), "most sequences at once, 0 = the default (env LPX_MAX_NUM_SEQS)")
	maxBatch := flag.Uint("max-batch-tokens", uint(cfg.MaxBatchTokens), "most tokens per step, 0 = the default (env LPX_MAX_BATCH_TOKENS)")
	flag.Uint64Var(&cfg.MemoryBudgetBytes, "memory-budget-bytes", cfg.MemoryBudgetBytes, "memory budget, 0 = none (env LPX_MEMORY_BUDGET_BYTES)")
	plan := flag.Bool("plan", false, "print the capacity plan of this configuration as JSON and exit (0: fits, 3: does not)")
	listen := flag.String("listen", envOr("LPX_LISTEN", "127.0.0.1:8000"), "listen address (env LPX_LISTEN)")
	drainDefault, err := time.ParseDuration(envOr("LPX_DRAIN_TIMEOUT", "30") + "s")
	if err != nil {
		log.Fatalf("openai-server: LPX_DRAIN_TIMEOUT=%q is not a number of seconds", os.Getenv("LPX_DRAIN_TIMEOUT"))
	}
	drainTimeout := flag.Duration("drain-timeout", drainDefault, "on SIGTERM, how long requests in flight may take to finish (env LPX_DRAIN_TIMEOUT, seconds)")
	flag.Parse()
	cfg.MaxLoraRank, cfg.MaxNumSeqs, cfg.MaxBatchTokens = uint32(*maxRank), uint32(*maxSeqs), uint32(*maxBatch)
	cfg.PeftRefreshInterval = *refresh
	cfg.MaxCPULoras, cfg.MaxGPULoras = uint32(*maxCPU), uint32(*maxGPU)
	if cfg.MaxGPULoras > cfg.MaxCPULoras {
		cfg.MaxGPULoras = cfg.MaxCPULoras
	}
	cfg.MaxModelLen, cfg.Threads = uint32(*maxLen), uint32(*threads)
	if cfg.Model == "" {
		log.Fatal("openai-server: no model: pass -model or set LPX_MODEL")
	}

	if *plan {
		fits, err := printPlan(cfg, os.Stdout)
		if err != nil {
			log.Fatalf("openai-server: planning %s: %v", cfg.Model, err)
		}
		if !fits {
			os.Exit(3)
		}
		return
	}

	engine, err := loraplex.NewEngine(cfg)
	if err != nil {
		log.Fatalf("openai-server: loading %s: %v", cfg.Model, err)
	}
	defer engine.Close()

	s := newServer(engine)
	srv := &http.Server{
		Addr:              *listen,
		Handler:           withPlan(s.routes(), cfg),
		ReadHeaderTimeout: 10 * time.Second,
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, os.Interrupt, syscall.SIGTERM)
	drained := make(chan drainReport, 1)
	go func() {
		sig := <-stop
		log.Printf("openai-server: %v: draining (at most %v)", sig, *drainTimeout)
		drained <- shutdown(s, srv, *drainTimeout)
	}()
	log.Printf("openai-server: loraplex %s serving %s on http://%s", loraplex.Version(), cfg.Model, *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintf(os.Stderr, "openai-server: %v\n", err)
		engine.Close()
		os.Exit(1)
	}
	report := <-drained
	if !report.finished {
		log.Printf("openai-server: drain timed out with requests in flight (%v); exiting", report)
		engine.Close()
		os.Exit(1)
	}
	log.Printf("openai-server: drained: %v", report)
}
