//! A multi-layer perceptron with ReLU, `inputs -> hidden... -> classes`.
//! Parameters `fc{i}.weight` ([out, in], as torch) and `fc{i}.bias`, with
//! torch's nn.Linear initialisation.

use anyhow::Result;
use candle_core::{Tensor, Var};

use super::ops::f32_slice;
use super::params::{Init, Params};

pub struct Mlp {
    pub params: Params,
    layers: Vec<(Var, Var)>,
}

impl Mlp {
    /// `sizes` = [inputs, hidden..., outputs].
    pub fn new(sizes: &[usize], mut params: Params) -> Result<Self> {
        let mut layers = vec![];
        for (i, w) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (w[0], w[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let weight = params.add(
                &format!("fc{i}.weight"),
                &[fan_out, fan_in],
                Init::Uniform(bound),
            )?;
            let bias = params.add(&format!("fc{i}.bias"), &[fan_out], Init::Uniform(bound))?;
            layers.push((weight, bias));
        }
        Ok(Self { params, layers })
    }

    fn linear(x: &Tensor, (w, b): &(Var, Var)) -> Result<Tensor> {
        Ok(x.matmul(&w.as_tensor().t()?)?
            .broadcast_add(b.as_tensor())?)
    }

    /// Logits `[B, classes]`; with `hidden = Some(..)` also collects the
    /// post-ReLU activations of every hidden layer.
    pub fn forward_collect(
        &self,
        x: &Tensor,
        mut hidden: Option<&mut Vec<Tensor>>,
    ) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            h = Self::linear(&h, layer)?;
            if i < last {
                h = h.relu()?;
                if let Some(out) = hidden.as_deref_mut() {
                    out.push(h.clone());
                }
            }
        }
        Ok(h)
    }
}

/// `max(z + b, 0)` row-wise, one pass (forward of a hidden layer).
struct BiasRelu;

impl candle_core::CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let z = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        let mut h = Vec::with_capacity(z.len());
        for row in z.chunks_exact(b.len()) {
            h.extend(row.iter().zip(b).map(|(z, b)| (z + b).max(0.0)));
        }
        Ok((candle_core::CpuStorage::F32(h), l1.shape().clone()))
    }
}

/// The backward of bias + ReLU: `dz = dh * (h > 0)` and the column sums of
/// `dz` (the bias gradient), packed as `[B + 1, H]`.
struct ReluBwd;

impl candle_core::CustomOp2 for ReluBwd {
    fn name(&self) -> &'static str {
        "relu-bwd"
    }
    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let dh = f32_slice(s1, l1, self.name())?;
        let h = f32_slice(s2, l2, self.name())?;
        let (rows, cols) = l1.shape().dims2()?;
        let mut out = vec![0f32; (rows + 1) * cols];
        let (dz, db) = out.split_at_mut(rows * cols);
        super::kernels::relu_bwd_rows(dz, dh, h, db);
        Ok((
            candle_core::CpuStorage::F32(out),
            candle_core::Shape::from((rows + 1, cols)),
        ))
    }
}

impl Mlp {
    /// Whether the hand-written CPU backward applies.
    pub fn manual_backward(x: &Tensor) -> bool {
        x.device().is_cpu() && x.dtype() == candle_core::DType::F32
    }

    /// Mean cross-entropy of a batch and the gradients of every parameter,
    /// with a hand-written backward: two matrix products per layer (no
    /// gradient for the input), and one pass each for bias + ReLU and its
    /// backward. Agrees with autograd to f32 rounding (tested).
    pub fn loss_and_grads(
        &self,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, candle_core::backprop::GradStore)> {
        let n_layers = self.layers.len();
        // Forward, keeping each layer's input.
        let mut inputs = vec![x.contiguous()?];
        for (w, b) in &self.layers[..n_layers - 1] {
            let z = inputs.last().unwrap().matmul(&w.as_tensor().t()?)?;
            inputs.push(z.apply_op2_no_bwd(b.as_tensor(), &BiasRelu)?);
        }
        let (w_out, b_out) = &self.layers[n_layers - 1];
        let logits = inputs.last().unwrap().matmul(&w_out.as_tensor().t()?)?;
        // Softmax cross-entropy and its gradient on the host (B x classes).
        let (rows, classes) = logits.dims2()?;
        let lv: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let bv: Vec<f32> = b_out.as_tensor().to_vec1()?;
        let yv: Vec<u32> = y.to_vec1()?;
        let mut dl = vec![0f32; rows * classes];
        let mut loss = 0f64;
        let inv = 1.0 / rows as f32;
        for (r, (row, drow)) in lv
            .chunks_exact(classes)
            .zip(dl.chunks_exact_mut(classes))
            .enumerate()
        {
            let max = row
                .iter()
                .zip(&bv)
                .map(|(l, b)| l + b)
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for ((d, l), b) in drow.iter_mut().zip(row).zip(&bv) {
                *d = (l + b - max).exp();
                sum += *d;
            }
            let t = yv[r] as usize;
            if t >= classes {
                anyhow::bail!("label {t} out of range for {classes} classes");
            }
            loss += (sum.ln() - (row[t] + bv[t] - max)) as f64;
            for d in drow.iter_mut() {
                *d = *d / sum * inv;
            }
            drow[t] -= inv;
        }
        loss /= rows as f64;
        let mut db = vec![0f32; classes];
        for drow in dl.chunks_exact(classes) {
            for (a, d) in db.iter_mut().zip(drow) {
                *a += d;
            }
        }
        let mut grads = candle_core::backprop::GradStore::default();
        let mut d = Tensor::from_vec(dl, (rows, classes), x.device())?;
        grads.insert(
            b_out.as_tensor(),
            Tensor::from_vec(db, classes, x.device())?,
        );
        // Backward, last layer first: d is the gradient of layer i's output.
        for i in (0..n_layers).rev() {
            let (w, _) = &self.layers[i];
            grads.insert(w.as_tensor(), d.t()?.matmul(&inputs[i])?);
            if i == 0 {
                break;
            }
            // Through layer i's weights, then layer i-1's ReLU and bias.
            let packed = d
                .matmul(w.as_tensor())?
                .apply_op2_no_bwd(&inputs[i], &ReluBwd)?;
            grads.insert(self.layers[i - 1].1.as_tensor(), packed.get(rows)?);
            d = packed.narrow(0, 0, rows)?;
        }
        Ok((loss, grads))
    }
}
