package loraplex

/*
#include "loraplex.h"
*/
import "C"

import (
	"fmt"
	"math"
	"unsafe"
)

// Message is one chat message (rendered with the model's chat template).
type Message struct {
	Role    string // "system", "user", "assistant", ...
	Content string
}

// Request is a generation request (lpx_request). Set exactly one of Prompt, PromptTokens or
// Messages. The zero value of every other field means the library default, so
// Request{Prompt: "Hi"} is complete; pointer fields distinguish "unset" from a meaningful zero
// (use Float32, Uint64, Int to fill them).
type Request struct {
	// Model is the base model's served name or an adapter name ("" = base model).
	Model string
	// Prompt is a UTF-8 prompt, tokenised with the model's tokenizer.
	Prompt string
	// PromptTokens are prompt token ids.
	PromptTokens []uint32
	// Messages are chat messages.
	Messages []Message
	// MaxTokens is the most tokens to generate (0 = the default, 16).
	MaxTokens uint32
	// Temperature is the softmax temperature (nil = 1; 0 = greedy).
	Temperature *float32
	// TopP is the nucleus sampling mass in (0, 1] (nil = 1 = off).
	TopP *float32
	// TopK keeps the k most likely tokens (0 = off).
	TopK uint32
	// MinP is the min-p filter in [0, 1] (0 = off).
	MinP float32
	// Seed is the random seed (nil = the engine picks one).
	Seed *uint64
	// Stop are stop strings (non-empty).
	Stop []string
	// StopTokenIDs are token ids that end generation.
	StopTokenIDs []uint32
	// Logprobs asks for log-probabilities with this many alternatives (0..20; nil = none).
	Logprobs *int
	// IgnoreEOS keeps generating after the end-of-sequence token.
	IgnoreEOS bool
	// RepetitionPenalty is the multiplicative repetition penalty (> 0; nil = 1 = off).
	RepetitionPenalty *float32
	// PresencePenalty is the OpenAI presence penalty in [-2, 2] (0 = off).
	PresencePenalty float32
	// FrequencyPenalty is the OpenAI frequency penalty in [-2, 2] (0 = off).
	FrequencyPenalty float32
}

// Float32 returns a pointer to v (for Request's optional fields).
func Float32(v float32) *float32 { return &v }

// Uint64 returns a pointer to v (for Request.Seed).
func Uint64(v uint64) *uint64 { return &v }

// Int returns a pointer to v (for Request.Logprobs).
func Int(v int) *int { return &v }

// toC fills *c from r; every pointer it stores lives in a (C memory), as cgo requires.
func (r *Request) toC(a *cArena, c *C.lpx_request) error {
	C.lpx_request_init(c)
	var err error
	if c.model, err = a.optStr("Request.Model", r.Model); err != nil {
		return err
	}
	if r.Prompt != "" {
		if c.prompt, err = a.str("Request.Prompt", r.Prompt); err != nil {
			return err
		}
	}
	if len(r.PromptTokens) > 0 {
		c.prompt_tokens = a.u32s(r.PromptTokens)
		c.prompt_tokens_len = C.size_t(len(r.PromptTokens))
	}
	if n := len(r.Messages); n > 0 {
		p := a.alloc(uintptr(n) * C.sizeof_lpx_message)
		msgs := unsafe.Slice((*C.lpx_message)(p), n)
		for i, m := range r.Messages {
			if msgs[i].role, err = a.str(fmt.Sprintf("Request.Messages[%d].Role", i), m.Role); err != nil {
				return err
			}
			if msgs[i].content, err = a.str(fmt.Sprintf("Request.Messages[%d].Content", i), m.Content); err != nil {
				return err
			}
		}
		c.messages = (*C.lpx_message)(p)
		c.messages_len = C.size_t(n)
	}
	if r.MaxTokens != 0 {
		c.max_tokens = C.uint32_t(r.MaxTokens)
	}
	if r.Temperature != nil {
		c.temperature = C.float(*r.Temperature)
	}
	if r.TopP != nil {
		c.top_p = C.float(*r.TopP)
	}
	c.top_k = C.uint32_t(r.TopK)
	c.min_p = C.float(r.MinP)
	if r.Seed != nil {
		c.seed = C.uint64_t(*r.Seed)
		c.has_seed = C.bool(true)
	}
	if n := len(r.Stop); n > 0 {
		p := a.alloc(uintptr(n) * unsafe.Sizeof((*C.char)(nil)))
		stops := unsafe.Slice((**C.char)(p), n)
		for i, s := range r.Stop {
			if stops[i], err = a.str(fmt.Sprintf("Request.Stop[%d]", i), s); err != nil {
				return err
			}
		}
		c.stop = (**C.char)(p)
		c.stop_len = C.size_t(n)
	}
	if len(r.StopTokenIDs) > 0 {
		c.stop_token_ids = a.u32s(r.StopTokenIDs)
		c.stop_token_ids_len = C.size_t(len(r.StopTokenIDs))
	}
	if r.Logprobs != nil {
		if *r.Logprobs < math.MinInt32 || *r.Logprobs > math.MaxInt32 {
			return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("Request.Logprobs = %d is out of range", *r.Logprobs)}
		}
		c.logprobs = C.int32_t(*r.Logprobs)
	}
	c.ignore_eos = C.bool(r.IgnoreEOS)
	if r.RepetitionPenalty != nil {
		c.repetition_penalty = C.float(*r.RepetitionPenalty)
	}
	c.presence_penalty = C.float(r.PresencePenalty)
	c.frequency_penalty = C.float(r.FrequencyPenalty)
	return nil
}
