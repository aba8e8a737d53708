//! A multi-layer perceptron with ReLU, `inputs -> hidden... -> classes`.
//! Parameters `fc{i}.weight` ([out, in], as torch) and `fc{i}.bias`, with
//! torch's nn.Linear initialisation.

use anyhow::Result;
use candle_core::{Tensor, Var};

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
