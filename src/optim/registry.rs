//! The registry of optimizers: one row per algorithm, from which every list
//! a new optimizer must join is generated or checked.
//!
//! A row ([`Info`]) holds the name used in configs and on the command line,
//! the label of tables, the plot panel (family), the reference
//! implementation, the rule's own hyper-parameters and the reference's
//! defaults, how its weight decay couples, how many state buffers it keeps
//! at most, and the constructor of its typed [`RuleSettings`]. From it come
//! the command line's optimizer lists and `sparsity-lab optimizers` (the
//! documentation's table), config validation and defaults, the plot
//! families and the pruning criterion's check; the tests iterate
//! [`OptimizerKind::ALL`] (golden fixture coverage, the CLI, fused against
//! reference, the CUDA kernels on the host), so that a missing entry fails
//! a test instead of being skipped.
//!
//! Adding an optimizer: a row here, its `RuleSettings` and `Scalars`
//! variants and its step in `rule.rs`, its fused kernel in `kernels.rs`
//! (the compiler asks for each), and its PyTorch cases in
//! `tests/golden/make_optim_fixtures.py`.

use std::fmt;

use anyhow::Result;

use super::keys::{KeySpec, Values, spec};
use super::rule::{Momentum, RuleSettings};
use crate::bail_usage;

/// One optimizer's entry in the registry.
pub struct Info {
    /// The name in configs and on the command line (`name = "adamw"`).
    pub name: &'static str,
    /// The name in prose and tables.
    pub label: &'static str,
    /// The plot panel its unregularised runs are drawn in.
    pub family: &'static str,
    /// The implementation it matches step for step (the golden fixtures).
    pub reference: &'static str,
    /// One line for help texts and the documentation's table.
    pub summary: &'static str,
    /// The rule's own hyper-parameters, in the order they are written out
    /// (the regularisation keys follow, see [`OptimizerKind::keys`]).
    pub keys: &'static [&'static str],
    /// The reference's defaults where they differ from a key's general
    /// default (`keys.rs`).
    pub defaults: &'static [(&'static str, f64)],
    /// `weight_decay` is always decoupled (`p *= 1 - lr*weight_decay`
    /// before the step), as in the reference: the optimizer has no
    /// `decoupled_weight_decay` key.
    pub decoupled_only: bool,
    /// State buffers per parameter at most (the fused kernels' state slots).
    pub state_buffers: usize,
    /// Settings under which the rule keeps all `state_buffers` buffers (for
    /// tests that must exercise every one).
    pub full_state: &'static [(&'static str, &'static str)],
    /// Keeps a running second moment of the gradient (what the `wv`
    /// pruning criterion reads).
    pub second_moment: bool,
    /// The rule's typed hyper-parameters from a configuration (cross-key
    /// rules are usage errors here).
    pub rule: fn(&Values) -> Result<RuleSettings>,
}

/// Declares [`OptimizerKind`] and its rows together, so that a variant
/// cannot lack a row, nor a row be left out of `ALL`.
macro_rules! registry {
    ($($(#[$doc:meta])* $kind:ident => $info:expr,)*) => {
        /// The optimizer algorithms. `adamw` is Adam with decoupled decay and
        /// torch's AdamW defaults; AMSGrad is `adam` (or `adamw`) with
        /// `amsgrad = true`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum OptimizerKind {
            $($(#[$doc])* $kind,)*
        }

        impl OptimizerKind {
            /// Every optimizer, in the registry's order.
            pub const ALL: [OptimizerKind; [$(stringify!($kind)),*].len()] = [$(Self::$kind),*];

            /// This optimizer's row.
            pub fn info(self) -> &'static Info {
                match self {
                    $(Self::$kind => {
                        static INFO: Info = $info;
                        &INFO
                    })*
                }
            }
        }
    };
}

registry! {
    Sgd => Info {
        name: "sgd",
        label: "SGD",
        family: "SGD",
        reference: "torch.optim.SGD",
        summary: "stochastic gradient descent, with heavy-ball or Nesterov momentum",
        keys: &["lr", "momentum", "dampening", "nesterov"],
        defaults: &[("lr", 1e-3)],
        decoupled_only: false,
        state_buffers: 1,
        full_state: &[("momentum", "0.9"), ("nesterov", "true")],
        second_moment: false,
        rule: sgd,
    },
    Adagrad => Info {
        name: "adagrad",
        label: "AdaGrad",
        family: "AdaGrad, RMSprop, Adadelta",
        reference: "torch.optim.Adagrad",
        summary: "per-coordinate steps lr/sqrt(sum of squared gradients)",
        keys: &["lr", "lr_decay", "initial_accumulator_value", "eps"],
        defaults: &[("lr", 1e-2), ("eps", 1e-10)],
        decoupled_only: false,
        state_buffers: 1,
        full_state: &[],
        second_moment: true,
        rule: |c| {
            Ok(RuleSettings::Adagrad {
                lr_decay: c.get("lr_decay"),
                initial_accumulator_value: c.get("initial_accumulator_value"),
                eps: c.get("eps"),
            })
        },
    },
    Rmsprop => Info {
        name: "rmsprop",
        label: "RMSprop",
        family: "AdaGrad, RMSprop, Adadelta",
        reference: "torch.optim.RMSprop",
        summary: "steps normalised by a running RMS of the gradient (centered, momentum)",
        keys: &["lr", "alpha", "eps", "centered", "momentum"],
        defaults: &[("lr", 1e-2)],
        decoupled_only: false,
        state_buffers: 3,
        full_state: &[("centered", "true"), ("momentum", "0.5")],
        second_moment: true,
        rule: |c| {
            Ok(RuleSettings::Rmsprop {
                alpha: c.get("alpha"),
                eps: c.get("eps"),
                centered: c.flag("centered"),
                momentum: c.get("momentum"),
            })
        },
    },
    Adadelta => Info {
        name: "adadelta",
        label: "Adadelta",
        family: "AdaGrad, RMSprop, Adadelta",
        reference: "torch.optim.Adadelta",
        summary: "steps scaled by the ratio of running RMS of updates and gradients",
        keys: &["lr", "rho", "eps"],
        defaults: &[("lr", 1.0), ("eps", 1e-6)],
        decoupled_only: false,
        state_buffers: 2,
        full_state: &[],
        second_moment: true,
        rule: |c| {
            Ok(RuleSettings::Adadelta {
                rho: c.get("rho"),
                eps: c.get("eps"),
            })
        },
    },
    Adam => Info {
        name: "adam",
        label: "Adam",
        family: "Adam family",
        reference: "torch.optim.Adam",
        summary: "bias-corrected first and second moments (AMSGrad: amsgrad = true)",
        keys: &["lr", "beta1", "beta2", "eps", "amsgrad"],
        defaults: &[],
        decoupled_only: false,
        state_buffers: 3,
        full_state: &[("amsgrad", "true")],
        second_moment: true,
        rule: adam,
    },
    Adamw => Info {
        name: "adamw",
        label: "AdamW",
        family: "Adam family",
        reference: "torch.optim.AdamW",
        summary: "Adam with decoupled weight decay (default 1e-2)",
        keys: &["lr", "beta1", "beta2", "eps", "amsgrad"],
        defaults: &[("weight_decay", 1e-2)],
        decoupled_only: true,
        state_buffers: 3,
        full_state: &[("amsgrad", "true")],
        second_moment: true,
        rule: adam,
    },
    Nadam => Info {
        name: "nadam",
        label: "NAdam",
        family: "Adam family",
        reference: "torch.optim.NAdam",
        summary: "Adam with Nesterov momentum and a momentum schedule",
        keys: &["lr", "beta1", "beta2", "eps", "momentum_decay"],
        defaults: &[("lr", 2e-3)],
        decoupled_only: false,
        state_buffers: 2,
        full_state: &[],
        second_moment: true,
        rule: |c| {
            Ok(RuleSettings::Nadam {
                beta1: c.get("beta1"),
                beta2: c.get("beta2"),
                eps: c.get("eps"),
                momentum_decay: c.get("momentum_decay"),
            })
        },
    },
    Radam => Info {
        name: "radam",
        label: "RAdam",
        family: "Adam family",
        reference: "torch.optim.RAdam",
        summary: "Adam with the variance rectification (plain momentum steps at first)",
        keys: &["lr", "beta1", "beta2", "eps"],
        defaults: &[],
        decoupled_only: false,
        state_buffers: 2,
        full_state: &[],
        second_moment: true,
        rule: |c| {
            Ok(RuleSettings::Radam {
                beta1: c.get("beta1"),
                beta2: c.get("beta2"),
                eps: c.get("eps"),
            })
        },
    },
    Adamax => Info {
        name: "adamax",
        label: "Adamax",
        family: "Adam family",
        reference: "torch.optim.Adamax",
        summary: "Adam with the infinity norm: u = max(b2*u, abs(g) + eps)",
        keys: &["lr", "beta1", "beta2", "eps"],
        defaults: &[("lr", 2e-3)],
        decoupled_only: false,
        state_buffers: 2,
        full_state: &[],
        second_moment: false,
        rule: |c| {
            Ok(RuleSettings::Adamax {
                beta1: c.get("beta1"),
                beta2: c.get("beta2"),
                eps: c.get("eps"),
            })
        },
    },
    Lion => Info {
        name: "lion",
        label: "Lion",
        family: "Lion (sign-based)",
        reference: "lion_pytorch.Lion",
        summary: "steps of lr*sign(b1*m + (1-b1)*g) (Chen et al. 2023); m then decays with b2",
        keys: &["lr", "beta1", "beta2"],
        defaults: &[("lr", 1e-4), ("beta2", 0.99)],
        decoupled_only: true,
        state_buffers: 1,
        full_state: &[],
        second_moment: false,
        rule: |c| {
            Ok(RuleSettings::Lion {
                beta1: c.get("beta1"),
                beta2: c.get("beta2"),
            })
        },
    },
}

fn sgd(c: &Values) -> Result<RuleSettings> {
    let (m, d) = (c.get("momentum"), c.get("dampening"));
    let momentum = if c.flag("nesterov") {
        if m <= 0.0 || d != 0.0 {
            bail_usage!(
                "sgd: nesterov = true needs momentum > 0 and dampening = 0 (got momentum = {m}, dampening = {d})"
            );
        }
        Momentum::Nesterov { momentum: m }
    } else if m == 0.0 {
        Momentum::None
    } else {
        Momentum::Heavy {
            momentum: m,
            dampening: d,
        }
    };
    Ok(RuleSettings::Sgd { momentum })
}

/// Adam, and AdamW (the same rule; the decay differs).
fn adam(c: &Values) -> Result<RuleSettings> {
    Ok(RuleSettings::Adam {
        beta1: c.get("beta1"),
        beta2: c.get("beta2"),
        eps: c.get("eps"),
        amsgrad: c.flag("amsgrad"),
    })
}

/// The regularisation keys every optimizer takes after its own.
const REG_KEYS: [&str; 5] = [
    "weight_decay",
    "decoupled_weight_decay",
    "l1",
    "l1_prox",
    "exempt_1d",
];

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The name in prose and tables (`AdamW`).
    pub fn label(self) -> &'static str {
        self.info().label
    }

    /// The plot panel of its unregularised runs.
    pub fn family(self) -> &'static str {
        self.info().family
    }

    /// Parses an optimizer name; the error lists the known names.
    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match Self::ALL.iter().find(|k| k.name() == lower) {
            Some(k) => Ok(*k),
            None => bail_usage!(
                "unknown optimizer `{s}`; expected one of: {}",
                Self::names().join(", ")
            ),
        }
    }

    /// Every optimizer's name, in the registry's order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.name()).collect()
    }

    /// The names as prose for help texts: `sgd, adagrad, ... or lion`.
    pub fn names_prose() -> String {
        let names = Self::names();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }

    /// The keys this optimizer accepts, in the order they are written out.
    pub fn keys(self) -> Vec<&'static KeySpec> {
        let info = self.info();
        info.keys
            .iter()
            .chain(
                REG_KEYS
                    .iter()
                    .filter(|k| !(info.decoupled_only && **k == "decoupled_weight_decay")),
            )
            .map(|k| spec(k).expect("every listed key has a spec"))
            .collect()
    }

    /// Whether this optimizer takes `key`.
    pub fn accepts(self, key: &str) -> bool {
        self.keys().iter().any(|s| s.name == key)
    }

    /// The reference's default for `key` where it differs from the key's
    /// general default.
    pub(crate) fn default_override(self, key: &str) -> Option<f64> {
        self.info()
            .defaults
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
    }

    /// The documentation's table of optimizers, as markdown: name, label,
    /// reference, defaults that differ from the general ones, state buffers
    /// and summary (`sparsity-lab optimizers` prints it).
    pub fn markdown_table() -> String {
        let mut out = String::from(
            "| name | optimizer | reference | its defaults | state buffers | plot panel | what it does |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for k in Self::ALL {
            let i = k.info();
            let defaults: Vec<String> = i
                .defaults
                .iter()
                .map(|(k, v)| match v.abs() {
                    x if (1e-2..1e3).contains(&x) => format!("{k} {v}"),
                    _ => format!("{k} {v:e}"),
                })
                .collect();
            let decay = if i.decoupled_only {
                "; weight_decay decoupled"
            } else {
                ""
            };
            out.push_str(&format!(
                "| `{}` | {} | `{}` | {}{decay} | {} | {} | {} |\n",
                i.name,
                i.label,
                i.reference,
                if defaults.is_empty() {
                    "-".to_string()
                } else {
                    defaults.join(", ")
                },
                i.state_buffers,
                i.family,
                i.summary
            ));
        }
        out
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::OptimizerConfig;
    use crate::optim::rule::Rule;

    #[test]
    fn rows_are_consistent() {
        let mut names: Vec<_> = OptimizerKind::names();
        names.sort();
        names.dedup();
        assert_eq!(
            names.len(),
            OptimizerKind::ALL.len(),
            "names must be unique"
        );
        for k in OptimizerKind::ALL {
            let i = k.info();
            assert_eq!(OptimizerKind::parse(i.name).unwrap(), k);
            assert!(!i.label.is_empty() && !i.family.is_empty() && !i.summary.is_empty());
            let keys = i.defaults.iter().map(|(key, _)| *key);
            for key in keys.chain(i.full_state.iter().map(|(key, _)| *key)) {
                assert!(k.accepts(key), "{k}: `{key}` is not one of its keys");
            }
        }
    }

    /// `state_buffers` is the rule's largest state: reached under
    /// `full_state`, never exceeded by the default settings.
    #[test]
    fn state_buffers_are_the_rules() {
        for k in OptimizerKind::ALL {
            let i = k.info();
            let count = |pairs: &[(&str, &str)]| {
                let cfg = OptimizerConfig::from_text(k.name(), pairs.iter().copied()).unwrap();
                Rule::new(cfg.settings().unwrap().rule).state_names().len()
            };
            assert_eq!(count(i.full_state), i.state_buffers, "{k}: full_state");
            assert!(count(&[]) <= i.state_buffers, "{k}: defaults");
        }
    }

    /// The plot panels of the optimizers the committed plots show keep their
    /// titles (so the plots regenerate byte-identical); a new rule names its own.
    #[test]
    fn families_are_the_plots_panels() {
        use OptimizerKind::*;
        assert_eq!(Sgd.family(), "SGD");
        for k in [Adagrad, Rmsprop, Adadelta] {
            assert_eq!(k.family(), "AdaGrad, RMSprop, Adadelta");
        }
        for k in [Adam, Adamw, Nadam, Radam, Adamax] {
            assert_eq!(k.family(), "Adam family");
        }
        assert_eq!(Lion.family(), "Lion (sign-based)");
    }

    #[test]
    fn names_prose_lists_every_name() {
        let prose = OptimizerKind::names_prose();
        assert!(prose.starts_with("sgd, adagrad"), "{prose}");
        for k in OptimizerKind::ALL {
            assert!(prose.contains(k.name()), "{prose}");
        }
        let table = OptimizerKind::markdown_table();
        assert_eq!(table.lines().count(), 2 + OptimizerKind::ALL.len());
        // Every row has the header's 7 cells (no `|` inside a cell).
        for line in table.lines() {
            assert_eq!(line.matches('|').count(), 8, "{line}");
        }
        assert!(table.contains("| lr 1e-3 |"), "{table}");
    }
}
