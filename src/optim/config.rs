//! Optimizer configuration: names, hyper-parameters, defaults and validation.
//!
//! Hyper-parameter names are `torch.optim`'s argument names, with `betas`
//! split into `beta1` and `beta2`, plus four of ours for regularisation that
//! torch does not have (`decoupled_weight_decay` on every optimizer, `l1`,
//! `l1_prox` and `exempt_1d`). Defaults are the reference's (PyTorch 2.x's).
//! The registry (`registry.rs`) lists each optimizer's keys and defaults and
//! the keys' specs are in `keys.rs`, so validation, error messages, defaults
//! and the written-out record all come from the same place.

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use super::keys::{KeySpec, Range, RawValue, Value, spec};
use super::keys::{Values, parse_bool, parse_f64};
pub use super::registry::OptimizerKind;
use super::rule::RuleSettings;
use crate::bail_usage;

/// A fully resolved optimizer configuration: the algorithm and every one of
/// its hyper-parameters, defaults filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    values: BTreeMap<&'static str, Value>,
}

impl OptimizerConfig {
    /// The configuration with PyTorch's defaults.
    pub fn new(kind: OptimizerKind) -> Self {
        let values = kind
            .keys()
            .into_iter()
            .map(|s| {
                let default = kind.default_override(s.name).map(Value::F);
                (s.name, default.unwrap_or(s.default))
            })
            .collect();
        Self { kind, values }
    }

    /// Parses the name, then applies each `key = value` over the defaults and
    /// validates the result.
    pub fn from_pairs<'a>(
        name: &str,
        pairs: impl IntoIterator<Item = (&'a str, RawValue)>,
    ) -> Result<Self> {
        let mut cfg = Self::new(OptimizerKind::parse(name)?);
        for (k, v) in pairs {
            cfg.set(k, v)?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// As [`from_pairs`](Self::from_pairs), with every value written as
    /// text (`("lr", "1e-3")`, `("amsgrad", "true")`), as on the command line.
    pub fn from_text<'a>(
        name: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        Self::from_pairs(
            name,
            pairs
                .into_iter()
                .map(|(k, v)| (k, RawValue::Text(v.to_string()))),
        )
    }

    /// Sets one key. Unknown keys, wrong types and out-of-range values are
    /// usage errors that name the key, the value and what is allowed.
    /// Cross-key rules are checked by [`validate`](Self::validate).
    pub fn set(&mut self, key: &str, raw: RawValue) -> Result<()> {
        let key = key.trim();
        let Some(spec) = self.kind.keys().into_iter().find(|s| s.name == key) else {
            let allowed: Vec<_> = self.kind.keys().iter().map(|s| s.name).collect();
            let hint = if key == "betas" {
                " (give betas as beta1 and beta2)"
            } else if self.kind.info().decoupled_only && key == "decoupled_weight_decay" {
                " (its weight_decay is always decoupled)"
            } else {
                ""
            };
            bail_usage!(
                "optimizer `{}` has no hyper-parameter `{key}`{hint}; allowed: {}",
                self.kind,
                allowed.join(", ")
            );
        };
        let value = match spec.range {
            Some(range) => {
                let x = parse_f64(&raw);
                match x {
                    Some(x) if x.is_finite() && range.contains(x) => Value::F(x),
                    _ => bail_usage!(
                        "invalid value `{raw}` for `{key}` of `{}`: expected {}",
                        self.kind,
                        range.describe()
                    ),
                }
            }
            None => match parse_bool(&raw) {
                Some(b) => Value::B(b),
                None => bail_usage!(
                    "invalid value `{raw}` for `{key}` of `{}`: expected true or false",
                    self.kind
                ),
            },
        };
        self.values.insert(spec.name, value);
        Ok(())
    }

    /// Checks the rules that involve more than one key (the usage errors of
    /// [`settings`](Self::settings)).
    pub fn validate(&self) -> Result<()> {
        self.settings().map(|_| ())
    }

    /// The configuration resolved into types, once: the only place that
    /// reads the hyper-parameters by name for the optimizer. Combinations
    /// the types cannot hold (both L1 modes, Nesterov without momentum or
    /// with dampening) are usage errors here.
    pub fn settings(&self) -> Result<Settings> {
        let f = |key: &str| self.get(key);
        let rule = (self.kind.info().rule)(&Values(&self.values))?;
        let (l1, l1_prox) = (f("l1"), f("l1_prox"));
        let l1 = match (l1 > 0.0, l1_prox > 0.0) {
            (true, true) => bail_usage!(
                "{}: choose one L1 mode: l1 (subgradient) = {l1} and l1_prox (proximal) = {l1_prox} are both set",
                self.kind
            ),
            (true, false) => L1::Subgradient(l1),
            (false, true) => L1::Proximal(l1_prox),
            (false, false) => L1::None,
        };
        let wd = f("weight_decay");
        let decay = if wd == 0.0 {
            Decay::None
        } else if self.flag("decoupled_weight_decay") {
            Decay::Decoupled(wd)
        } else {
            Decay::Coupled(wd)
        };
        Ok(Settings {
            lr: self.lr(),
            rule,
            reg: Regularization {
                decay,
                l1,
                exempt_1d: self.flag("exempt_1d"),
            },
        })
    }

    /// A numeric hyper-parameter, for reports and tests (the optimizer reads
    /// [`settings`](Self::settings)). Panics on a key this optimizer does
    /// not have, which is a programming error, not a user's.
    pub fn get(&self, key: &str) -> f64 {
        match self.values.get(key) {
            Some(Value::F(x)) => *x,
            other => panic!("{}: no numeric key `{key}` ({other:?})", self.kind),
        }
    }

    /// A boolean hyper-parameter (`decoupled_weight_decay` is always true
    /// for the optimizers whose decay is decoupled by definition, AdamW's).
    pub fn flag(&self, key: &str) -> bool {
        if key == "decoupled_weight_decay" && self.kind.info().decoupled_only {
            return true;
        }
        match self.values.get(key) {
            Some(Value::B(b)) => *b,
            other => panic!("{}: no boolean key `{key}` ({other:?})", self.kind),
        }
    }

    pub fn lr(&self) -> f64 {
        self.get("lr")
    }

    /// Every hyper-parameter, in the optimizer's key order.
    pub fn values(&self) -> Vec<(&'static str, Value)> {
        self.kind
            .keys()
            .iter()
            .map(|s| (s.name, self.values[s.name]))
            .collect()
    }

    /// A one-line description, `adam(lr=0.001, beta1=0.9, ...)`, listing only
    /// values that differ from the defaults.
    pub fn short(&self) -> String {
        let def = Self::new(self.kind);
        let parts: Vec<String> = self
            .values()
            .into_iter()
            .filter(|(k, v)| def.values[k] != *v)
            .map(|(k, v)| match v {
                Value::F(x) => format!("{k}={x}"),
                Value::B(b) => format!("{k}={b}"),
            })
            .collect();
        format!("{}({})", self.kind, parts.join(", "))
    }
}

/// An optimizer's settings, resolved from its configuration by
/// [`OptimizerConfig::settings`]: the learning rate, the rule's own
/// hyper-parameters and the regularisation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub lr: f64,
    pub rule: RuleSettings,
    pub reg: Regularization,
}

/// The regularisation blocks around the rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Regularization {
    pub decay: Decay,
    pub l1: L1,
    /// Tensors with fewer than two dimensions skip decay and L1.
    pub exempt_1d: bool,
}

impl Regularization {
    /// Whether a tensor of this rank is decayed and L1-penalised.
    pub fn applies_to(&self, rank: usize) -> bool {
        !(self.exempt_1d && rank < 2)
    }
}

/// Weight decay, with its weight (`weight_decay = 0` is `None`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Decay {
    None,
    /// L2 in the gradient, torch's `weight_decay`: `g += wd*p`.
    Coupled(f64),
    /// Decoupled (AdamW, or `decoupled_weight_decay = true`):
    /// `p *= 1 - lr*wd` before the step.
    Decoupled(f64),
}

/// The L1 penalty, with its weight: at most one mode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum L1 {
    None,
    /// `l1`: `g += l1*sign(p)`.
    Subgradient(f64),
    /// `l1_prox`: after the step, `p = sign(p)*max(|p| - step*l1_prox, 0)`
    /// with the rule's per-coordinate step size.
    Proximal(f64),
}

/// Written out as a flat table: `name` plus every hyper-parameter.
impl Serialize for OptimizerConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let values = self.values();
        let mut map = s.serialize_map(Some(values.len() + 1))?;
        map.serialize_entry("name", self.kind.name())?;
        for (k, v) in values {
            match v {
                Value::F(x) => map.serialize_entry(k, &x)?,
                Value::B(b) => map.serialize_entry(k, &b)?,
            }
        }
        map.end()
    }
}

/// Read from a flat table: `name = "adam"` plus any hyper-parameters.
impl<'de> Deserialize<'de> for OptimizerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let mut table = BTreeMap::<String, toml::Value>::deserialize(d)?;
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => s,
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "`name` must be a string, got {other}"
                )));
            }
            None => {
                return Err(D::Error::custom(format!(
                    "missing `name`; expected one of: {}",
                    OptimizerKind::names().join(", ")
                )));
            }
        };
        Self::from_pairs(
            &name,
            table
                .iter()
                .map(|(k, v)| (k.as_str(), RawValue::Toml(v.clone()))),
        )
        .map_err(|e| D::Error::custom(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::Momentum;

    fn text(s: &str) -> RawValue {
        RawValue::Text(s.into())
    }

    #[test]
    fn defaults_are_torchs() {
        let adam = OptimizerConfig::new(OptimizerKind::Adam);
        assert_eq!(
            (
                adam.lr(),
                adam.get("beta1"),
                adam.get("beta2"),
                adam.get("eps")
            ),
            (1e-3, 0.9, 0.999, 1e-8)
        );
        assert_eq!(adam.get("weight_decay"), 0.0);
        assert_eq!(
            OptimizerConfig::new(OptimizerKind::Adamw).get("weight_decay"),
            1e-2
        );
        assert!(OptimizerConfig::new(OptimizerKind::Adamw).flag("decoupled_weight_decay"));
        assert_eq!(
            OptimizerConfig::new(OptimizerKind::Adagrad).get("eps"),
            1e-10
        );
        assert_eq!(OptimizerConfig::new(OptimizerKind::Adadelta).lr(), 1.0);
        assert_eq!(OptimizerConfig::new(OptimizerKind::Nadam).lr(), 2e-3);
        assert_eq!(
            OptimizerConfig::new(OptimizerKind::Rmsprop).get("alpha"),
            0.99
        );
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_key_and_value() {
        let cases = [
            ("adam", "lr", "-1", "`lr`"),
            ("adam", "beta2", "1.0", "[0, 1)"),
            ("adam", "eps", "-1e-8", "`eps`"),
            ("adam", "rho", "0.9", "allowed: lr, beta1"),
            ("adam", "betas", "0.9", "beta1 and beta2"),
            ("sgd", "nesterov", "yes", "true or false"),
            ("adam", "lr", "nan", "finite"),
        ];
        for (opt, k, v, needle) in cases {
            let err = OptimizerConfig::from_pairs(opt, [(k, text(v))]).unwrap_err();
            let msg = format!("{err:#}");
            assert!(crate::error::is_usage(&err), "{msg}");
            assert!(msg.contains(needle) && msg.contains(k), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        let err = OptimizerConfig::from_pairs("adamm", []).unwrap_err();
        assert!(format!("{err}").contains("sgd, adagrad"), "{err}");
    }

    #[test]
    fn nesterov_needs_momentum_without_dampening() {
        assert!(OptimizerConfig::from_pairs("sgd", [("nesterov", text("true"))]).is_err());
        let with_damp = [
            ("nesterov", text("true")),
            ("momentum", text("0.9")),
            ("dampening", text("0.1")),
        ];
        assert!(OptimizerConfig::from_pairs("sgd", with_damp).is_err());
        let ok = [("nesterov", text("true")), ("momentum", text("0.9"))];
        assert!(OptimizerConfig::from_pairs("sgd", ok).is_ok());
    }

    #[test]
    fn settings_resolve_each_key_into_its_type() {
        let settings = |name: &str, pairs: &[(&str, &str)]| {
            OptimizerConfig::from_text(name, pairs.iter().copied())
                .unwrap()
                .settings()
                .unwrap()
        };
        let adamw = settings("adamw", &[]);
        assert_eq!(adamw.reg.decay, Decay::Decoupled(1e-2));
        assert_eq!(adamw.reg.l1, L1::None);
        assert!(matches!(
            adamw.rule,
            RuleSettings::Adam { amsgrad: false, .. }
        ));
        let adam = settings("adam", &[("weight_decay", "0.1"), ("l1", "0.01")]);
        assert_eq!(adam.reg.decay, Decay::Coupled(0.1));
        assert_eq!(adam.reg.l1, L1::Subgradient(0.01));
        let nadam = settings(
            "nadam",
            &[
                ("weight_decay", "0.1"),
                ("decoupled_weight_decay", "true"),
                ("l1_prox", "0.5"),
                ("exempt_1d", "true"),
            ],
        );
        assert_eq!(nadam.reg.decay, Decay::Decoupled(0.1));
        assert_eq!(nadam.reg.l1, L1::Proximal(0.5));
        assert!(nadam.reg.exempt_1d && !nadam.reg.applies_to(1) && nadam.reg.applies_to(2));
        // weight_decay = 0 is no decay, whatever the coupling flag says.
        let none = settings("sgd", &[("decoupled_weight_decay", "true")]);
        assert_eq!(none.reg.decay, Decay::None);
        assert_eq!(
            none.rule,
            RuleSettings::Sgd {
                momentum: Momentum::None
            }
        );
        let nesterov = settings("sgd", &[("momentum", "0.9"), ("nesterov", "true")]);
        assert_eq!(
            nesterov.rule,
            RuleSettings::Sgd {
                momentum: Momentum::Nesterov { momentum: 0.9 }
            }
        );
        let heavy = settings("sgd", &[("momentum", "0.9"), ("dampening", "0.1")]);
        assert_eq!(
            heavy.rule,
            RuleSettings::Sgd {
                momentum: Momentum::Heavy {
                    momentum: 0.9,
                    dampening: 0.1
                }
            }
        );
        assert_eq!(settings("adagrad", &[("lr", "0.5")]).lr, 0.5);
    }

    #[test]
    fn both_l1_modes_are_a_usage_error_naming_both_keys() {
        let err =
            OptimizerConfig::from_text("adam", [("l1", "0.1"), ("l1_prox", "0.1")]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(crate::error::is_usage(&err), "{msg}");
        assert!(
            msg.contains("l1 (subgradient)") && msg.contains("l1_prox"),
            "{msg}"
        );
    }

    #[test]
    fn toml_round_trip_keeps_every_value() {
        let cfg: OptimizerConfig = toml::from_str(
            "name = \"nadam\"\nlr = 0.01\ndecoupled_weight_decay = true\nweight_decay = 1",
        )
        .unwrap();
        assert_eq!(cfg.lr(), 0.01);
        assert_eq!(cfg.get("weight_decay"), 1.0);
        let text = toml::to_string(&cfg).unwrap();
        let back: OptimizerConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert!(text.contains("momentum_decay = 0.004"), "{text}");
        let wrong_type = toml::from_str::<OptimizerConfig>("name = \"adam\"\nlr = \"fast\"");
        assert!(wrong_type.unwrap_err().to_string().contains("`lr`"));
    }
}
