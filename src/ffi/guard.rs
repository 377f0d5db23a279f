//! The panic boundary (`ffi_guard!`) and the checked conversions every export uses: pointers,
//! UTF-8 strings, arrays and versioned (`struct_size`) parameter structs.

use std::ffi::{c_char, CStr};

use crate::error::{Error, ErrorCode, Result};

/// Runs `$body` (an expression of type `Result<()>`) behind `catch_unwind` and turns the outcome
/// into the C convention: NULL on success, an owned `lpx_error *` on failure. A panic becomes a
/// `PANIC` error carrying the panic message. With a second argument `=> $default`, the body is a
/// plain expression and a panic returns `$default` (for infallible accessors).
macro_rules! ffi_guard {
    ($body:expr) => {{
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
            || -> $crate::error::Result<()> { $body },
        )) {
            Ok(Ok(())) => ::std::ptr::null_mut(),
            Ok(Err(e)) => $crate::ffi::error::into_raw(e),
            Err(p) => $crate::ffi::error::into_raw($crate::ffi::guard::panic_error(&p)),
        }
    }};
    ($body:expr => $default:expr) => {{
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(_) => $default,
        }
    }};
}
pub(crate) use ffi_guard;

/// The `PANIC` error for a caught panic payload.
pub(crate) fn panic_error(p: &Box<dyn std::any::Any + Send>) -> Error {
    let text = if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    };
    Error::new(ErrorCode::Panic, format!("panic inside loraplex: {text}"))
}

/// `INVALID_ARGUMENT` for a NULL pointer argument `name`.
pub(crate) fn null_arg(name: &str) -> Error {
    Error::invalid_argument(format!("argument {name} is NULL"))
}

/// Checks that a pointer argument is non-NULL.
pub(crate) fn non_null<T>(p: *const T, name: &str) -> Result<()> {
    if p.is_null() {
        Err(null_arg(name))
    } else {
        Ok(())
    }
}

/// Borrows a NUL-terminated UTF-8 string; NULL → `None`.
///
/// # Safety
/// `p` must be NULL or point to a NUL-terminated string valid for the call.
pub(crate) unsafe fn opt_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(Some).map_err(|e| {
        Error::invalid_argument(format!(
            "{name} is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Borrows a required NUL-terminated UTF-8 string (NULL → INVALID_ARGUMENT naming it).
///
/// # Safety
/// As [`opt_str`].
pub(crate) unsafe fn req_str<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    // SAFETY: forwarded contract.
    unsafe { opt_str(p, name) }?.ok_or_else(|| null_arg(name))
}

/// Borrows `len` elements at `p` (NULL with len 0 → empty; NULL with len > 0 → error).
///
/// # Safety
/// `p` must be NULL or point to `len` initialised elements valid for the call.
pub(crate) unsafe fn slice<'a, T>(p: *const T, len: usize, name: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::invalid_argument(format!(
            "{name} is NULL but its length is {len}"
        )));
    }
    if len > isize::MAX as usize / std::mem::size_of::<T>().max(1) {
        return Err(Error::invalid_argument(format!(
            "{name}: length {len} is too large"
        )));
    }
    // SAFETY: non-NULL, `len` elements per the caller's contract, size checked above.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A parameter struct that starts with `uint32_t struct_size` and only ever grows by appending.
pub(crate) trait Versioned: Sized + Copy {
    /// Name used in error messages ("lpx_request").
    const NAME: &'static str;
    /// `struct_size` of every layout this library understands, oldest first (the last one is
    /// `size_of::<Self>()`).
    const KNOWN_SIZES: &'static [usize];
    /// The defaults (what `*_init` writes).
    fn defaults() -> Self;
    /// How many leading bytes of a caller's struct of `struct_size` = `size` (one of
    /// [`Versioned::KNOWN_SIZES`]) hold fields of that layout: less than `size` when the old
    /// layout's tail padding is where the next layout's first appended field starts, so that
    /// padding is never read as a field. Default: all of them.
    fn field_bytes(size: usize) -> usize {
        size
    }
}

/// Reads a versioned struct from caller memory: checks `struct_size` against the known layouts
/// and copies only the caller's prefix over the defaults (an older caller's missing fields keep
/// their defaults).
///
/// # Safety
/// `p` must be non-NULL and point to at least `struct_size` readable bytes whose first 4 bytes
/// are the `struct_size` field.
pub(crate) unsafe fn read_versioned<T: Versioned>(p: *const T, name: &str) -> Result<T> {
    non_null(p, name)?;
    // SAFETY: every versioned struct starts with a u32 `struct_size`; p is non-NULL.
    let size = unsafe { std::ptr::read_unaligned(p as *const u32) } as usize;
    if !T::KNOWN_SIZES.contains(&size) {
        let cur = std::mem::size_of::<T>();
        let why = if size > cur {
            "larger than this library's layout: the header is newer than the library, or the struct was not initialised"
        } else {
            "not a known layout: initialise it with its *_init function"
        };
        return Err(Error::invalid_argument(format!(
            "{name}->struct_size = {size} ({} is {cur} bytes here): {why}",
            T::NAME
        )));
    }
    let mut out = T::defaults();
    let bytes = T::field_bytes(size).min(size);
    // SAFETY: `bytes` ≤ `size` ≤ size_of::<T>() (every known size is), the caller's struct has
    // `size` readable bytes, the regions do not overlap, and every field of T in the first
    // `bytes` bytes is plain data for which the caller's initialised bytes (written by *_init
    // and the caller) are valid.
    unsafe {
        std::ptr::copy_nonoverlapping(p as *const u8, &mut out as *mut T as *mut u8, bytes);
    }
    Ok(out)
}

/// The layout `*_init_sized` writes for a caller's struct of `size` bytes: `size` itself when it
/// is one of [`Versioned::KNOWN_SIZES`], the current layout for anything larger, `None` for an
/// unknown size (smaller than the oldest layout or between two known ones).
pub(crate) fn init_layout<T: Versioned>(size: usize) -> Option<usize> {
    let cur = std::mem::size_of::<T>();
    if size >= cur {
        Some(cur)
    } else if T::KNOWN_SIZES.contains(&size) {
        Some(size)
    } else {
        None
    }
}

/// What `*_init_sized(p, size)` does: writes the defaults of the layout a caller's struct of
/// `size` bytes has ([`init_layout`]) — only that layout's fields
/// ([`Versioned::field_bytes`]), `struct_size` set to the layout's size — and nothing else.
/// NULL `p` or an unknown `size` → INVALID_ARGUMENT naming it, with nothing written.
/// `func` and `arg` name the export and its pointer argument in messages.
///
/// # Safety
/// `p` must be NULL or point to `size` writable bytes.
pub(crate) unsafe fn init_versioned<T: Versioned>(
    p: *mut T,
    size: usize,
    func: &str,
    arg: &str,
) -> Result<()> {
    non_null(p, arg)?;
    let layout = init_layout::<T>(size).ok_or_else(|| {
        let known: Vec<String> = T::KNOWN_SIZES.iter().map(|s| s.to_string()).collect();
        Error::invalid_argument(format!(
            "{func}: size = {size} is not a layout of {} this library knows ({} bytes, or \
             more from a newer header): nothing was written",
            T::NAME,
            known.join(" or "),
        ))
    })?;
    let mut d = T::defaults();
    // SAFETY: every versioned struct starts with its u32 `struct_size` field (offset 0, aligned
    // within `d`); `layout` ≤ size_of::<T>() fits a u32.
    unsafe { (&mut d as *mut T as *mut u32).write(layout as u32) };
    let bytes = T::field_bytes(layout).min(layout);
    // SAFETY: `bytes` ≤ `layout` ≤ `size` (init_layout) and ≤ size_of::<T>(); the caller's
    // struct has `size` writable bytes (our contract) and does not overlap the local `d`.
    unsafe { std::ptr::copy_nonoverlapping(&d as *const T as *const u8, p as *mut u8, bytes) };
    Ok(())
}
