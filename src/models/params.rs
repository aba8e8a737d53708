//! A named parameter store with seeded initialisation.
//!
//! Candle's CPU RNG cannot be seeded, so initial values are drawn on the host
//! from the project's [`Rng`], in creation order, and then moved to the
//! device: the same seed gives the same weights on every device.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device, Tensor, Var};

use crate::rng::Rng;

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
pub enum Init {
    /// U(-bound, bound), torch's nn.Linear default with bound = 1/sqrt(fan_in).
    Uniform(f64),
    /// N(0, std^2).
    Normal(f64),
    Zeros,
    Ones,
}

/// Parameters by name. Iteration is in sorted name order.
pub struct Params {
    vars: BTreeMap<String, Var>,
    /// State that is saved but not optimized (BatchNorm's running
    /// statistics), torch's "buffers".
    buffers: BTreeMap<String, Var>,
    rng: Rng,
    dtype: DType,
    device: Device,
}

impl Params {
    pub fn new(seed: u64, dtype: DType, device: &Device) -> Self {
        Self {
            vars: BTreeMap::new(),
            buffers: BTreeMap::new(),
            rng: Rng::derive(seed, "init"),
            dtype,
            device: device.clone(),
        }
    }

    /// Creates a parameter; its values are the next draws of the init stream.
    pub fn add(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        if self.vars.contains_key(name) {
            bail!("parameter `{name}` defined twice");
        }
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Uniform(b) => (0..n).map(|_| self.rng.uniform_in(-b, b) as f32).collect(),
            Init::Normal(s) => (0..n).map(|_| (self.rng.normal() * s) as f32).collect(),
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
        };
        let t = Tensor::from_vec(values, shape, &Device::Cpu)?
            .to_dtype(self.dtype)?
            .to_device(&self.device)?;
        let var = Var::from_tensor(&t)?;
        self.vars.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// Adds a buffer: saved in the checkpoint, never given to an optimizer,
    /// not counted as a parameter. Draws nothing from the init stream.
    pub fn add_buffer(&mut self, name: &str, value: Tensor) -> Result<Var> {
        if self.vars.contains_key(name) || self.buffers.contains_key(name) {
            bail!("`{name}` defined twice");
        }
        let var = Var::from_tensor(&value.to_device(&self.device)?)?;
        self.buffers.insert(name.to_string(), var.clone());
        Ok(var)
    }

    /// (name, buffer) pairs in sorted name order.
    pub fn buffers(&self) -> Vec<(String, Var)> {
        self.buffers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// (name, variable) pairs in sorted name order.
    pub fn named(&self) -> Vec<(String, Var)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Var> {
        self.vars.get(name)
    }

    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Snapshot of every tensor (detached copies), for saving or restoring.
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.vars
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
            .collect()
    }

    /// Sets every parameter from a snapshot with the same names and shapes.
    pub fn restore(&self, snap: &BTreeMap<String, Tensor>) -> Result<()> {
        for (k, v) in &self.vars {
            let t = snap
                .get(k)
                .with_context(|| format!("snapshot lacks `{k}`"))?;
            v.set(t)?;
        }
        Ok(())
    }

    /// The parameters and buffers as a safetensors file (torch's names), with
    /// `metadata` (string pairs) in its header. The same parameters and
    /// metadata give the same bytes: the header's keys are sorted (the
    /// `safetensors` crate writes its metadata map in hash order).
    pub fn safetensors_bytes(&self, metadata: BTreeMap<String, String>) -> Result<Vec<u8>> {
        let tensors: Vec<(&str, &Tensor)> = self
            .vars
            .iter()
            .chain(&self.buffers)
            .map(|(k, v)| (k.as_str(), v.as_tensor()))
            .collect();
        let bytes = safetensors::serialize(tensors, Some(metadata.into_iter().collect()))
            .map_err(|e| anyhow::anyhow!("serialising the checkpoint: {e}"))?;
        sorted_header(bytes)
    }
}

/// A safetensors file with its JSON header rewritten with sorted keys
/// (`serde_json::Value` keeps objects sorted), padded with spaces to the
/// same length, so the tensors' offsets do not move.
fn sorted_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let n = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])?;
    let sorted = serde_json::to_vec(&header)?;
    anyhow::ensure!(
        sorted.len() <= n,
        "serialising the checkpoint: the sorted header is longer ({} > {n} bytes)",
        sorted.len()
    );
    bytes[8..8 + sorted.len()].copy_from_slice(&sorted);
    bytes[8 + sorted.len()..8 + n].fill(b' ');
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two serialisations of the same parameters and metadata are the same
    /// bytes (before sorting, the metadata map came out in hash order, which
    /// differs between maps), and the file still loads, tensors and
    /// metadata intact.
    #[test]
    fn checkpoint_bytes_do_not_depend_on_hash_order() -> Result<()> {
        let mut p = Params::new(3, DType::F32, &Device::Cpu);
        p.add("b.weight", &[3, 4], Init::Uniform(0.5))?;
        p.add("a.bias", &[4], Init::Uniform(0.5))?;
        let meta: BTreeMap<String, String> = (0..40)
            .map(|i| (format!("key{i}"), format!("value \"{i}\"")))
            .collect();
        let first = p.safetensors_bytes(meta.clone())?;
        for _ in 0..5 {
            assert!(p.safetensors_bytes(meta.clone())? == first);
        }
        let (n, read) = safetensors::SafeTensors::read_metadata(&first)?;
        assert_eq!(n % 8, 0, "the header keeps its 8-byte alignment");
        let read = read.metadata().clone().expect("metadata");
        assert_eq!(read.into_iter().collect::<BTreeMap<_, _>>(), meta);
        let loaded = candle_core::safetensors::load_buffer(&first, &Device::Cpu)?;
        for (name, var) in &p.vars {
            let (a, b) = (
                loaded[name].to_vec2::<f32>(),
                var.as_tensor().to_vec2::<f32>(),
            );
            match (a, b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                _ => assert_eq!(
                    loaded[name].to_vec1::<f32>()?,
                    var.as_tensor().to_vec1::<f32>()?
                ),
            }
        }
        Ok(())
    }
}
