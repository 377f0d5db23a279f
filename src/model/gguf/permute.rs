//! llama.cpp's q/k row permutation and its inverse.
//!
//! `convert_hf_to_gguf.py` stores `q_proj`/`k_proj` weights with the rows of each head
//! reordered from HF's "rotate half" RoPE layout to ggml's interleaved-pair layout:
//! `w.reshape(n_head, 2, rows_per_head / 2, in).swapaxes(1, 2).reshape(rows, in)`.
//! Row `h*rph + i*2 + j` of the GGUF matrix is row `h*rph + j*(rph/2) + i` of the HF matrix.

use crate::error::{Error, Result};

fn check(rows: usize, cols: usize, n_head: usize, len: usize) -> Result<usize> {
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::invalid_model(format!(
            "q/k permutation: matrix has {len} elements, expected {rows} x {cols}"
        )));
    }
    heads(rows, n_head)
}

/// Rows per head; errors when `rows` is not `n_head` heads of an even size.
fn heads(rows: usize, n_head: usize) -> Result<usize> {
    if n_head == 0 || !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(Error::invalid_model(format!(
            "q/k permutation: {rows} rows cannot be split into {n_head} heads of an even size"
        )));
    }
    Ok(rows / n_head)
}

/// The one row map: `(gguf_row, hf_row)` for every row of a `rows`-row q/k matrix with
/// `n_head` heads (errors as [`permute_qk`]).
fn row_pairs(rows: usize, n_head: usize) -> Result<impl Iterator<Item = (usize, usize)>> {
    let rph = heads(rows, n_head)?;
    let half = rph / 2;
    Ok((0..n_head).flat_map(move |h| {
        (0..half)
            .flat_map(move |i| (0..2).map(move |j| (h * rph + i * 2 + j, h * rph + j * half + i)))
    }))
}

/// For each HF row, the GGUF row holding it (`src[hf_row] = gguf_row`): the inverse
/// permutation as a row map, for matrices moved as whole rows (quantized blocks).
/// Errors (INVALID_MODEL) when `rows` is not `n_head` × an even head size.
pub fn unpermute_rows(rows: usize, n_head: usize) -> Result<Vec<usize>> {
    let mut src = vec![0usize; rows];
    for (g, hf) in row_pairs(rows, n_head)? {
        src[hf] = g;
    }
    Ok(src)
}

/// Maps `f(hf_row) -> gguf_row` over all rows; `forward` selects the direction.
fn apply(w: &[f32], rows: usize, cols: usize, n_head: usize, forward: bool) -> Result<Vec<f32>> {
    check(rows, cols, n_head, w.len())?;
    let mut out = vec![0f32; w.len()];
    for (gguf_row, hf_row) in row_pairs(rows, n_head)? {
        let (dst, src) = if forward {
            (gguf_row, hf_row)
        } else {
            (hf_row, gguf_row)
        };
        out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
    }
    Ok(out)
}

/// llama.cpp's permutation (HF layout → GGUF layout) of a row-major `[rows, cols]` matrix with
/// `n_head` heads (`num_heads` for q, `num_kv_heads` for k). Returns a new matrix.
/// Errors (INVALID_MODEL) when `rows` is not `n_head` × an even head size or `w` has the wrong
/// length.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    apply(w, rows, cols, n_head, true)
}

/// The inverse of [`permute_qk`] (GGUF layout → HF layout); same arguments and errors.
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Result<Vec<f32>> {
    apply(w, rows, cols, n_head, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_reshape_swapaxes() {
        // 2 heads, 4 rows each, 1 column: HF rows [0..8). numpy:
        // np.arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8) == [0, 2, 1, 3, 4, 6, 5, 7]
        let w: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let p = permute_qk(&w, 8, 1, 2).unwrap();
        assert_eq!(p, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_qk(&p, 8, 1, 2).unwrap(), w);
    }

    #[test]
    fn rejects_odd_heads() {
        assert!(permute_qk(&[0.0; 6], 6, 1, 2).is_err());
        assert!(permute_qk(&[0.0; 8], 8, 2, 2).is_err());
    }
}
