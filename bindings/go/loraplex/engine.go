package loraplex

/*
#include <stdlib.h>
#include "loraplex.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// Engine is a running loraplex engine (lpx_engine): one base model, its adapters and a worker.
// All methods are safe for concurrent use. Close frees it (idempotent); a finalizer frees an
// engine that was never closed, but call Close: the engine holds the model in memory.
type Engine struct {
	// mu guards p: calls hold it for reading while they use the handle, Close for writing, so
	// lpx_engine_free always runs after every other call returned (the C contract).
	mu sync.RWMutex
	p  *C.lpx_engine
}

// NewEngine loads the model of cfg and starts an engine. It first checks that the linked
// library's ABI version equals the header's (ErrUnsupported otherwise). Errors:
// InvalidArgument (bad field, named), IO / InvalidModel (model), Unsupported (device).
func NewEngine(cfg Config) (*Engine, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var a cArena
	defer a.free()
	var c C.lpx_engine_config
	if err := cfg.toC(&a, &c); err != nil {
		return nil, err
	}
	var p *C.lpx_engine
	if err := takeError(C.lpx_engine_create(&c, &p)); err != nil {
		return nil, err
	}
	e := &Engine{p: p}
	runtime.SetFinalizer(e, (*Engine).Close)
	return e, nil
}

// Close cancels every request in flight, waits for the calls in flight on this engine (a Poll
// at most its timeout), joins the worker and frees the engine. Idempotent; later calls return
// errors wrapping ErrClosed. Outputs already returned stay valid. Always returns nil.
func (e *Engine) Close() error {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p != nil {
		C.lpx_engine_free(e.p)
		e.p = nil
		runtime.SetFinalizer(e, nil)
	}
	return nil
}

// acquire read-locks the engine and returns its handle, or an error wrapping ErrClosed. The
// caller must call e.mu.RUnlock() (via release) after its C call.
func (e *Engine) acquire(op string) (*C.lpx_engine, error) {
	if e == nil {
		return nil, fmt.Errorf("Engine.%s on a nil engine: %w", op, ErrClosed)
	}
	e.mu.RLock()
	if e.p == nil {
		e.mu.RUnlock()
		return nil, fmt.Errorf("Engine.%s: %w", op, ErrClosed)
	}
	return e.p, nil
}

func (e *Engine) release() {
	e.mu.RUnlock()
	runtime.KeepAlive(e)
}

// Submit queues a request and returns its id (never 0); poll it with Poll or Stream until the
// output that IsDone. Outputs are deltas of one choice each (Output.Index; with N > 1 the
// choices interleave) and Output.JSON gives streaming chunks. Errors: InvalidArgument (the
// message names the field: a value out of range, a logit bias out of range or outside the
// vocabulary, a response format that does not compile...), NotFound (unknown model/adapter),
// Capacity (host adapter cache full of active adapters), QueueFull, EngineFailed, ErrClosed.
func (e *Engine) Submit(req Request) (uint64, error) {
	var a cArena
	defer a.free()
	var c C.lpx_request
	if err := req.toC(&a, &c); err != nil {
		return 0, err
	}
	p, err := e.acquire("Submit")
	if err != nil {
		return 0, err
	}
	defer e.release()
	var id C.uint64_t
	if err := takeError(C.lpx_engine_submit(p, &c, &id)); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

// SubmitJSON queues an OpenAI /v1/completions ("prompt") or /v1/chat/completions ("messages")
// body and returns its id. With "stream": true polls return deltas (one choice each) whose
// JSON is a chunk, until the output that IsDone; otherwise polls return nothing until the
// single output that IsDone, whose JSON is the complete object with every choice. Errors: as
// Submit, plus InvalidArgument naming the JSON field (unknown or unhonoured fields such as
// tools, n out of range, an unknown response_format type...) and Unsupported (several
// prompts).
func (e *Engine) SubmitJSON(body []byte) (uint64, error) {
	var a cArena
	defer a.free()
	cb, err := a.str("SubmitJSON body", string(body))
	if err != nil {
		return 0, err
	}
	p, err := e.acquire("SubmitJSON")
	if err != nil {
		return 0, err
	}
	defer e.release()
	var id C.uint64_t
	if err := takeError(C.lpx_engine_submit_json(p, cb, &id)); err != nil {
		return 0, err
	}
	return uint64(id), nil
}

// Poll waits up to timeout (0 = don't block; millisecond precision, at most ~49 days) for news
// about request id. It returns what arrived for one choice merged into one Output (the caller
// closes it), or nil, nil when nothing arrived in time. After the request's last output
// (Output.IsDone) the id is forgotten. Errors: NotFound (unknown, finished or never submitted
// id), ErrClosed.
func (e *Engine) Poll(id uint64, timeout time.Duration) (*Output, error) {
	ms := timeout.Milliseconds()
	if ms < 0 {
		ms = 0
	}
	if ms > math.MaxUint32 {
		ms = math.MaxUint32
	}
	p, err := e.acquire("Poll")
	if err != nil {
		return nil, err
	}
	defer e.release()
	var out *C.lpx_output
	if err := takeError(C.lpx_engine_poll(p, C.uint64_t(id), C.uint32_t(ms), &out)); err != nil {
		return nil, err
	}
	if out == nil {
		return nil, nil
	}
	return newOutput(out), nil
}

// Cancel cancels request id; its final output (FinishCancelled) follows. Idempotent: unknown
// or finished ids are fine. Errors: ErrClosed.
func (e *Engine) Cancel(id uint64) error {
	p, err := e.acquire("Cancel")
	if err != nil {
		return err
	}
	defer e.release()
	return takeError(C.lpx_engine_cancel(p, C.uint64_t(id)))
}

// stringCall runs one of the char**-returning engine calls.
func (e *Engine) stringCall(op string, f func(p *C.lpx_engine, out **C.char) *C.lpx_error) (string, error) {
	p, err := e.acquire(op)
	if err != nil {
		return "", err
	}
	defer e.release()
	var s *C.char
	if err := takeError(f(p, &s)); err != nil {
		return "", err
	}
	return takeString(s), nil
}

// ModelsJSON returns the OpenAI /v1/models body: the base model, then every adapter.
func (e *Engine) ModelsJSON() ([]byte, error) {
	s, err := e.stringCall("ModelsJSON", func(p *C.lpx_engine, out **C.char) *C.lpx_error {
		return C.lpx_engine_models_json(p, out)
	})
	return []byte(s), err
}

// StatsJSON returns the engine state as JSON (queues, KV cache, memory by tier, adapter tiers).
func (e *Engine) StatsJSON() ([]byte, error) {
	s, err := e.stringCall("StatsJSON", func(p *C.lpx_engine, out **C.char) *C.lpx_error {
		return C.lpx_engine_stats_json(p, out)
	})
	return []byte(s), err
}

// MetricsText returns the Prometheus text exposition of the engine's metrics.
func (e *Engine) MetricsText() (string, error) {
	return e.stringCall("MetricsText", func(p *C.lpx_engine, out **C.char) *C.lpx_error {
		return C.lpx_engine_metrics_text(p, out)
	})
}

// RegisterPeftSource adds a PEFT source directory (each sub-directory is one adapter named
// after it), rescanned every refresh (0 = only on Refresh; millisecond precision).
// Errors: InvalidArgument (already registered, bad value), IO (unreadable directory).
func (e *Engine) RegisterPeftSource(dir string, refresh time.Duration) error {
	ms := refresh.Milliseconds()
	if ms < 0 || ms > math.MaxUint32 {
		return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("RegisterPeftSource refresh = %v is out of range", refresh)}
	}
	if refresh > 0 && ms == 0 {
		ms = 1
	}
	var a cArena
	defer a.free()
	cdir, err := a.str("RegisterPeftSource dir", dir)
	if err != nil {
		return err
	}
	p, err := e.acquire("RegisterPeftSource")
	if err != nil {
		return err
	}
	defer e.release()
	return takeError(C.lpx_engine_register_peft_source(p, cdir, C.uint32_t(ms)))
}

// Refresh rescans every PEFT source now. Errors: IO, ErrClosed.
func (e *Engine) Refresh() error {
	p, err := e.acquire("Refresh")
	if err != nil {
		return err
	}
	defer e.release()
	return takeError(C.lpx_engine_refresh(p))
}

// streamPoll is how long Stream blocks in one Poll, so it notices ctx within this time.
const streamPoll = 50 * time.Millisecond

// Stream polls request id until its last output (Output.IsDone), calling fn with each output
// of every choice (Stream closes it after fn returns; fn must not keep it). When ctx is done or
// fn returns an error, Stream cancels the request, drains it until its last output (so the
// engine forgets it) and returns ctx.Err() or fn's error. It returns nil after the last output
// was handed to fn; a failed request is not an error here (see Output.Err).
func (e *Engine) Stream(ctx context.Context, id uint64, fn func(*Output) error) error {
	var stopErr error
	for {
		if stopErr == nil {
			if err := ctx.Err(); err != nil {
				stopErr = err
				if cerr := e.Cancel(id); cerr != nil {
					return cerr
				}
			}
		}
		out, err := e.Poll(id, streamPoll)
		if err != nil {
			if stopErr != nil && errors.Is(err, ErrNotFound) {
				return stopErr
			}
			return err
		}
		if out == nil {
			continue
		}
		done := out.IsDone()
		if stopErr == nil {
			if ferr := fn(out); ferr != nil {
				stopErr = ferr
				if !done {
					if cerr := e.Cancel(id); cerr != nil {
						out.Close()
						return cerr
					}
				}
			}
		}
		out.Close()
		if done {
			return stopErr
		}
	}
}

// Prompt is the prompt as a choice's first output carries it (Request.Echo or
// Request.PromptLogprobs).
type Prompt struct {
	Text     string
	TokenIDs []uint32
	// Logprobs are the log-probabilities of TokenIDs[1:] (with Request.PromptLogprobs).
	Logprobs []TokenLogprob
}

// Result is one whole choice collected by Generate or GenerateAll.
type Result struct {
	// Index is the choice (0..N).
	Index        int
	Text         string
	TokenIDs     []uint32
	Logprobs     []TokenLogprob
	FinishReason FinishReason
	// Usage counts the prompt tokens and this choice's generated tokens.
	Usage Usage
	// CumulativeLogprob is the sum of the log-probabilities of the generated tokens.
	CumulativeLogprob float64
	// Prompt is set when the request asked for Echo or PromptLogprobs.
	Prompt *Prompt
}

// Generate submits req (one choice: N 0 or 1) and collects its outputs until the last one. A
// request that failed in the engine returns its *Error; ctx cancellation cancels the request
// and returns ctx.Err(). For N > 1 use GenerateAll.
func (e *Engine) Generate(ctx context.Context, req Request) (*Result, error) {
	if req.N > 1 {
		return nil, &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf(
			"Generate returns one choice but Request.N = %d: use GenerateAll", req.N)}
	}
	all, err := e.GenerateAll(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return &Result{}, nil
	}
	return all[0], nil
}

// GenerateAll submits req and collects every choice until the request's last output; the
// results are in index order (N of them). A request that failed in the engine returns its
// *Error; ctx cancellation cancels the request and returns ctx.Err().
func (e *Engine) GenerateAll(ctx context.Context, req Request) ([]*Result, error) {
	id, err := e.Submit(req)
	if err != nil {
		return nil, err
	}
	byIndex := map[int]*Result{}
	texts := map[int]*strings.Builder{}
	var failed error
	err = e.Stream(ctx, id, func(o *Output) error {
		i := o.Index()
		res := byIndex[i]
		if res == nil {
			res = &Result{Index: i}
			byIndex[i] = res
			texts[i] = &strings.Builder{}
		}
		texts[i].WriteString(o.Text())
		res.TokenIDs = append(res.TokenIDs, o.TokenIDs()...)
		res.Logprobs = append(res.Logprobs, o.Logprobs()...)
		res.Usage = o.Usage()
		res.CumulativeLogprob = o.CumulativeLogprob()
		if o.HasPrompt() && res.Prompt == nil {
			res.Prompt = &Prompt{Text: o.PromptText(), TokenIDs: o.PromptTokenIDs(), Logprobs: o.PromptLogprobs()}
		}
		if o.IsFinal() {
			res.FinishReason = o.FinishReason()
			if ferr := o.Err(); ferr != nil {
				failed = ferr
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if failed != nil {
		return nil, failed
	}
	out := make([]*Result, 0, len(byIndex))
	for i, r := range byIndex {
		r.Text = texts[i].String()
		out = append(out, r)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Index < out[b].Index })
	return out, nil
}
