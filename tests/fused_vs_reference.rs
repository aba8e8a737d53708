//! The fused in-place CPU kernels against the reference tensor path, on
//! tensors large enough to be split across threads, for every optimizer and
//! every combination of regularisation blocks. Both paths do the same
//! operations in the same order on the same scalars, so they must agree bit
//! for bit.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use sparsity_lab::optim::{self, Backend};
use sparsity_lab::rng::Rng;

fn randn(n: usize, scale: f64, rng: &mut Rng, dtype: DType) -> Tensor {
    let v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
    Tensor::from_vec(v, n, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

#[test]
fn fused_equals_reference_bit_for_bit_on_large_tensors() {
    let n = 300_001; // above the threading threshold, and odd
    // Every rule's variants with every regularisation block it takes.
    for cfg in optim::variants::every_code_path("0.01").unwrap() {
        for dtype in [DType::F32, DType::F64] {
            let mut rng = Rng::new(9);
            let init = randn(n, 1.0, &mut rng, dtype);
            let grads: Vec<Tensor> = (0..4).map(|_| randn(n, 0.3, &mut rng, dtype)).collect();
            let run = |backend| {
                let p = Var::from_tensor(&init).unwrap();
                let mut opt =
                    optim::build_with(&cfg, vec![("p".into(), p.clone())], backend).unwrap();
                for g in &grads {
                    let mut store = GradStore::default();
                    store.insert(p.as_tensor(), g.clone());
                    opt.step(&store).unwrap();
                }
                let mut out = vec![
                    p.as_tensor()
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_vec1::<f64>()
                        .unwrap(),
                ];
                for (_, s) in opt.state("p").unwrap() {
                    out.push(
                        s.flatten_all()
                            .unwrap()
                            .to_dtype(DType::F64)
                            .unwrap()
                            .to_vec1::<f64>()
                            .unwrap(),
                    );
                }
                out
            };
            let fused = run(Backend::Auto);
            let reference = run(Backend::Reference);
            assert_eq!(fused.len(), reference.len());
            for (a, b) in fused.iter().zip(&reference) {
                let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{} {dtype:?}: fused and reference differ",
                    cfg.short()
                );
            }
        }
    }
}
