//! Character-level text from a local file; tiny-shakespeare is the
//! reference corpus. The last `holdout` fraction of the text is held out.
//! With `validation`, the part of the text just before the held-out end is
//! evaluated on instead, for tuning; the held-out end is then not used.

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::dataset::{Dataset, Split, Task};
use crate::bail_usage;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TextConfig {
    /// The text file. Without it: `$SPARSITY_LAB_DATA/tinyshakespeare/input.txt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Fraction of the text, at the end, held out for evaluation.
    pub holdout: f64,
    /// Fraction of the whole text, just before the held-out end, to evaluate
    /// on instead of the held-out end (a validation split of the training
    /// text, for tuning). Without it: evaluate on the held-out end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<f64>,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            path: None,
            holdout: 0.1,
            validation: None,
        }
    }
}

/// Checks the settings without reading the file.
pub fn check(c: &TextConfig) -> Result<()> {
    if !(c.holdout > 0.0 && c.holdout < 1.0) {
        bail_usage!("text: `holdout` must be in (0, 1), got {}", c.holdout);
    }
    if let Some(v) = c.validation
        && !(v > 0.0 && v + c.holdout < 1.0)
    {
        bail_usage!(
            "text: `validation` must be > 0 and leave training text (validation + holdout < 1), got {v} with holdout {}; e.g. validation = 0.1",
            c.holdout
        );
    }
    Ok(())
}

pub fn load(c: &TextConfig) -> Result<Dataset> {
    check(c)?;
    let path = match (&c.path, std::env::var_os("SPARSITY_LAB_DATA")) {
        (Some(p), _) => p.clone(),
        (None, Some(root)) => PathBuf::from(root).join("tinyshakespeare/input.txt"),
        (None, None) => bail_usage!(
            "text: no file given; set `path` in the study's [data] table, pass --data-dir FILE, \
             or set SPARSITY_LAB_DATA=ROOT with ROOT/tinyshakespeare/input.txt \
             (tiny-shakespeare: data/tinyshakespeare/input.txt of github.com/karpathy/char-rnn)"
        ),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => bail_usage!(
            "text: cannot read {}: {e}; give the file with `path`, --data-dir FILE or SPARSITY_LAB_DATA",
            path.display()
        ),
    };
    let chars: Vec<char> = text.chars().collect();
    let mut vocab: Vec<char> = chars.clone();
    vocab.sort_unstable();
    vocab.dedup();
    if chars.len() < 1000 {
        bail_usage!(
            "text: {} has only {} characters; need at least 1000",
            path.display(),
            chars.len()
        );
    }
    if vocab.len() < 2 {
        bail_usage!(
            "text: {} holds only one distinct character ({:?}); there is nothing to predict, give a text with at least two",
            path.display(),
            vocab[0]
        );
    }
    let ids: Vec<u32> = chars
        .iter()
        .map(|ch| vocab.binary_search(ch).expect("in vocab") as u32)
        .collect();
    let n_test = ((ids.len() as f64) * (1.0 - c.holdout)) as usize;
    let (n_train, end, held_out) = match c.validation {
        None => (
            n_test,
            ids.len(),
            format!("the last {:.0}%", 100.0 * c.holdout),
        ),
        Some(v) => (
            n_test - ((ids.len() as f64) * v) as usize,
            n_test,
            format!(
                "validation: the {:.0}% of the text before the last {:.0}% (unused)",
                100.0 * v,
                100.0 * c.holdout
            ),
        ),
    };
    Ok(Dataset {
        name: "text".into(),
        task: Task::NextToken { vocab: vocab.len() },
        train: Split::Stream {
            tokens: ids[..n_train].to_vec(),
        },
        test: Split::Stream {
            tokens: ids[n_train..end].to_vec(),
        },
        description: format!(
            "text {}: {} characters (vocabulary {}), held out: {held_out} ({} characters)",
            path.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            ids.len(),
            vocab.len(),
            end - n_train
        ),
        location: Some(path.display().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_file_into_a_vocabulary_and_holds_out_the_end() {
        let path =
            std::env::temp_dir().join(format!("sparsity-lab-text-{}.txt", std::process::id()));
        let text: String = "to be or not to be\n".repeat(100);
        std::fs::write(&path, &text).unwrap();
        let d = load(&TextConfig {
            path: Some(path.clone()),
            holdout: 0.25,
            validation: None,
        })
        .unwrap();
        // distinct chars: '\n', ' ', b, e, n, o, r, t
        assert_eq!(d.task, Task::NextToken { vocab: 8 });
        assert_eq!(d.train.len() + d.test.len(), text.len());
        assert_eq!(d.test.len(), text.len() / 4);
        let Split::Stream { tokens } = &d.train else {
            panic!()
        };
        assert_eq!(tokens[..2], [7, 5]); // "to"

        // A validation split: the 20% before the held-out 25%, which is not used.
        let v = load(&TextConfig {
            path: Some(path.clone()),
            holdout: 0.25,
            validation: Some(0.2),
        })
        .unwrap();
        let (Split::Stream { tokens: vtrain }, Split::Stream { tokens: vtest }) =
            (&v.train, &v.test)
        else {
            panic!()
        };
        assert_eq!(vtrain.len(), text.len() * 3 / 4 - text.len() / 5);
        assert_eq!(vtest.len(), text.len() * 20 / 100);
        assert_eq!(vtrain[..], tokens[..vtrain.len()]);
        assert_eq!(vtest[..], tokens[vtrain.len()..]);
        assert!(v.description.contains("validation"), "{}", v.description);
        for bad in [0.0, -0.1, 0.75, 0.9] {
            let err = load(&TextConfig {
                path: Some(path.clone()),
                holdout: 0.25,
                validation: Some(bad),
            })
            .unwrap_err();
            assert!(format!("{err}").contains("`validation`"), "{bad}: {err}");
        }
        std::fs::remove_file(path).unwrap();
        let err = load(&TextConfig {
            path: Some("/nonexistent.txt".into()),
            holdout: 0.1,
            validation: None,
        })
        .unwrap_err();
        assert!(format!("{err}").contains("/nonexistent.txt"));
    }
}
