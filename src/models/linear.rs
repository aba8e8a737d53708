//! The matrix products of a linear layer (`y = b + x · wᵀ`, `w` as torch's
//! `[fout, fin]`) on row-major f32 slices, shared by the hand-written
//! training steps of the CNN and the Transformer. Each caller sets the
//! output's starting value (the bias, a residual) and reduces the bias
//! gradient in its own order; these are only the gemm calls, so both models
//! keep their bits.

use super::matmul::{View, matmul, parallelism};

/// `out[rows, fout] += x[rows, fin] · wᵀ`.
pub(crate) fn add_x_wt(out: &mut [f32], x: &[f32], w: &[f32], fout: usize) {
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(out.len() == rows * fout && x.len() == rows * fin && w.len() == fout * fin);
    // SAFETY: shapes checked above; `out` is exclusively borrowed.
    unsafe {
        matmul(
            rows,
            fout,
            fin,
            out.as_mut_ptr(),
            fout,
            true,
            View::rows(x, fin),
            View::rows(w, fin).t(),
            parallelism(),
        )
    }
}

/// The weight gradient `gw = doutᵀ · x` (overwritten) and, when asked, the
/// input gradient `dx = dout · w` (overwritten), from `dout [rows, fout]`
/// and the layer's input `x [rows, fin]`.
pub(crate) fn grads(
    dout: &[f32],
    x: &[f32],
    w: &[f32],
    fout: usize,
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let fin = w.len() / fout;
    let rows = x.len() / fin;
    assert!(dout.len() == rows * fout && x.len() == rows * fin && gw.len() == fout * fin);
    let par = parallelism();
    // SAFETY: shapes checked above; the outputs are exclusive borrows.
    unsafe {
        matmul(
            fout,
            fin,
            rows,
            gw.as_mut_ptr(),
            fin,
            false,
            View::rows(dout, fout).t(),
            View::rows(x, fin),
            par,
        );
    }
    if let Some(dx) = dx {
        assert!(dx.len() == rows * fin);
        // SAFETY: as above.
        unsafe {
            matmul(
                rows,
                fin,
                fout,
                dx.as_mut_ptr(),
                fin,
                false,
                View::rows(dout, fout),
                View::rows(w, fin),
                par,
            )
        }
    }
}
