//! The crate's one error type and the stable error codes the C ABI exposes.
//!
//! Every fallible function in loraplex returns [`Result<T>`]. Messages name the thing at fault
//! (file, field, adapter, module, the numbers involved) so that a user can act on them without a
//! debugger. [`ErrorCode`] values are part of the ABI: they are never renumbered or reused.

use std::path::Path;

/// Stable error codes (C: `lpx_error_code`). Explicit values; never reused.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A caller-supplied argument is invalid (includes NULL pointers and bad sampling values).
    InvalidArgument = 1,
    /// Unknown model or adapter name.
    NotFound = 2,
    /// The base model could not be loaded (bad config, missing tensor, unsupported dtype...).
    InvalidModel = 3,
    /// An adapter was refused (bad format, shape mismatch, unsupported feature...).
    InvalidAdapter = 4,
    /// The host adapter cache is full of adapters used by active requests (HTTP 429).
    Capacity = 5,
    /// The request queue is full.
    QueueFull = 6,
    /// An I/O error (file missing, unreadable).
    Io = 7,
    /// A device (accelerator) error.
    Device = 8,
    /// The requested feature is not compiled in or not supported.
    Unsupported = 9,
    /// The request was cancelled.
    Cancelled = 10,
    /// The engine's worker failed; the engine no longer serves.
    EngineFailed = 11,
    /// A panic was caught at the API boundary.
    Panic = 12,
    /// A bug in loraplex.
    Internal = 13,
}

/// The loraplex error: a code plus a message that names what is at fault, and for a refusal
/// under load (QUEUE_FULL, CAPACITY) the limit that was hit and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: ErrorCode,
    message: String,
    retry: Option<Retry>,
}

/// Which limit refused a request, and an estimate of when it will have room again (from the
/// engine's recent completion rate and the queue ahead; see `Engine::submit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The configuration limit that was hit (`"max_queue"`, `"max_cpu_loras"`, ...).
    pub limit: &'static str,
    /// Suggested wait before retrying (at least one second).
    pub after: std::time::Duration,
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry: None,
        }
    }
    /// The same error marked as a refusal under load: `retry` names the limit and the wait.
    pub fn with_retry(self, retry: Retry) -> Self {
        Self {
            retry: Some(retry),
            ..self
        }
    }
    /// For a refusal under load: the limit hit and the suggested wait.
    pub fn retry(&self) -> Option<Retry> {
        self.retry
    }
    /// The stable code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// `INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    /// `INVALID_MODEL`.
    pub fn invalid_model(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidModel, message)
    }
    /// `INVALID_ADAPTER`.
    pub fn invalid_adapter(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidAdapter, message)
    }
    /// `UNSUPPORTED`.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }
    /// `DEVICE`: the accelerator or its driver failed or is missing (the message names which).
    pub fn device(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Device, message)
    }
    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// `IO`, naming the path and the OS error.
    pub fn io(path: &Path, err: std::io::Error) -> Self {
        Self::new(ErrorCode::Io, format!("{}: {err}", path.display()))
    }
    /// The same error with `prefix: ` put before its message (keeps the code).
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        Self {
            message: format!("{prefix}: {}", self.message),
            ..self
        }
    }
}

/// Adds context to any `Result<T, Error>`.
pub trait ResultExt<T> {
    /// Prefix the error message with `prefix` (evaluated only on error).
    fn with_context<D: std::fmt::Display>(self, prefix: impl FnOnce() -> D) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn with_context<D: std::fmt::Display>(self, prefix: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| e.context(prefix()))
    }
}
