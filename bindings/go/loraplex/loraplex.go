// Package loraplex is the Go binding of the loraplex C ABI (include/loraplex.h): an embeddable
// multi-LoRA inference engine serving one base model plus many LoRA adapters.
//
// The package links target/release/libloraplex.so of this repository (build it first with
// `cargo build --release`); the rpath points there, so binaries run without LD_LIBRARY_PATH.
//
// Ownership: every C object is owned by exactly one Go value (Engine, Output). Close frees it;
// Close is idempotent, and a finalizer frees a value that was never closed as a safety net.
// Errors from the library are copied into *Error and freed before the call returns.
//
// Threading: every Engine method may be called from any goroutine concurrently. Close waits for
// the calls in flight on that engine (a Poll waits at most its timeout) and then frees it; calls
// after Close return an error wrapping ErrClosed.
package loraplex

/*
#cgo CFLAGS: -I${SRCDIR}/../../../include
#cgo LDFLAGS: -L${SRCDIR}/../../../target/release -lloraplex -Wl,-rpath,${SRCDIR}/../../../target/release -lm -ldl -lpthread
#include <stdlib.h>
#include "loraplex.h"
*/
import "C"

import (
	"fmt"
	"strings"
	"unsafe"
)

// HeaderABIVersion is LPX_ABI_VERSION of the header this package was compiled against.
const HeaderABIVersion = uint32(C.LPX_ABI_VERSION)

// ABIVersion returns the linked library's ABI version (lpx_abi_version). NewEngine refuses to
// run when it differs from HeaderABIVersion.
func ABIVersion() uint32 { return uint32(C.lpx_abi_version()) }

// Version returns the linked library's version string ("MAJOR.MINOR.PATCH").
func Version() string { return C.GoString(C.lpx_version()) }

// checkABI returns an error when the linked library and the compiled-in header disagree.
func checkABI() error {
	if got := ABIVersion(); got != HeaderABIVersion {
		return &Error{Code: CodeUnsupported, Message: fmt.Sprintf(
			"libloraplex ABI version %d does not match the header's LPX_ABI_VERSION %d; rebuild the Go binding against this library",
			got, HeaderABIVersion)}
	}
	return nil
}

// cArena owns C allocations made to build one call's arguments; free releases them all.
// Not safe for concurrent use (each call builds its own).
type cArena struct {
	ptrs []unsafe.Pointer
}

// str copies s into C memory (NUL-terminated). A NUL byte inside s cannot be represented and is
// an InvalidArgument error naming field.
func (a *cArena) str(field, s string) (*C.char, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return nil, &Error{Code: CodeInvalidArgument, Message: fmt.Sprintf("%s contains a NUL byte", field)}
	}
	p := C.CString(s)
	a.ptrs = append(a.ptrs, unsafe.Pointer(p))
	return p, nil
}

// optStr is str, but "" gives NULL.
func (a *cArena) optStr(field, s string) (*C.char, error) {
	if s == "" {
		return nil, nil
	}
	return a.str(field, s)
}

// alloc returns zeroed C memory of n bytes (never NULL for n > 0; NULL for n == 0).
func (a *cArena) alloc(n uintptr) unsafe.Pointer {
	if n == 0 {
		return nil
	}
	p := C.calloc(1, C.size_t(n))
	if p == nil {
		panic("loraplex: C.calloc failed")
	}
	a.ptrs = append(a.ptrs, p)
	return p
}

// u32s copies v into C memory (NULL for an empty slice).
func (a *cArena) u32s(v []uint32) *C.uint32_t {
	if len(v) == 0 {
		return nil
	}
	p := a.alloc(uintptr(len(v)) * C.sizeof_uint32_t)
	dst := unsafe.Slice((*uint32)(p), len(v))
	copy(dst, v)
	return (*C.uint32_t)(p)
}

func (a *cArena) free() {
	for _, p := range a.ptrs {
		C.free(p)
	}
	a.ptrs = nil
}

// takeString copies a library-owned char* into a Go string and frees it with lpx_string_free.
func takeString(p *C.char) string {
	if p == nil {
		return ""
	}
	s := C.GoString(p)
	C.lpx_string_free(p)
	return s
}
