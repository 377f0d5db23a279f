package loraplex

/*
#include "loraplex.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"time"
)

// Code is a stable loraplex error code (lpx_error_code); the numbers never change.
type Code uint32

// The error codes of include/loraplex.h.
const (
	CodeInvalidArgument Code = C.LPX_ERROR_CODE_INVALID_ARGUMENT
	CodeNotFound        Code = C.LPX_ERROR_CODE_NOT_FOUND
	CodeInvalidModel    Code = C.LPX_ERROR_CODE_INVALID_MODEL
	CodeInvalidAdapter  Code = C.LPX_ERROR_CODE_INVALID_ADAPTER
	CodeCapacity        Code = C.LPX_ERROR_CODE_CAPACITY
	CodeQueueFull       Code = C.LPX_ERROR_CODE_QUEUE_FULL
	CodeIO              Code = C.LPX_ERROR_CODE_IO
	CodeDevice          Code = C.LPX_ERROR_CODE_DEVICE
	CodeUnsupported     Code = C.LPX_ERROR_CODE_UNSUPPORTED
	CodeCancelled       Code = C.LPX_ERROR_CODE_CANCELLED
	CodeEngineFailed    Code = C.LPX_ERROR_CODE_ENGINE_FAILED
	CodePanic           Code = C.LPX_ERROR_CODE_PANIC
	CodeInternal        Code = C.LPX_ERROR_CODE_INTERNAL
)

var codeNames = map[Code]string{
	CodeInvalidArgument: "INVALID_ARGUMENT",
	CodeNotFound:        "NOT_FOUND",
	CodeInvalidModel:    "INVALID_MODEL",
	CodeInvalidAdapter:  "INVALID_ADAPTER",
	CodeCapacity:        "CAPACITY",
	CodeQueueFull:       "QUEUE_FULL",
	CodeIO:              "IO",
	CodeDevice:          "DEVICE",
	CodeUnsupported:     "UNSUPPORTED",
	CodeCancelled:       "CANCELLED",
	CodeEngineFailed:    "ENGINE_FAILED",
	CodePanic:           "PANIC",
	CodeInternal:        "INTERNAL",
}

// String returns the code's C name without prefix ("NOT_FOUND"), or "CODE_<n>" for an unknown
// number (a newer library).
func (c Code) String() string {
	if s, ok := codeNames[c]; ok {
		return s
	}
	return fmt.Sprintf("CODE_%d", uint32(c))
}

// Error is an error reported by the loraplex library: a stable code and a message that names
// what is at fault. errors.Is(err, ErrNotFound) (and the other sentinels) matches on the code.
//
// A request refused under load (CodeQueueFull, CodeCapacity) also names the configuration limit
// that was hit ("max_queue", "max_cpu_loras") and a suggested wait estimated from the engine's
// recent completion rate; other errors leave both zero.
type Error struct {
	Code       Code
	Message    string
	Limit      string
	RetryAfter time.Duration
}

// Error formats the error as "loraplex: CODE: message".
func (e *Error) Error() string {
	if e.Message == "" {
		return "loraplex: " + e.Code.String()
	}
	return "loraplex: " + e.Code.String() + ": " + e.Message
}

// Is reports whether target is an *Error with the same code and either no message (a sentinel)
// or the same message.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Code == e.Code && (t.Message == "" || t.Message == e.Message)
}

// Sentinels for errors.Is: they match any *Error with their code.
var (
	ErrInvalidArgument = &Error{Code: CodeInvalidArgument}
	ErrNotFound        = &Error{Code: CodeNotFound}
	ErrInvalidModel    = &Error{Code: CodeInvalidModel}
	ErrInvalidAdapter  = &Error{Code: CodeInvalidAdapter}
	ErrCapacity        = &Error{Code: CodeCapacity}
	ErrQueueFull       = &Error{Code: CodeQueueFull}
	ErrIO              = &Error{Code: CodeIO}
	ErrDevice          = &Error{Code: CodeDevice}
	ErrUnsupported     = &Error{Code: CodeUnsupported}
	ErrCancelled       = &Error{Code: CodeCancelled}
	ErrEngineFailed    = &Error{Code: CodeEngineFailed}
	ErrPanic           = &Error{Code: CodePanic}
	ErrInternal        = &Error{Code: CodeInternal}
)

// ErrClosed is returned (wrapped) by every call on an Engine or Output after its Close.
var ErrClosed = errors.New("loraplex: use after Close")

// CodeOf returns the loraplex code of err (searching wrapped errors), or 0 when err carries none.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// readError copies a (borrowed or owned) C error into a Go *Error; it does not free it.
func readError(err *C.lpx_error) *Error {
	e := &Error{
		Code:       Code(C.lpx_error_code(err)),
		Message:    C.GoString(C.lpx_error_message(err)),
		RetryAfter: time.Duration(C.lpx_error_retry_after_ms(err)) * time.Millisecond,
	}
	if l := C.lpx_error_limit(err); l != nil {
		e.Limit = C.GoString(l)
	}
	return e
}

// takeError converts an owned C error into a Go error and frees it; nil for NULL (success).
func takeError(err *C.lpx_error) error {
	if err == nil {
		return nil
	}
	e := readError(err)
	C.lpx_error_free(err)
	return e
}
