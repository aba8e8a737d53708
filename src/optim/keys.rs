//! The hyper-parameter keys: every key any optimizer accepts, with its type,
//! general default, allowed range and one-line description, and the parsing
//! of raw values (command-line text or TOML) into them. Which optimizer
//! takes which key, and its own defaults, is in the registry
//! (`registry.rs`).

use std::collections::BTreeMap;
use std::fmt;

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
    pub(crate) fn contains(self, x: f64) -> bool {
        match self {
            Range::NonNeg => x >= 0.0,
            Range::Unit => (0.0..=1.0).contains(&x),
            Range::UnitOpen => (0.0..1.0).contains(&x),
        }
    }
    pub(crate) fn describe(self) -> &'static str {
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
/// defaults; per-optimizer differences are in the registry (`Info::defaults`).
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

pub(crate) fn parse_f64(raw: &RawValue) -> Option<f64> {
    match raw {
        RawValue::Text(s) => s.trim().parse().ok(),
        RawValue::Toml(toml::Value::Float(x)) => Some(*x),
        RawValue::Toml(toml::Value::Integer(i)) => Some(*i as f64),
        RawValue::Toml(_) => None,
    }
}

pub(crate) fn parse_bool(raw: &RawValue) -> Option<bool> {
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

/// A configuration's values by key, as the registry's rule constructors
/// read them (panics on a key the optimizer does not have: a programming
/// error, not a user's).
pub struct Values<'a>(pub(crate) &'a BTreeMap<&'static str, Value>);

impl Values<'_> {
    pub fn get(&self, key: &str) -> f64 {
        match self.0.get(key) {
            Some(Value::F(x)) => *x,
            other => panic!("no numeric key `{key}` ({other:?})"),
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        match self.0.get(key) {
            Some(Value::B(b)) => *b,
            other => panic!("no boolean key `{key}` ({other:?})"),
        }
    }
}
