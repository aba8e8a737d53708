//! Fused optimizer steps on CUDA: the kernels generated from the kernel
//! table (`kernels.rs`: one thread per element, one pass over p, g and the
//! state), compiled at run time by NVRTC and launched through Candle's
//! in-place custom op on the parameter. The state stays in device tensors,
//! which the kernel updates in place.
//!
//! The launch (`kernels::plan`: kernel name, state pointers, scalars) is
//! generated from the same table entry as the kernel's signature, and is
//! compiled on every build, so that the unit test below can run the same
//! kernels, compiled as C++ for the host, against the CPU kernels without
//! a GPU.

#[cfg(feature = "cuda")]
pub(crate) use device::{applies, step};

#[cfg(feature = "cuda")]
mod device {
    use anyhow::{Result, bail};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, InplaceOp2, Layout, Storage, Tensor};

    use crate::optim::kernel_gen::{Arg, KernelReg, Plan};
    use crate::optim::kernels::{SOURCE, plan};
    use crate::optim::rule::Scalars;

    const MODULE: &str = "sparsity_lab_fused_optim";

    /// Whether a parameter takes the fused CUDA path.
    pub(crate) fn applies(p: &Tensor) -> bool {
        p.device().is_cuda() && matches!(p.dtype(), DType::F32 | DType::F64)
    }

    /// PTX for the kernels, compiled once per process, without contracting
    /// multiply-adds (as the CPU kernels).
    pub(super) fn ptx() -> Result<&'static str> {
        static PTX: std::sync::OnceLock<std::result::Result<String, String>> =
            std::sync::OnceLock::new();
        let r = PTX.get_or_init(|| {
            let opts = candle_core::cuda_backend::cudarc::nvrtc::CompileOptions {
                fmad: Some(false),
                ..Default::default()
            };
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts)
                .map(|p| p.to_src())
                .map_err(|e| format!("compiling the fused optimizer kernels: {e:?}"))
        });
        match r {
            Ok(s) => Ok(s.as_str()),
            Err(e) => bail!("{e}"),
        }
    }

    struct Step<'a> {
        plan: Plan,
        state: &'a [Tensor],
    }

    fn launch<T: CudaDType + candle_core::cuda_backend::cudarc::driver::DeviceRepr>(
        op: &Step<'_>,
        p: &mut CudaStorage,
        lp: &Layout,
        g: &CudaStorage,
        lg: &Layout,
        cast: impl Fn(f64) -> T,
        suffix: &str,
    ) -> candle_core::Result<()> {
        let n = lp.shape().elem_count();
        let contiguous = |l: &Layout| l.is_contiguous() && l.start_offset() == 0;
        if !contiguous(lp) || !contiguous(lg) || lg.shape().elem_count() != n {
            candle_core::bail!("fused CUDA step: p and g must be contiguous, same size");
        }
        let dev = p.device().clone();
        let ptx = ptx().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let func =
            dev.get_or_load_custom_func(&format!("{}_{suffix}", op.plan.kernel), MODULE, ptx)?;
        // Read guards on the state tensors: the kernel writes through their
        // device pointers (nothing else touches them during the step).
        let guards: Vec<_> = op.state.iter().map(|t| t.storage_and_layout()).collect();
        let mut slices = vec![];
        for (s, l) in &guards {
            let Storage::Cuda(cs) = &**s else {
                candle_core::bail!("fused CUDA step: state not on the GPU")
            };
            if !contiguous(l) || l.shape().elem_count() != n {
                candle_core::bail!("fused CUDA step: state must be contiguous, same size");
            }
            slices.push(cs.as_cuda_slice::<T>()?);
        }
        if op.plan.state.iter().flatten().count() != slices.len() {
            candle_core::bail!(
                "fused CUDA step: {} takes {} state tensors, got {}",
                op.plan.kernel,
                op.plan.state.iter().flatten().count(),
                slices.len()
            );
        }
        let scalars: Vec<Arg> = op.plan.args.clone();
        let reals: Vec<T> = scalars
            .iter()
            .map(|a| match a {
                Arg::Real(x) => cast(*x),
                Arg::Int(_) => cast(0.0),
            })
            .collect();
        let ints: Vec<i32> = scalars
            .iter()
            .map(|a| match a {
                Arg::Int(i) => *i,
                Arg::Real(_) => 0,
            })
            .collect();
        let null = 0u64;
        let n64 = n as u64;
        let gs = g.as_cuda_slice::<T>()?;
        let ps = p.as_cuda_slice_mut::<T>()?;
        let mut b = func.builder();
        b.arg(&n64);
        b.arg(ps);
        b.arg(gs);
        for slot in &op.plan.state {
            match slot {
                Some(i) => {
                    b.arg(slices[*i]);
                }
                None => {
                    b.arg(&null);
                }
            }
        }
        for (i, a) in scalars.iter().enumerate() {
            match a {
                Arg::Real(_) => b.arg(&reals[i]),
                Arg::Int(_) => b.arg(&ints[i]),
            };
        }
        let cfg = LaunchConfig::for_num_elems(n as u32);
        // SAFETY: the argument list matches the kernel's signature (both
        // generated from the same table entry, and checked against the
        // kernels by the host test), and every pointer covers n elements.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }

    impl InplaceOp2 for Step<'_> {
        fn name(&self) -> &'static str {
            "fused-optimizer-step-cuda"
        }

        fn cpu_fwd(
            &self,
            _: &mut candle_core::CpuStorage,
            _: &Layout,
            _: &candle_core::CpuStorage,
            _: &Layout,
        ) -> candle_core::Result<()> {
            candle_core::bail!("the fused CUDA step runs on CUDA tensors only")
        }

        fn cuda_fwd(
            &self,
            p: &mut CudaStorage,
            lp: &Layout,
            g: &CudaStorage,
            lg: &Layout,
        ) -> candle_core::Result<()> {
            match p.dtype() {
                DType::F32 => launch::<f32>(self, p, lp, g, lg, |x| x as f32, "f32"),
                DType::F64 => launch::<f64>(self, p, lp, g, lg, |x| x, "f64"),
                d => candle_core::bail!("fused CUDA step: no kernel for {d:?}"),
            }
        }
    }

    /// Updates `p` and its `state` tensors in place on the GPU.
    pub(crate) fn step(
        p: &Tensor,
        g: &Tensor,
        sc: Scalars,
        reg: KernelReg,
        state: &[Tensor],
    ) -> Result<()> {
        let g = g.contiguous()?;
        let g = if g.layout().start_offset() != 0 {
            g.copy()?
        } else {
            g
        };
        let op = Step {
            plan: plan(&sc, &reg),
            state,
        };
        p.inplace_op2(&g, &op)?;
        Ok(())
    }
}

/// Needs the CUDA toolkit's NVRTC library, not a GPU.
#[cfg(all(test, feature = "cuda"))]
mod nvrtc_tests {
    #[test]
    fn kernels_compile_with_nvrtc_and_export_every_entry() {
        let ptx = super::device::ptx().unwrap();
        for k in crate::optim::kernels::NAMES {
            for t in ["f32", "f64"] {
                assert!(ptx.contains(&format!(".entry {k}_{t}(")), "{k}_{t} missing");
            }
        }
        // No contracted multiply-adds, as on the CPU.
        assert!(!ptx.contains("fma.rn.f32") && !ptx.contains("fma.rn.f64"));
    }
}

#[cfg(test)]
mod tests {
    //! The generated CUDA kernels compiled as C++ for the host
    //! (`fused_host.cpp`) and driven by the generated `plan`, against the optimizer's CPU path, bit for bit:
    //! the same formulas in the same order, without contracted
    //! multiply-adds. This checks the kernels' formulas and every argument
    //! list without a GPU; what it cannot check is the launch itself.

    use std::io::Write;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    use candle_core::backprop::GradStore;
    use candle_core::{DType, Device, Tensor, Var};

    use crate::optim::kernel_gen::{Arg, KernelReg, Plan};
    use crate::optim::kernels::{SOURCE, plan};
    use crate::optim::rule::{ParamState, Rule};
    use crate::optim::{OptimizerConfig, OptimizerKind};
    use crate::rng::Rng;

    /// Compiles the host harness with the generated kernels (written to
    /// `fused.cu` next to the executable); None (with a SKIPPED line)
    /// without g++.
    fn harness() -> Option<PathBuf> {
        let dir =
            std::env::temp_dir().join(format!("sparsity-lab-cuda-host-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fused.cu"), SOURCE).unwrap();
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/optim");
        let exe = dir.join("fused_host");
        let out = Command::new("g++")
            .args(["-std=c++17", "-O1", "-ffp-contract=off", "-I"])
            .arg(&dir)
            .arg(here.join("fused_host.cpp"))
            .arg("-o")
            .arg(&exe)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(exe),
            Ok(o) => panic!(
                "g++ failed on fused_host.cpp:\n{}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => {
                // To the stderr handle itself, which the test harness does not
                // capture (it captures print! and eprint!), so the skip shows.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no g++ here, so the CUDA kernels were not checked on the host"
                );
                None
            }
        }
    }

    /// One kernel run in the harness: returns p and the state.
    fn run_host(
        exe: &PathBuf,
        plan: &Plan,
        suffix: &str,
        p: &[f64],
        g: &[f64],
        state: &[Vec<f64>],
        f32_: bool,
    ) -> (Vec<f64>, Vec<Vec<f64>>) {
        let bits = |v: &[f64]| -> String {
            v.iter()
                .map(|x| {
                    if f32_ {
                        format!("{:x}", (*x as f32).to_bits())
                    } else {
                        format!("{:x}", x.to_bits())
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut input = format!("{}_{suffix} {} {}\n", plan.kernel, p.len(), plan.args.len());
        for a in &plan.args {
            match a {
                Arg::Real(x) => input.push_str(&format!("{x:e} ")),
                Arg::Int(i) => input.push_str(&format!("{i} ")),
            }
        }
        input.push('\n');
        input.push_str(&format!("{} ", plan.state.len()));
        for slot in &plan.state {
            input.push_str(if slot.is_some() { "1 " } else { "0 " });
        }
        input.push('\n');
        input.push_str(&bits(p));
        input.push('\n');
        input.push_str(&bits(g));
        input.push('\n');
        for i in plan.state.iter().flatten() {
            input.push_str(&bits(&state[*i]));
            input.push('\n');
        }
        let mut child = Command::new(exe)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "harness: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines().map(|l| {
            l.split_whitespace()
                .map(|h| {
                    if f32_ {
                        f32::from_bits(u32::from_str_radix(h, 16).unwrap()) as f64
                    } else {
                        f64::from_bits(u64::from_str_radix(h, 16).unwrap())
                    }
                })
                .collect::<Vec<f64>>()
        });
        let new_p = lines.next().unwrap();
        let mut new_state = state.to_vec();
        for i in plan.state.iter().flatten() {
            new_state[*i] = lines.next().unwrap();
        }
        (new_p, new_state)
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn cuda_kernels_on_the_host_equal_the_cpu_path_bit_for_bit() {
        let Some(exe) = harness() else { return };
        let regs: [&[(&str, &str)]; 6] = [
            &[],
            &[("weight_decay", "0.1")],
            &[("weight_decay", "0.1"), ("decoupled_weight_decay", "true")],
            &[("l1", "0.01")],
            &[("l1_prox", "0.5")],
            &[
                ("l1_prox", "0.5"),
                ("weight_decay", "0.1"),
                ("decoupled_weight_decay", "true"),
            ],
        ];
        let n = 37;
        for kind in OptimizerKind::ALL {
            // The defaults, the registry's settings that switch every state
            // buffer on, and the combinations in between where they matter.
            let full = kind.info().full_state;
            let extras: Vec<&[(&str, &str)]> = match kind {
                OptimizerKind::Sgd => vec![&[], full, &[("momentum", "0.9"), ("dampening", "0.3")]],
                OptimizerKind::Rmsprop => {
                    vec![&[], &[("centered", "true")], &[("momentum", "0.5")], full]
                }
                OptimizerKind::Adagrad => {
                    vec![&[("lr_decay", "0.1"), ("initial_accumulator_value", "0.2")]]
                }
                _ if full.is_empty() => vec![&[]],
                _ => vec![&[], full],
            };
            for extra in extras {
                for reg in regs {
                    // Optimizers whose decay is always decoupled take no flag.
                    let pairs = extra
                        .iter()
                        .chain(reg.iter())
                        .chain(&[("lr", "0.01")])
                        .filter(|(k, _)| kind.accepts(k))
                        .copied();
                    let cfg = OptimizerConfig::from_text(kind.name(), pairs).unwrap();
                    for dtype in [DType::F32, DType::F64] {
                        check(&exe, &cfg, dtype, n);
                    }
                }
            }
        }
    }

    /// Each kernel takes one state pointer per buffer the registry counts,
    /// and under `full_state` all of them are present.
    #[test]
    fn kernels_take_the_registrys_state_buffers() {
        for kind in OptimizerKind::ALL {
            let info = kind.info();
            let cfg =
                OptimizerConfig::from_text(kind.name(), info.full_state.iter().copied()).unwrap();
            let settings = cfg.settings().unwrap();
            let mut st = ParamState {
                t: 1,
                mu_product: 1.0,
            };
            let sc = Rule::new(settings.rule).scalars(cfg.lr(), &mut st, DType::F32);
            let plan = plan(&sc, &KernelReg::NONE);
            let want: Vec<_> = (0..info.state_buffers).map(Some).collect();
            assert_eq!(plan.state, want, "{kind}");
        }
    }

    /// Eight steps (RAdam's rectification starts at step 6) of the public
    /// optimizer and of the host kernels, compared after every step.
    fn check(exe: &PathBuf, cfg: &OptimizerConfig, dtype: DType, n: usize) {
        let mut rng = Rng::new(5);
        let mut draw = |scale: f64| -> Vec<f64> {
            let mut v: Vec<f64> = (0..n).map(|_| rng.normal() * scale).collect();
            v[0] = 0.0; // sign(0) in the L1 blocks
            v
        };
        let p0 = draw(1.0);
        let tensor = |v: &[f64]| {
            Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        let var = Var::from_tensor(&tensor(&p0)).unwrap();
        let mut opt = crate::optim::build(cfg, vec![("p".into(), var.clone())]).unwrap();

        let settings = cfg.settings().unwrap();
        let rule = Rule::new(settings.rule);
        let reg = KernelReg {
            decay: settings.reg.decay,
            l1: settings.reg.l1,
            lr: settings.lr,
        };
        let mut st = ParamState {
            t: 0,
            mu_product: 1.0,
        };
        let mut p = values(&tensor(&p0));
        let mut state: Vec<Vec<f64>> = rule
            .init(&tensor(&p0))
            .unwrap()
            .iter()
            .map(values)
            .collect();
        let suffix = if dtype == DType::F32 { "f32" } else { "f64" };
        for step in 1..=8 {
            let g = values(&tensor(&draw(0.3)));
            let mut store = GradStore::default();
            store.insert(var.as_tensor(), tensor(&g));
            opt.step(&store).unwrap();

            st.t += 1;
            let sc = rule.scalars(cfg.lr(), &mut st, dtype);
            let plan = plan(&sc, &reg);
            (p, state) = run_host(exe, &plan, suffix, &p, &g, &state, dtype == DType::F32);

            let same = |a: &[f64], b: &[f64]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
            };
            assert!(
                same(&p, &values(var.as_tensor())),
                "{} {dtype:?} step {step}: parameters differ",
                cfg.short()
            );
            // The state tensors; then come step (and NAdam's mu_product).
            for (i, (name, t)) in opt.state("p").unwrap().iter().take(state.len()).enumerate() {
                assert!(
                    same(&state[i], &values(t)),
                    "{} {dtype:?} step {step}: {name} differs",
                    cfg.short()
                );
            }
        }
    }
}
