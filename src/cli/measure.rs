//! `sparsity-lab measure FILE.safetensors [--json]`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;
use clap::Args;
use serde::Serialize;

use crate::bail_usage;
use crate::metrics::{self, Measures};

#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// A safetensors checkpoint (ours or PyTorch's).
    file: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Output {
    tensors: BTreeMap<String, Measures>,
    total: Measures,
    /// Conv layers' filter measures from the weights alone (no dead filters).
    #[serde(skip_serializing_if = "Option::is_none")]
    filters: Option<metrics::FilterMeasures>,
}

pub fn run(args: MeasureArgs) -> Result<()> {
    if !args.file.is_file() {
        bail_usage!(
            "measure: {} does not exist or is not a file",
            args.file.display()
        );
    }
    let file = args.file.display();
    let not_readable = |e: &dyn std::fmt::Display| {
        crate::error::usage(format!(
            "measure: {file} is not a readable safetensors file: {e}"
        ))
    };
    // The header first: a dtype that cannot be read exactly is refused
    // before any data is read.
    let readable = readable_tensors(&args.file).map_err(|e| {
        if crate::error::is_usage(&e) {
            e
        } else {
            not_readable(&e)
        }
    })?;
    let bytes = std::fs::read(&args.file).map_err(|e| not_readable(&e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| not_readable(&e))?;
    let mut named = vec![];
    for name in readable {
        let view = st.tensor(&name).map_err(|e| not_readable(&e))?;
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)
            .map_err(|e| not_readable(&format!("tensor `{name}`: {e}")))?;
        named.push((name, t));
    }
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let m = metrics::measure_tensors(&named)?;
    let filters = metrics::filter_measures(&named)?;
    if m.tensors.is_empty() {
        bail_usage!(
            "measure: {} holds no floating-point tensors",
            args.file.display()
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&Output {
                tensors: m.tensors,
                total: m.total,
                filters,
            })?
        );
        return Ok(());
    }
    println!("{}", table(&m));
    if let Some(f) = filters {
        println!("{}", f.table());
    }
    Ok(())
}

/// The names of the tensors `measure` reads, from the file's header alone:
/// the floating-point ones in F16, BF16, F32 or F64 (read exactly). Integer
/// and boolean tensors (counters, masks) are skipped, as measures are of
/// floating-point weights; any other dtype (8-, 6- and 4-bit floats, complex
/// numbers) is refused, naming the tensor.
fn readable_tensors(path: &std::path::Path) -> Result<Vec<String>> {
    use safetensors::Dtype;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| anyhow::anyhow!("shorter than a safetensors header"))?;
    let n = u64::from_le_bytes(len);
    // safetensors' own limit on the header (100 MB).
    if n > 100_000_000 {
        anyhow::bail!("its header claims {n} bytes");
    }
    let mut head = len.to_vec();
    f.take(n).read_to_end(&mut head)?;
    if head.len() as u64 != 8 + n {
        anyhow::bail!("the header is cut short");
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&head[8..]).map_err(|e| anyhow::anyhow!("its header: {e}"))?;
    let mut names = vec![];
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let dtype: Dtype = serde_json::from_value(info["dtype"].clone()).map_err(|_| {
            anyhow::anyhow!("tensor `{name}` has an unknown dtype {}", info["dtype"])
        })?;
        match dtype {
            Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64 => names.push(name),
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::U16
            | Dtype::I16
            | Dtype::U32
            | Dtype::I32
            | Dtype::U64
            | Dtype::I64 => {}
            other => bail_usage!(
                "measure: {}: tensor `{name}` has dtype {other:?}, which measure cannot read exactly; it reads F16, BF16, F32 and F64 (convert the checkpoint, e.g. with torch: t.float())",
                path.display()
            ),
        }
    }
    names.sort();
    Ok(names)
}

/// A text table: one row per tensor, then the weight, bias and total
/// groups. `<.01rms` and so on are the scale-relative fractions |w| < c *
/// RMS of each value's own tensor. A `nonfinite` column appears when any tensor holds NaN or
/// infinite values, with a note that the norms leave them out; an undefined
/// measure (no finite values) prints as `-`.
pub fn table(m: &metrics::ModelMeasures) -> String {
    let mut rows = vec![];
    for (k, v) in &m.tensors {
        rows.push((k.clone(), v));
    }
    rows.push(("[weights]".into(), &m.weights));
    rows.push(("[biases]".into(), &m.biases));
    rows.push(("[total]".into(), &m.total));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(6).max(6);
    let bad = m.total.nonfinite;
    let mut out = format!(
        "{:<width$} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>9} {:>6} {:>6}{}\n",
        "tensor",
        "numel",
        "zero",
        "<1e-4",
        "<1e-3",
        "<1e-2",
        "<1%max",
        "<.01rms",
        "<.03rms",
        "<.1rms",
        "L1",
        "L2",
        "hoyer",
        "gini",
        if bad > 0 { "  nonfinite" } else { "" }
    );
    let num = |v: f64, w: usize, p: usize| {
        if v.is_nan() {
            format!("{:>w$}", "-")
        } else {
            format!("{v:>w$.p$}")
        }
    };
    for (name, v) in rows {
        if v.numel == 0 {
            continue;
        }
        out += &format!(
            "{:<width$} {:>9} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {:>7.4} {} {} {} {} {} {} {}{}\n",
            name,
            v.numel,
            v.exact_zero_frac,
            v.near("1e-4"),
            v.near("1e-3"),
            v.near("1e-2"),
            v.rel_near_zero_frac,
            num(v.scale_rel("0.01"), 7, 4),
            num(v.scale_rel("0.03"), 7, 4),
            num(v.scale_rel("0.1"), 7, 4),
            num(v.l1, 10, 4),
            num(v.l2, 9, 4),
            num(v.hoyer, 6, 3),
            num(v.gini, 6, 3),
            if bad > 0 {
                format!(" {:>10}", v.nonfinite)
            } else {
                String::new()
            }
        );
    }
    if bad > 0 {
        let tensors = m.tensors.values().filter(|t| t.nonfinite > 0).count();
        out += &format!(
            "warning: {bad} NaN or infinite values in {tensors} tensor(s); L1, L2, hoyer and gini are over the finite values only (`-`: no finite values)\n"
        );
    }
    out.trim_end().to_string()
}
