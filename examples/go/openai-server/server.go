package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/loraplex/loraplex/bindings/go/loraplex"
)

// maxBody bounds a request body.
const maxBody = 16 << 20

// pollEvery is how long one Poll blocks, so a disconnected client is noticed within it.
const pollEvery = 50 * time.Millisecond

// server holds the engine; its handlers may run concurrently (the engine is thread-safe).
type server struct {
	engine  *loraplex.Engine
	replica replica
}

func newServer(e *loraplex.Engine) *server { return &server{engine: e} }

func (s *server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/health", method(http.MethodGet, s.health))
	mux.HandleFunc("/v1/health/live", method(http.MethodGet, s.live))
	mux.HandleFunc("/v1/health/ready", method(http.MethodGet, s.ready))
	mux.HandleFunc("/v1/models", method(http.MethodGet, s.models))
	mux.HandleFunc("/metrics", method(http.MethodGet, s.metrics))
	mux.HandleFunc("/v1/completions", method(http.MethodPost, s.generate(false)))
	mux.HandleFunc("/v1/chat/completions", method(http.MethodPost, s.generate(true)))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "invalid_request_error", "not_found", fmt.Sprintf("no route %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// method rejects other HTTP methods with 405.
func method(m string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != m {
			w.Header().Set("Allow", m)
			writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed",
				fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, m))
			return
		}
		h(w, r)
	}
}

// writeError writes an OpenAI-style error body.
func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]any{
		"message": msg, "type": typ, "param": nil, "code": code,
	}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(body)
}

// statusOf maps a loraplex error to an HTTP status, OpenAI error type and code.
func statusOf(err error) (int, string, string) {
	code := loraplex.CodeOf(err)
	name := strings.ToLower(code.String())
	switch code {
	case loraplex.CodeCapacity, loraplex.CodeQueueFull:
		return http.StatusTooManyRequests, "rate_limit_error", name
	case loraplex.CodeNotFound:
		return http.StatusNotFound, "invalid_request_error", "model_not_found"
	case loraplex.CodeInvalidArgument, loraplex.CodeInvalidModel, loraplex.CodeInvalidAdapter, loraplex.CodeUnsupported:
		return http.StatusBadRequest, "invalid_request_error", name
	}
	if code == 0 {
		name = "internal_error"
	}
	return http.StatusInternalServerError, "server_error", name
}

// writeEngineError writes err with its mapped status. A 429 carries Retry-After: the engine's
// estimate in whole seconds (rounded up, at least 1), and its message names the limit hit.
func writeEngineError(w http.ResponseWriter, err error) {
	status, typ, code := statusOf(err)
	msg := err.Error()
	var le *loraplex.Error
	if errors.As(err, &le) {
		msg = le.Message
	}
	if status == http.StatusTooManyRequests {
		secs := 1
		if le != nil && le.RetryAfter > 0 {
			secs = int((le.RetryAfter + time.Second - 1) / time.Second)
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	writeError(w, status, typ, code, msg)
}

func (s *server) health(w http.ResponseWriter, r *http.Request) {
	if _, err := s.engine.StatsJSON(); err != nil {
		writeEngineError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write([]byte(`{"status":"ok"}`))
}

func (s *server) models(w http.ResponseWriter, r *http.Request) {
	body, err := s.engine.ModelsJSON()
	if err != nil {
		writeEngineError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func (s *server) metrics(w http.ResponseWriter, r *http.Request) {
	text, err := s.engine.MetricsText()
	if err != nil {
		writeEngineError(w, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	io.WriteString(w, text)
}

// checkBody enforces that the endpoint matches the body (completions take "prompt", chat takes
// "messages") and returns its "stream" flag. Every other field is checked by the engine
// (SubmitJSON), which refuses the ones it does not honour with INVALID_ARGUMENT (400).
func checkBody(body []byte, chat bool) (stream bool, err error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: fmt.Sprintf("request body is not a JSON object: %v", err)}
	}
	_, hasMsgs := fields["messages"]
	_, hasPrompt := fields["prompt"]
	switch {
	case chat && !hasMsgs:
		return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: `/v1/chat/completions needs field "messages"`}
	case chat && hasPrompt:
		return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: `/v1/chat/completions does not take field "prompt"`}
	case !chat && !hasPrompt:
		return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: `/v1/completions needs field "prompt"`}
	case !chat && hasMsgs:
		return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: `/v1/completions does not take field "messages" (use /v1/chat/completions)`}
	}
	if raw, ok := fields["stream"]; ok && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		if err := json.Unmarshal(raw, &stream); err != nil {
			return false, &loraplex.Error{Code: loraplex.CodeInvalidArgument, Message: fmt.Sprintf(`field "stream" must be a boolean (got %s)`, raw)}
		}
	}
	return stream, nil
}

// generate serves /v1/completions (chat false) and /v1/chat/completions (chat true).
func (s *server) generate(chat bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		done := s.replica.admit(w)
		if done == nil {
			return
		}
		defer done()
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "invalid_argument", fmt.Sprintf("reading the body: %v", err))
			return
		}
		stream, err := checkBody(body, chat)
		if err != nil {
			writeEngineError(w, err)
			return
		}
		id, err := s.engine.SubmitJSON(body)
		if err != nil {
			writeEngineError(w, err)
			return
		}
		if stream {
			s.streamSSE(w, r, id)
		} else {
			s.whole(w, r, id)
		}
	}
}

// whole waits for the single output of a non-streamed request (the one that IsDone: the
// complete object with every choice) and writes its object; a request that failed in the
// engine gets the mapped error status.
func (s *server) whole(w http.ResponseWriter, r *http.Request, id uint64) {
	var body []byte
	var failed error
	err := s.engine.Stream(r.Context(), id, func(o *loraplex.Output) error {
		if !o.IsDone() {
			return nil
		}
		if failed = o.Err(); failed != nil {
			return nil
		}
		var err error
		body, err = o.JSON()
		return err
	})
	switch {
	case r.Context().Err() != nil:
		log.Printf("request %d: client went away; cancelled", id)
	case err != nil:
		writeEngineError(w, err)
	case failed != nil:
		writeEngineError(w, failed)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}
}

// streamSSE writes every output's chunk as a Server-Sent Event until the request's last output
// (the chunks of an n > 1 request carry one choice each, interleaved as they come; when the
// body asked for stream_options.include_usage, the usage chunk of every choice follows the
// last one), then "data: [DONE]". A write failure or disconnect cancels the request.
func (s *server) streamSSE(w http.ResponseWriter, r *http.Request, id uint64) {
	flusher, _ := w.(http.Flusher)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("Connection", "keep-alive")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	err := s.engine.Stream(r.Context(), id, func(o *loraplex.Output) error {
		chunk, err := o.JSON()
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", chunk); err != nil {
			return err
		}
		// stream_options.include_usage: the usage chunk follows the request's last output.
		usage, err := o.UsageJSON()
		if err != nil {
			return err
		}
		if usage != nil {
			if _, err := fmt.Fprintf(w, "data: %s\n\n", usage); err != nil {
				return err
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		return nil
	})
	if err != nil {
		if r.Context().Err() != nil {
			log.Printf("request %d: client went away; cancelled", id)
			return
		}
		// Headers are out: report the failure as an error event.
		status, typ, code := statusOf(err)
		ev, _ := json.Marshal(map[string]any{"error": map[string]any{
			"message": err.Error(), "type": typ, "param": nil, "code": code, "status": status,
		}})
		fmt.Fprintf(w, "data: %s\n\n", ev)
	}
	io.WriteString(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
}
