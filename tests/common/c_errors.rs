//! Reading `lpx_error`s returned through the C ABI in tests.

use std::ffi::CStr;

use loraplex::ffi::{lpx_error, lpx_error_code, lpx_error_free, lpx_error_message};

/// Frees an error that must be there, returning its code and message.
pub fn take_err(e: *mut lpx_error) -> (u32, String) {
    assert!(!e.is_null(), "expected an error");
    // SAFETY (test): `e` is an owned error returned by the library, freed once here.
    unsafe {
        let code = lpx_error_code(e) as u32;
        let msg = CStr::from_ptr(lpx_error_message(e))
            .to_str()
            .unwrap()
            .to_string();
        lpx_error_free(e);
        (code, msg)
    }
}

/// Panics with the error's code and message unless `e` is NULL (success).
pub fn ok(e: *mut lpx_error) {
    if !e.is_null() {
        let (c, m) = take_err(e);
        panic!("unexpected error {c}: {m}");
    }
}
