//! llama.cpp's q/k row permutation and its inverse.
//!
//! `convert_hf_to_gguf.py` stores `q_proj`/`k_proj` weights with the rows of each head
//! reordered from HF's "rotate half" RoPE layout to ggml's interleaved-pair layout:
//! `w.reshape(n_head, 2, rows_per_head / 2, in).swapaxes(1, 2).reshape(rows, in)`.
//! Row `h*rph + i*2 + j` of the GGUF matrix is row `h*rph + j*(rph/2) + i` of the HF matrix.

use crate::error::{Error, Result};

fn check(rows: usize, cols: usize, n_head: usize, len: usize) -> Result<usize> {
    if n_head == 0 || rows % n_head != 0 || (rows / n_head) % 2 != 0 {
        return Err(Error::invalid_model(format!(
            "q/k permutation: {rows} rows cannot be split into {n_head} heads of an even size"
        )));
    }
    if rows.checked_mul(cols) != Some(len) {
        return Err(Error::invalid_model(format!(
            "q/k permutation: matrix has {len} elements, expected {rows} x {cols}"
        )));
    }
    Ok(rows / n_head)
}

/// Maps `f(hf_row) -> gguf_row` over all rows; `forward` selects the direction.
fn apply(w: &[f32], rows: usize, cols: usize, n_head: usize, forward: bool) -> Result<Vec<f32>> {
    let rph = check(rows, cols, n_head, w.len())?;
    let half = rph / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let gguf_row = h * rph + i * 2 + j;
                let hf_row = h * rph + j * half + i;
                let (dst, src) = if forward {
                    (gguf_row, hf_row)
                } else {
                    (hf_row, gguf_row)
                };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
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
