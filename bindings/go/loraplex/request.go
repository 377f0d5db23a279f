package loraplex

/*
#include "loraplex.h"
*/
import "C"

import (
	"fmt"
	"math"
	"sort"
	"unsafe"
)

// Message is one chat message (rendered with the model's chat template).
type Message struct {
	Role    string // "system", "user", "assistant", ...
	Content string
}

// ResponseFormatType says what shape the output must have (lpx_response_format_type).
type ResponseFormatType uint32

// Response format types.
const (
	// FormatText is free text (the default).
	FormatText ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_TEXT
	// FormatJSONObject is any JSON object (OpenAI {"type": "json_object"}).
	FormatJSONObject ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_JSON_OBJECT
	// FormatJSONSchema is JSON valid against the schema in ResponseFormat.Value (JSON text).
	FormatJSONSchema ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_JSON_SCHEMA
	// FormatRegex is text matching the regular expression in ResponseFormat.Value in full.
	FormatRegex ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_REGEX
	// FormatChoice is exactly one of ResponseFormat.Choices.
	FormatChoice ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_CHOICE
	// FormatGrammar is text of the Lark grammar in ResponseFormat.Value (start rule "start").
	FormatGrammar ResponseFormatType = C.LPX_RESPONSE_FORMAT_TYPE_GRAMMAR
)

// ResponseFormat constrains a request's output. The zero value is free text. A constrained
// choice ends with FinishStop when its constraint is complete; an invalid schema, regular
// expression or grammar is refused by Submit with InvalidArgument naming the problem.
type ResponseFormat struct {
	Type ResponseFormatType
	// Value is the JSON Schema (as JSON text), the regular expression or the Lark grammar;
	// empty for the other types.
	Value string
	// Choices are the allowed outputs of FormatChoice.
	Choices []string
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
	// N is the number of choices to return (1..64; 0 = 1). The choices share the prompt and
	// each draws from its own random stream; outputs carry Output.Index. Use GenerateAll, or
	// Stream, which runs until the request's last output (Output.IsDone).
	N uint32
	// BestOf is the number of choices to generate (>= N, <= 64; 0 = N): the N with the highest
	// mean token log-probability are returned, after all have finished.
	BestOf uint32
	// LogitBias maps token ids to a bias in [-100, 100] added to their logits (OpenAI
	// logit_bias; -100 in effect bans a token, 100 forces it).
	LogitBias map[uint32]float32
	// ResponseFormat constrains the output (JSON object, JSON schema, regex, choice, grammar).
	ResponseFormat ResponseFormat
	// Echo makes each choice's first output carry the prompt (Output.PromptText,
	// Output.PromptTokenIDs), as OpenAI's echo.
	Echo bool
	// PromptLogprobs asks for the prompt tokens' log-probabilities with this many alternatives
	// each (0..20; nil = none): Output.PromptLogprobs.
	PromptLogprobs *int
	// Adapters is an adapter mixture: the request runs on W + Σ scaleᵢ·Bᵢ·Aᵢ over these
	// adapters (1..4 distinct names, at most Config.MaxGPULoras), in the same batch as every
	// other request; Model must then be "" or the base model's name.
	Adapters []AdapterMix
}

// AdapterMix is one adapter of Request.Adapters: its name and its scale in the mixture (on
// top of the adapter's own alpha / r).
type AdapterMix struct {
	Name  string
	Scale float32
}

// Float32 returns a pointer to v (for Request's optional fields).
func Float32(v float32) *float32 { return &v }

// Uint64 returns a pointer to v (for Request.Seed).
func Uint64(v uint64) *uint64 { return &v }

// Int returns a pointer to v (for Request.Logprobs).
func Int(v int) *int { return &v }

// toC fills *c from r; every pointer it stores lives in a (C memory), as cgo requires.
func (r *Request) toC(a *cArena, c *C.lpx_request) error {
	// The sized init with this package's sizeof(lpx_request): cgo cannot expand the header's
	// lpx_request_init macro, and C.lpx_request_init is the binary-compatibility symbol, which
	// initialises only the first (oldest) layout (n, echo, logit_bias... would be ignored).
	if err := takeError(C.lpx_request_init_sized(c, C.sizeof_lpx_request)); err != nil {
		return err
	}
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
	if r.N != 0 {
		c.n = C.uint32_t(r.N)
	}
	c.best_of = C.uint32_t(r.BestOf)
	if n := len(r.LogitBias); n > 0 {
		// Sorted by token id, so that errors name the same entry every time.
		ids := make([]uint32, 0, n)
		for id := range r.LogitBias {
			ids = append(ids, id)
		}
		sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
		p := a.alloc(uintptr(n) * C.sizeof_lpx_logit_bias)
		biases := unsafe.Slice((*C.lpx_logit_bias)(p), n)
		for i, id := range ids {
			biases[i].token = C.uint32_t(id)
			biases[i].bias = C.float(r.LogitBias[id])
		}
		c.logit_bias = (*C.lpx_logit_bias)(p)
		c.logit_bias_len = C.size_t(n)
	}
	if n := len(r.Adapters); n > 0 {
		p := a.alloc(uintptr(n) * C.sizeof_lpx_adapter_mix)
		mix := unsafe.Slice((*C.lpx_adapter_mix)(p), n)
		for i, m := range r.Adapters {
			if mix[i].name, err = a.str(fmt.Sprintf("Request.Adapters[%d].Name", i), m.Name); err != nil {
				return err
			}
			mix[i].scale = C.float(m.Scale)
		}
		c.adapters = (*C.lpx_adapter_mix)(p)
		c.adapters_len = C.size_t(n)
	}
	c.response_format = C.uint32_t(r.ResponseFormat.Type)
	if c.response_format_value, err = a.optStr("Request.ResponseFormat.Value", r.ResponseFormat.Value); err != nil {
		return err
	}
	if n := len(r.ResponseFormat.Choices); n > 0 {
		p := a.alloc(uintptr(n) * unsafe.Sizeof((*C.char)(nil)))
		choices := unsafe.Slice((**C.char)(p), n)
		for i, s := range r.ResponseFormat.Choices {
			if choices[i], err = a.str(fmt.Sprintf("Request.ResponseFormat.Choices[%d]", i), s); err != nil {
				return err
			}
		}
		c.response_format_choices = (**C.char)(p)
		c.response_format_choices_len = C.size_t(n)
	}
	c.echo = C.bool(r.Echo)
	if r.PromptLogprobs != nil {
		if *r.PromptLogprobs < math.MinInt32 || *r.PromptLogprobs > math.MaxInt32 {
			return &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("Request.PromptLogprobs = %d is out of range", *r.PromptLogprobs)}
		}
		c.prompt_logprobs = C.int32_t(*r.PromptLogprobs)
	}
	return nil
}
