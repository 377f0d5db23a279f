package loraplex

/*
#include "loraplex.h"
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// FinishReason tells why a request ended (lpx_finish_reason); FinishNone while it runs.
type FinishReason uint32

// Finish reasons.
const (
	FinishNone      FinishReason = C.LPX_FINISH_REASON_NONE
	FinishStop      FinishReason = C.LPX_FINISH_REASON_STOP
	FinishLength    FinishReason = C.LPX_FINISH_REASON_LENGTH
	FinishCancelled FinishReason = C.LPX_FINISH_REASON_CANCELLED
	FinishError     FinishReason = C.LPX_FINISH_REASON_ERROR
)

// String returns the OpenAI spelling ("stop", "length", "cancelled", "error"; "" for none).
func (f FinishReason) String() string {
	switch f {
	case FinishNone:
		return ""
	case FinishStop:
		return "stop"
	case FinishLength:
		return "length"
	case FinishCancelled:
		return "cancelled"
	case FinishError:
		return "error"
	}
	return fmt.Sprintf("finish_reason_%d", uint32(f))
}

// Usage holds a request's token counts so far.
type Usage struct {
	PromptTokens     uint64
	CompletionTokens uint64
}

// TopLogprob is one alternative token with its natural-log probability.
type TopLogprob struct {
	Token   uint32
	Logprob float32
}

// TokenLogprob is the log-probability of a generated token and its alternatives (most likely
// first).
type TokenLogprob struct {
	Token   uint32
	Logprob float32
	Top     []TopLogprob
}

// Output is one delta of one choice of a request's result (lpx_output), returned by
// Engine.Poll. It owns the C output until Close (idempotent; a finalizer closes it if
// forgotten). Accessors copy into Go values, may be called from any goroutine, and return zero
// values after Close.
type Output struct {
	mu sync.Mutex
	p  *C.lpx_output
}

func newOutput(p *C.lpx_output) *Output {
	o := &Output{p: p}
	runtime.SetFinalizer(o, (*Output).Close)
	return o
}

// Close frees the C output. Idempotent; safe from any goroutine.
func (o *Output) Close() {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.p != nil {
		C.lpx_output_free(o.p)
		o.p = nil
		runtime.SetFinalizer(o, nil)
	}
}

// with runs f on the live C output under the lock; false after Close.
func (o *Output) with(f func(p *C.lpx_output)) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.p == nil {
		return false
	}
	f(o.p)
	runtime.KeepAlive(o)
	return true
}

// RequestID returns the id of the request this output belongs to.
func (o *Output) RequestID() (id uint64) {
	o.with(func(p *C.lpx_output) { id = uint64(C.lpx_output_request_id(p)) })
	return
}

// FinishReason returns why this output's choice ended, or FinishNone when more outputs of it
// follow.
func (o *Output) FinishReason() (f FinishReason) {
	o.with(func(p *C.lpx_output) { f = FinishReason(C.lpx_output_finish_reason(p)) })
	return
}

// IsFinal reports whether this is the last output of its choice (FinishReason set). With
// N > 1 other choices may still follow: the request is over at IsDone.
func (o *Output) IsFinal() (final bool) {
	o.with(func(p *C.lpx_output) { final = bool(C.lpx_output_is_final(p)) })
	return
}

// IsDone reports whether this is the request's last output: every choice ended and the engine
// forgot the id (with one choice, the same output as IsFinal).
func (o *Output) IsDone() (done bool) {
	o.with(func(p *C.lpx_output) { done = bool(C.lpx_output_is_done(p)) })
	return
}

// Index returns the choice (0..N) this output belongs to. The single output of a non-streamed
// SubmitJSON request describes choice 0 through its accessors and every choice in its JSON.
func (o *Output) Index() (i int) {
	o.with(func(p *C.lpx_output) { i = int(C.lpx_output_index(p)) })
	return
}

// HasPrompt reports whether this output carries the prompt (each choice's first output, when
// the request asked for Echo or PromptLogprobs).
func (o *Output) HasPrompt() (has bool) {
	o.with(func(p *C.lpx_output) { has = C.lpx_output_prompt_text(p, nil) != nil })
	return
}

// PromptText returns the prompt text ("" unless HasPrompt): the request's own text for a text
// prompt, otherwise the prompt tokens decoded.
func (o *Output) PromptText() (s string) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		t := C.lpx_output_prompt_text(p, &n)
		if t != nil && n > 0 {
			s = C.GoStringN(t, C.int(n))
		}
	})
	return
}

// PromptTokenIDs returns the prompt token ids (nil unless HasPrompt).
func (o *Output) PromptTokenIDs() (ids []uint32) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		t := C.lpx_output_prompt_token_ids(p, &n)
		if t != nil && n > 0 {
			ids = append([]uint32(nil), unsafe.Slice((*uint32)(unsafe.Pointer(t)), int(n))...)
		}
	})
	return
}

// PromptLogprobs returns the log-probabilities of PromptTokenIDs()[1:] with their
// alternatives (nil unless the request set PromptLogprobs and HasPrompt).
func (o *Output) PromptLogprobs() (lps []TokenLogprob) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		lps = copyLogprobs(C.lpx_output_prompt_logprobs(p, &n), n)
	})
	return
}

// CumulativeLogprob returns the sum of the log-probabilities of this choice's generated tokens
// so far.
func (o *Output) CumulativeLogprob() (lp float64) {
	o.with(func(p *C.lpx_output) { lp = float64(C.lpx_output_cumulative_logprob(p)) })
	return
}

// Text returns the new text of this delta (may contain NUL bytes).
func (o *Output) Text() (s string) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		t := C.lpx_output_text_len(p, &n)
		if t != nil && n > 0 {
			s = C.GoStringN(t, C.int(n))
		}
	})
	return
}

// TokenIDs returns the new token ids of this delta (nil when none).
func (o *Output) TokenIDs() (ids []uint32) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		t := C.lpx_output_token_ids(p, &n)
		if t != nil && n > 0 {
			ids = append([]uint32(nil), unsafe.Slice((*uint32)(unsafe.Pointer(t)), int(n))...)
		}
	})
	return
}

// copyLogprobs copies n C log-probabilities (nil for none).
func copyLogprobs(t *C.lpx_token_logprob, n C.size_t) []TokenLogprob {
	if t == nil || n == 0 {
		return nil
	}
	src := unsafe.Slice(t, int(n))
	lps := make([]TokenLogprob, len(src))
	for i, l := range src {
		lps[i] = TokenLogprob{Token: uint32(l.token), Logprob: float32(l.logprob)}
		if l.top != nil && l.top_len > 0 {
			top := unsafe.Slice(l.top, int(l.top_len))
			lps[i].Top = make([]TopLogprob, len(top))
			for j, a := range top {
				lps[i].Top[j] = TopLogprob{Token: uint32(a.token), Logprob: float32(a.logprob)}
			}
		}
	}
	return lps
}

// Logprobs returns the log-probabilities of this delta's tokens (nil unless requested).
func (o *Output) Logprobs() (lps []TokenLogprob) {
	o.with(func(p *C.lpx_output) {
		var n C.size_t
		lps = copyLogprobs(C.lpx_output_logprobs(p, &n), n)
	})
	return
}

// Usage returns the token counts so far of this output's choice (the prompt tokens and the
// choice's generated tokens).
func (o *Output) Usage() (u Usage) {
	o.with(func(p *C.lpx_output) {
		cu := C.lpx_output_usage(p)
		u = Usage{PromptTokens: uint64(cu.prompt_tokens), CompletionTokens: uint64(cu.completion_tokens)}
	})
	return
}

// Err returns why the request failed (FinishError) as an *Error, or nil.
func (o *Output) Err() (err error) {
	o.with(func(p *C.lpx_output) {
		if e := C.lpx_output_error(p); e != nil {
			err = readError(e) // borrowed from the output: copied, never freed here
		}
	})
	return
}

// JSON returns the OpenAI-shaped JSON of this output (lpx_output_json). Its shape is fixed by
// how the request was submitted: a streaming chunk of this output's choice
// (text_completion / chat.completion.chunk: one SSE data payload) for Submit requests and
// SubmitJSON bodies with "stream": true, the complete text_completion / chat.completion object
// with every choice and the request's "usage" for non-streamed SubmitJSON bodies. Chunks carry
// no usage (with stream_options.include_usage they carry "usage": null, and UsageJSON gives
// the usage chunk); failed requests an "error" object. Errors: ErrClosed after Close.
func (o *Output) JSON() ([]byte, error) {
	var out []byte
	var err error
	ok := o.with(func(p *C.lpx_output) {
		var s *C.char
		if err = takeError(C.lpx_output_json(p, &s)); err == nil {
			out = []byte(takeString(s))
		}
	})
	if !ok {
		return nil, fmt.Errorf("Output.JSON: %w", ErrClosed)
	}
	return out, err
}

// UsageJSON returns the usage chunk (empty "choices", the request's "usage": every choice's)
// that OpenAI streams last when a SubmitJSON body asked for "stream_options":
// {"include_usage": true}; send it as one more SSE data payload after the JSON of the request's
// last output (IsDone; lpx_output_usage_json). It is nil for every other output. Errors:
// ErrClosed after Close.
func (o *Output) UsageJSON() ([]byte, error) {
	var out []byte
	var err error
	ok := o.with(func(p *C.lpx_output) {
		var s *C.char
		if err = takeError(C.lpx_output_usage_json(p, &s)); err == nil && s != nil {
			out = []byte(takeString(s))
		}
	})
	if !ok {
		return nil, fmt.Errorf("Output.UsageJSON: %w", ErrClosed)
	}
	return out, err
}
