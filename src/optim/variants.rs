//! Every code path of every optimizer, for the checks that run two
//! implementations side by side (`tests/fused_vs_reference.rs`, the
//! `selfcheck` command): one list, fed by the registry, so a new optimizer
//! is covered by both without touching either.

use anyhow::Result;

use super::config::OptimizerConfig;
use super::registry::OptimizerKind;

/// Every valid combination of the regularisation blocks: {no L1,
/// subgradient, proximal} x {no decay, coupled, decoupled}.
pub const REGULARISATIONS: [&[(&str, &str)]; 9] = [
    &[],
    &[("weight_decay", "0.1")],
    &[("weight_decay", "0.1"), ("decoupled_weight_decay", "true")],
    &[("l1", "0.01")],
    &[("l1", "0.01"), ("weight_decay", "0.1")],
    &[
        ("l1", "0.01"),
        ("weight_decay", "0.1"),
        ("decoupled_weight_decay", "true"),
    ],
    &[("l1_prox", "0.5")],
    &[("l1_prox", "0.5"), ("weight_decay", "0.1")],
    &[
        ("l1_prox", "0.5"),
        ("weight_decay", "0.1"),
        ("decoupled_weight_decay", "true"),
    ],
];

/// Each rule's variants: as it is, with every state buffer on (the
/// registry's `full_state`), and SGD with momentum but without Nesterov
/// (its own branch of the rule).
pub fn variants() -> Vec<(OptimizerKind, &'static [(&'static str, &'static str)])> {
    let mut out = vec![];
    for kind in OptimizerKind::ALL {
        out.push((kind, &[][..]));
        if kind == OptimizerKind::Sgd {
            out.push((kind, &[("momentum", "0.9")][..]));
        }
        let full = kind.info().full_state;
        if !full.is_empty() {
            out.push((kind, full));
        }
    }
    out
}

/// Every variant with every regularisation block it accepts, at `lr`. Rules
/// whose decay is always decoupled (AdamW, Lion) have no
/// `decoupled_weight_decay` key: their plain decay is that case, and the
/// blocks naming the key are left out for them.
pub fn every_code_path(lr: &str) -> Result<Vec<OptimizerConfig>> {
    let mut out = vec![];
    for (kind, extra) in variants() {
        for reg in REGULARISATIONS {
            if reg.iter().any(|(k, _)| !kind.accepts(k)) {
                continue;
            }
            let lr = [("lr", lr)];
            let pairs = extra.iter().chain(reg.iter()).chain(&lr).copied();
            out.push(OptimizerConfig::from_text(kind.name(), pairs)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind is there with every regularisation block it accepts,
    /// and no configuration twice.
    #[test]
    fn every_kind_and_block_is_covered_once() {
        let all = every_code_path("0.01").unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for c in &all {
            assert!(seen.insert(c.short()), "{} twice", c.short());
        }
        for kind in OptimizerKind::ALL {
            let n = all.iter().filter(|c| c.kind == kind).count();
            let blocks = REGULARISATIONS
                .iter()
                .filter(|r| r.iter().all(|(k, _)| kind.accepts(k)))
                .count();
            let variants = variants().iter().filter(|(k, _)| *k == kind).count();
            assert_eq!(n, variants * blocks, "{kind:?}");
            assert!(blocks >= 6, "{kind:?}: {blocks} blocks");
        }
    }
}
