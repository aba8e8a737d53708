//! The Transformer's weight matrices grouped by role (attention, MLP,
//! embedding, head) from their parameter names, and their section of the
//! report.

use std::fmt::Write as _;

use super::columns::md_table;
use super::columns::{finite, num, pct, stat};
use crate::experiment::{
    record::{Group, StudyRecord},
    stats,
};

/// The Transformer's weight matrices by role, from their parameter names:
/// attention (`attn.qkv`, `attn.proj`), MLP (`mlp.fc`, `mlp.proj`),
/// embedding (`tok_emb`, `pos_emb`) and the output head.
pub const TRANSFORMER_GROUPS: [(&str, &[&str]); 4] = [
    ("attention", &[".attn.qkv.weight", ".attn.proj.weight"]),
    ("MLP", &[".mlp.fc.weight", ".mlp.proj.weight"]),
    ("embedding", &["tok_emb.weight", "pos_emb.weight"]),
    ("head", &["head.weight"]),
];

/// The group of a Transformer parameter (see [`TRANSFORMER_GROUPS`]), if it
/// is a weight matrix of one.
pub fn transformer_group(name: &str) -> Option<&'static str> {
    TRANSFORMER_GROUPS
        .iter()
        .find(|(_, ends)| ends.iter().any(|e| name.ends_with(e)))
        .map(|(g, _)| *g)
}

/// A group's fraction of weights below a threshold, from the per-matrix
/// fractions weighted by size: `f` gives one matrix's fraction. For
/// |w| < 0.01·RMS, each matrix's own RMS.
fn group_frac(
    r: &StudyRecord,
    group: &str,
    f: impl Fn(&crate::metrics::Measures) -> f64,
) -> Option<f64> {
    let tensors = &r.r#final.as_ref()?.measures.tensors;
    let (mut num, mut den) = (0.0, 0usize);
    for (name, m) in tensors {
        if transformer_group(name) == Some(group) {
            num += f(m) * m.numel as f64;
            den += m.numel;
        }
    }
    finite(num / den as f64).filter(|_| den > 0)
}

/// For the Transformer: sparsity of the attention, MLP, embedding and head
/// weights apart, next to the held-out loss, and (with a baseline) each
/// configuration minus the baseline, paired by seed, with 95 % CIs.
pub(super) fn transformer_group_markdown(out: &mut String, gs: &[&Group], baseline: Option<&str>) {
    let Some(first) = gs.iter().flat_map(|g| g.done()).next() else {
        return;
    };
    if !matches!(
        first.config.model,
        crate::models::ModelConfig::Transformer(_)
    ) {
        return;
    }
    let Some(fin) = first.r#final.as_ref() else {
        return;
    };
    let numel = |group: &str| -> usize {
        fin.measures
            .tensors
            .iter()
            .filter(|(n, _)| transformer_group(n) == Some(group))
            .map(|(_, m)| m.numel)
            .sum()
    };
    let total: usize = TRANSFORMER_GROUPS.iter().map(|(g, _)| numel(g)).sum();
    type Measure = fn(&crate::metrics::Measures) -> f64;
    let measures: [(&str, Measure); 2] = [
        ("\\|w\\| < 1e-3 %", |m| m.near("1e-3")),
        ("\\|w\\| < 0.01 RMS %", |m| m.scale_rel("0.01")),
    ];
    let _ = writeln!(
        out,
        "### Weights by role\n\n\
         The weight matrices grouped by parameter name: attention (`attn.qkv`, `attn.proj`), MLP \
         (`mlp.fc`, `mlp.proj`), embedding (`tok_emb`, `pos_emb`) and the output head; per group, \
         the fraction of its weights with |w| < 1e-3 and with |w| < 0.01 × the RMS of their own \
         matrix (mean ± sd over seeds), next to the held-out loss.\n"
    );
    let mut header = vec!["optimizer".to_string(), "test loss".to_string()];
    for (g, _) in TRANSFORMER_GROUPS {
        let share = 100.0 * numel(g) as f64 / total.max(1) as f64;
        for (i, (m, _)) in measures.iter().enumerate() {
            header.push(if i == 0 {
                format!("{g} ({share:.1} % of weights): {m}")
            } else {
                format!("{g}: {m}")
            });
        }
    }
    let test_loss = |r: &StudyRecord| r.r#final.as_ref().map(|f| f.test_loss);
    let rows: Vec<Vec<String>> = gs
        .iter()
        .map(|g| {
            let mut row = vec![g.label.clone(), num(stat(g, test_loss), 4)];
            for (group, _) in TRANSFORMER_GROUPS {
                for (_, f) in &measures {
                    row.push(pct(stat(g, |r| group_frac(r, group, f))));
                }
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
    let Some(base) = baseline.and_then(|b| gs.iter().find(|g| g.label == b)) else {
        return;
    };
    let _ = writeln!(
        out,
        "Paired by seed against {}: the mean over shared seeds of (configuration − {}), in \
         percentage points for percentages, with its 95 % confidence interval (Student's t, n − 1 \
         degrees of freedom; not adjusted for multiple comparisons).\n",
        base.label, base.label
    );
    let mut header = vec!["optimizer".to_string(), "Δ test loss".to_string()];
    for (g, _) in TRANSFORMER_GROUPS {
        for (m, _) in &measures {
            header.push(format!("Δ {g}: {}", m.trim_end_matches(" %")));
        }
    }
    let cell = |g: &Group, scale: f64, digits: usize, f: &dyn Fn(&StudyRecord) -> Option<f64>| {
        let d: Vec<f64> = g
            .done()
            .filter_map(|r| {
                let b = base.done().find(|b| b.seed == r.seed)?;
                Some(f(r)? - f(b)?)
            })
            .collect();
        match stats::paired(&d) {
            None => "–".to_string(),
            Some(p) if d.len() < 2 => format!("{:+.digits$}", scale * p.mean),
            Some(p) => format!(
                "{:+.digits$} [{:+.digits$}, {:+.digits$}]",
                scale * p.mean,
                scale * p.lo,
                scale * p.hi
            ),
        }
    };
    let rows: Vec<Vec<String>> = gs
        .iter()
        .filter(|g| g.label != base.label)
        .map(|g| {
            let mut row = vec![g.label.clone(), cell(g, 1.0, 4, &test_loss)];
            for (group, _) in TRANSFORMER_GROUPS {
                for (_, f) in &measures {
                    row.push(cell(g, 100.0, 2, &|r| group_frac(r, group, f)));
                }
            }
            row
        })
        .collect();
    md_table(out, &header, &rows);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn transformer_weights_fall_in_one_group_each_by_name() {
        use crate::models::{ModelConfig, transformer::TransformerConfig};
        let cfg = ModelConfig::Transformer(TransformerConfig {
            layers: 3,
            d_model: 8,
            heads: 2,
            context: 4,
            mlp_ratio: 2,
        });
        let task = crate::data::Task::NextToken { vocab: 5 };
        let m = cfg
            .build(&task, 0, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let mut count: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for (name, v) in m.named_params() {
            let g = transformer_group(&name);
            if v.rank() < 2 {
                assert_eq!(g, None, "{name}: biases and norms are in no group");
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("{name} is in no group"));
            let e = count.entry(g).or_default();
            e.0 += 1;
            e.1 += v.elem_count();
        }
        // 3 layers: qkv and proj per layer; fc and proj per layer; two tables; one head.
        assert_eq!(count["attention"], (6, 3 * (8 * 24 + 8 * 8)));
        assert_eq!(count["MLP"], (6, 3 * 2 * 8 * 16));
        assert_eq!(count["embedding"], (2, 5 * 8 + 4 * 8));
        assert_eq!(count["head"], (1, 8 * 5));
    }
}
