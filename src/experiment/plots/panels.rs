//! The panels of a figure: optimizer configurations by family, at most
//! [`MAX_LINES`] a panel.

use crate::experiment::record::Group;
use crate::optim::OptimizerKind;
use crate::optim::config::Value;

/// At most this many optimizers share a panel, the baseline not counted.
pub const MAX_LINES: usize = 4;

pub(super) fn setting(g: &Group, key: &str) -> f64 {
    g.runs
        .first()
        .and_then(|r| {
            r.config
                .optimizer
                .values()
                .into_iter()
                .find(|(k, _)| *k == key)
        })
        .map_or(0.0, |(_, v)| match v {
            Value::F(x) => x,
            Value::B(_) => 0.0,
        })
}

/// The panel an optimizer configuration goes to: regularised ones (an L1
/// penalty, then weight decay) by their regulariser, the rest by algorithm:
/// SGD; AdaGrad, RMSprop and Adadelta; the Adam family (Adam, AMSGrad,
/// AdamW, NAdam, RAdam, Adamax).
pub fn family(g: &Group) -> &'static str {
    if setting(g, "l1") > 0.0 || setting(g, "l1_prox") > 0.0 {
        return "L1 penalty";
    }
    if setting(g, "weight_decay") > 0.0 {
        return "weight decay (L2 or decoupled)";
    }
    match g.runs.first().map(|r| r.config.optimizer.kind) {
        Some(OptimizerKind::Sgd) => "SGD",
        Some(OptimizerKind::Adagrad | OptimizerKind::Rmsprop | OptimizerKind::Adadelta) => {
            "AdaGrad, RMSprop, Adadelta"
        }
        Some(_) => "Adam family",
        None => "other",
    }
}

/// A panel's title and its groups (indices), the baseline not among them.
pub(super) struct PanelSpec {
    pub(super) title: String,
    pub(super) members: Vec<usize>,
}

/// Families in order of first appearance; a family of more than
/// [`MAX_LINES`] optimizers is split evenly over several panels.
pub(super) fn panel_specs(gs: &[&Group], baseline: Option<usize>) -> Vec<PanelSpec> {
    let mut fams: Vec<(&'static str, Vec<usize>)> = vec![];
    for (i, g) in gs.iter().enumerate() {
        if Some(i) == baseline {
            continue;
        }
        let f = family(g);
        match fams.iter_mut().find(|(n, _)| *n == f) {
            Some((_, v)) => v.push(i),
            None => fams.push((f, vec![i])),
        }
    }
    let mut out = vec![];
    for (name, members) in fams {
        let k = members.len().div_ceil(MAX_LINES);
        let (base, extra) = (members.len() / k, members.len() % k);
        let mut it = members.into_iter();
        for j in 0..k {
            let take = base + usize::from(j < extra);
            out.push(PanelSpec {
                title: if k > 1 {
                    format!("{name} ({}/{k})", j + 1)
                } else {
                    name.to_string()
                },
                members: it.by_ref().take(take).collect(),
            });
        }
    }
    if out.is_empty() {
        out.push(PanelSpec {
            title: gs.first().map_or("other".into(), |g| family(g).to_string()),
            members: vec![],
        });
    }
    out
}
