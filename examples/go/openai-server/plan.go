package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

// planPath serves the capacity plan of the running server's configuration.
const planPath = "/v1/loraplex/plan"

// planKeys are the workload keys GET /v1/loraplex/plan takes as query parameters.
var planKeys = []string{
	"max_lora_rank", "max_gpu_loras", "max_cpu_loras", "max_num_seqs", "max_model_len",
	"max_batch_tokens", "memory_budget_bytes",
}

// withPlan adds GET /v1/loraplex/plan to h: the capacity plan (loraplex.PlanJSON) for cfg, the
// configuration the server's engine was created with, and a workload given as query parameters
// (planKeys, each a non-negative integer; absent = the server's value). A workload that does
// not fit is a 200 with "fits": false; a bad parameter is a 400 naming it.
func withPlan(h http.Handler, cfg loraplex.Config) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", h)
	mux.HandleFunc(planPath, method(http.MethodGet, func(w http.ResponseWriter, r *http.Request) {
		workload := map[string]uint64{}
		for key, vals := range r.URL.Query() {
			if !known(key) {
				writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_argument",
					fmt.Sprintf("unknown query parameter %q (known: %v)", key, planKeys))
				return
			}
			v, err := strconv.ParseUint(vals[len(vals)-1], 10, 64)
			if err != nil {
				writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_argument",
					fmt.Sprintf("query parameter %s=%q is not a non-negative integer", key, vals[len(vals)-1]))
				return
			}
			workload[key] = v
		}
		body, err := json.Marshal(workload)
		if err != nil {
			writeEngineError(w, err)
			return
		}
		plan, err := loraplex.PlanJSON(cfg, string(body))
		if err != nil {
			writeEngineError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(plan)
	}))
	return mux
}

func known(key string) bool {
	for _, k := range planKeys {
		if k == key {
			return true
		}
	}
	return false
}

// printPlan writes the capacity plan of cfg (indented JSON) to out, for the -plan flag, and
// says whether the workload fits. Loads no weights.
func printPlan(cfg loraplex.Config, out io.Writer) (bool, error) {
	plan, err := loraplex.PlanJSON(cfg, "")
	if err != nil {
		return false, err
	}
	var fits struct {
		Fits bool `json:"fits"`
	}
	if err := json.Unmarshal(plan, &fits); err != nil {
		return false, err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, plan, "", "  "); err != nil {
		return false, err
	}
	pretty.WriteByte('\n')
	_, err = out.Write(pretty.Bytes())
	return fits.Fits, err
}
