//! Optimizer configuration: names, hyper-parameters, defaults and validation.
//!
//! Hyper-parameter names are `torch.optim`'s argument names, with `betas`
//! split into `beta1` and `beta2`, plus four of ours for regularisation that
//! torch does not have (`decoupled_weight_decay` on every optimizer, `l1`,
//! `l1_prox` and `exempt_1d`). Defaults are PyTorch 2.x's. One table per
//! optimizer lists its keys, so validation, error messages, defaults and the
//! written-out record all come from the same place.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::bail_usage;

/// The optimizer algorithms. `adamw` is Adam with decoupled decay and torch's
/// AdamW defaults; AMSGrad is `adam` (or `adamw`) with `amsgrad = true`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OptimizerKind {
    Sgd,
    Adagrad,
    Rmsprop,
    Adadelta,
    Adam,
    Adamw,
    Nadam,
    Radam,
    Adamax,
}

impl OptimizerKind {
    pub const ALL: [OptimizerKind; 9] = [
        Self::Sgd,
        Self::Adagrad,
        Self::Rmsprop,
        Self::Adadelta,
        Self::Adam,
        Self::Adamw,
        Self::Nadam,
        Self::Radam,
        Self::Adamax,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Sgd => "sgd",
            Self::Adagrad => "adagrad",
            Self::Rmsprop => "rmsprop",
            Self::Adadelta => "adadelta",
            Self::Adam => "adam",
            Self::Adamw => "adamw",
            Self::Nadam => "nadam",
            Self::Radam => "radam",
            Self::Adamax => "adamax",
        }
    }

    /// Parses an optimizer name; the error lists the known names.
    pub fn parse(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match Self::ALL.iter().find(|k| k.name() == lower) {
            Some(k) => Ok(*k),
            None => bail_usage!(
                "unknown optimizer `{s}`; expected one of: {}",
                Self::ALL.map(|k| k.name()).join(", ")
            ),
        }
    }

    /// The keys this optimizer accepts, in the order they are written out.
    pub fn keys(self) -> Vec<&'static KeySpec> {
        let own: &[&str] = match self {
            Self::Sgd => &["lr", "momentum", "dampening", "nesterov"],
            Self::Adagrad => &["lr", "lr_decay", "initial_accumulator_value", "eps"],
            Self::Rmsprop => &["lr", "alpha", "eps", "centered", "momentum"],
            Self::Adadelta => &["lr", "rho", "eps"],
            Self::Adam | Self::Adamw => &["lr", "beta1", "beta2", "eps", "amsgrad"],
            Self::Nadam => &["lr", "beta1", "beta2", "eps", "momentum_decay"],
            Self::Radam | Self::Adamax => &["lr", "beta1", "beta2", "eps"],
        };
        // AdamW's decay is decoupled by definition; the flag is for the others.
        let reg: &[&str] = match self {
            Self::Adamw => &["weight_decay", "l1", "l1_prox", "exempt_1d"],
            _ => &[
                "weight_decay",
                "decoupled_weight_decay",
                "l1",
                "l1_prox",
                "exempt_1d",
            ],
        };
        own.iter()
            .chain(reg)
            .map(|k| spec(k).expect("every listed key has a spec"))
            .collect()
    }

    /// PyTorch's default for `key` where it differs from the key's general default.
    fn default_override(self, key: &str) -> Option<Value> {
        use OptimizerKind::*;
        let v = match (self, key) {
            (Sgd, "lr") => 1e-3,
            (Adagrad, "lr") => 1e-2,
            (Adagrad, "eps") => 1e-10,
            (Rmsprop, "lr") => 1e-2,
            (Adadelta, "lr") => 1.0,
            (Adadelta, "eps") => 1e-6,
            (Nadam | Adamax, "lr") => 2e-3,
            (Adamw, "weight_decay") => 1e-2,
            _ => return None,
        };
        Some(Value::F(v))
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A resolved hyper-parameter value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    F(f64),
    B(bool),
}

/// The allowed range of a numeric key.
#[derive(Clone, Copy, Debug)]
pub enum Range {
    /// `>= 0`
    NonNeg,
    /// `[0, 1]`
    Unit,
    /// `[0, 1)`
    UnitOpen,
}

impl Range {
    fn contains(self, x: f64) -> bool {
        match self {
            Range::NonNeg => x >= 0.0,
            Range::Unit => (0.0..=1.0).contains(&x),
            Range::UnitOpen => (0.0..1.0).contains(&x),
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Range::NonNeg => "a finite number >= 0",
            Range::Unit => "a number in [0, 1]",
            Range::UnitOpen => "a number in [0, 1)",
        }
    }
}

/// One hyper-parameter: its name, type, general default and allowed range.
#[derive(Debug)]
pub struct KeySpec {
    pub name: &'static str,
    /// `None` for booleans.
    pub range: Option<Range>,
    pub default: Value,
    pub doc: &'static str,
}

const fn num(name: &'static str, range: Range, default: f64, doc: &'static str) -> KeySpec {
    KeySpec {
        name,
        range: Some(range),
        default: Value::F(default),
        doc,
    }
}

const fn flag(name: &'static str, doc: &'static str) -> KeySpec {
    KeySpec {
        name,
        range: None,
        default: Value::B(false),
        doc,
    }
}

/// Every key any optimizer accepts. Defaults here are the common torch
/// defaults; per-optimizer differences are in `default_override`.
static SPECS: &[KeySpec] = &[
    num("lr", Range::NonNeg, 1e-3, "learning rate"),
    num("momentum", Range::UnitOpen, 0.0, "momentum factor"),
    num(
        "dampening",
        Range::Unit,
        0.0,
        "dampening for momentum (SGD)",
    ),
    flag(
        "nesterov",
        "Nesterov momentum (SGD; needs momentum > 0 and dampening = 0)",
    ),
    num(
        "beta1",
        Range::UnitOpen,
        0.9,
        "first-moment decay (torch betas[0])",
    ),
    num(
        "beta2",
        Range::UnitOpen,
        0.999,
        "second-moment decay (torch betas[1])",
    ),
    num(
        "eps",
        Range::NonNeg,
        1e-8,
        "term added for numerical stability",
    ),
    flag("amsgrad", "AMSGrad: normalise by the running maximum of v"),
    flag(
        "centered",
        "centered RMSprop (normalise by the variance estimate)",
    ),
    num("alpha", Range::Unit, 0.99, "smoothing constant of RMSprop"),
    num(
        "rho",
        Range::Unit,
        0.9,
        "decay of Adadelta's running averages",
    ),
    num(
        "lr_decay",
        Range::NonNeg,
        0.0,
        "AdaGrad learning-rate decay",
    ),
    num(
        "initial_accumulator_value",
        Range::NonNeg,
        0.0,
        "AdaGrad's starting sum of squares",
    ),
    num("momentum_decay", Range::NonNeg, 4e-3, "NAdam's psi"),
    num(
        "weight_decay",
        Range::NonNeg,
        0.0,
        "L2 decay: added to the gradient (torch), or decoupled (AdamW)",
    ),
    flag(
        "decoupled_weight_decay",
        "decay the weights directly, p *= 1 - lr*weight_decay, before the step",
    ),
    num(
        "l1",
        Range::NonNeg,
        0.0,
        "L1 penalty as a subgradient: adds l1*sign(p) to the gradient",
    ),
    num(
        "l1_prox",
        Range::NonNeg,
        0.0,
        "L1 penalty as a proximal soft-threshold with the optimizer's own step size",
    ),
    flag(
        "exempt_1d",
        "exempt tensors with fewer than 2 dims (biases, norm gains) from decay and L1",
    ),
];

/// The spec of a key, if any optimizer knows it.
pub fn spec(key: &str) -> Option<&'static KeySpec> {
    SPECS.iter().find(|s| s.name == key)
}

/// A raw value before it is checked against a key's type.
#[derive(Clone, Debug)]
pub enum RawValue {
    /// From the command line (`--set key=value`).
    Text(String),
    /// From a TOML file.
    Toml(toml::Value),
}

impl fmt::Display for RawValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawValue::Text(s) => f.write_str(s),
            RawValue::Toml(v) => write!(f, "{v}"),
        }
    }
}

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
            .map(|s| (s.name, kind.default_override(s.name).unwrap_or(s.default)))
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
            } else if self.kind == OptimizerKind::Adamw && key == "decoupled_weight_decay" {
                " (adamw's weight_decay is always decoupled)"
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
        use OptimizerKind::*;
        let f = |key: &str| self.get(key);
        let rule = match self.kind {
            Sgd => {
                let (m, d) = (f("momentum"), f("dampening"));
                let momentum = if self.flag("nesterov") {
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
                RuleSettings::Sgd { momentum }
            }
            Adagrad => RuleSettings::Adagrad {
                lr_decay: f("lr_decay"),
                initial_accumulator_value: f("initial_accumulator_value"),
                eps: f("eps"),
            },
            Rmsprop => RuleSettings::Rmsprop {
                alpha: f("alpha"),
                eps: f("eps"),
                centered: self.flag("centered"),
                momentum: f("momentum"),
            },
            Adadelta => RuleSettings::Adadelta {
                rho: f("rho"),
                eps: f("eps"),
            },
            Adam | Adamw => RuleSettings::Adam {
                beta1: f("beta1"),
                beta2: f("beta2"),
                eps: f("eps"),
                amsgrad: self.flag("amsgrad"),
            },
            Nadam => RuleSettings::Nadam {
                beta1: f("beta1"),
                beta2: f("beta2"),
                eps: f("eps"),
                momentum_decay: f("momentum_decay"),
            },
            Radam => RuleSettings::Radam {
                beta1: f("beta1"),
                beta2: f("beta2"),
                eps: f("eps"),
            },
            Adamax => RuleSettings::Adamax {
                beta1: f("beta1"),
                beta2: f("beta2"),
                eps: f("eps"),
            },
        };
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

    /// A boolean hyper-parameter (`decoupled_weight_decay` is always true for AdamW).
    pub fn flag(&self, key: &str) -> bool {
        if key == "decoupled_weight_decay" && self.kind == OptimizerKind::Adamw {
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

/// Each rule's hyper-parameters (torch's names; `beta1`, `beta2` are
/// `betas`). AdamW is [`RuleSettings::Adam`] with [`Decay::Decoupled`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RuleSettings {
    Sgd {
        momentum: Momentum,
    },
    Adagrad {
        lr_decay: f64,
        initial_accumulator_value: f64,
        eps: f64,
    },
    Rmsprop {
        alpha: f64,
        eps: f64,
        centered: bool,
        momentum: f64,
    },
    Adadelta {
        rho: f64,
        eps: f64,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        amsgrad: bool,
    },
    Nadam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        momentum_decay: f64,
    },
    Radam {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Adamax {
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
}

/// SGD's momentum: none (`momentum = 0`), heavy-ball with dampening, or
/// Nesterov's (which torch allows only without dampening).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Momentum {
    None,
    Heavy { momentum: f64, dampening: f64 },
    Nesterov { momentum: f64 },
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

fn parse_f64(raw: &RawValue) -> Option<f64> {
    match raw {
        RawValue::Text(s) => s.trim().parse().ok(),
        RawValue::Toml(toml::Value::Float(x)) => Some(*x),
        RawValue::Toml(toml::Value::Integer(i)) => Some(*i as f64),
        RawValue::Toml(_) => None,
    }
}

fn parse_bool(raw: &RawValue) -> Option<bool> {
    match raw {
        RawValue::Text(s) => match s.trim() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        RawValue::Toml(toml::Value::Boolean(b)) => Some(*b),
        RawValue::Toml(_) => None,
    }
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
                    OptimizerKind::ALL.map(|k| k.name()).join(", ")
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
