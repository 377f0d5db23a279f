//! Scalar specification of every backend op (see the op docs in `backend/mod.rs`).
