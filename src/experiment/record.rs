//! A study's run records: a [`RunRecord`] (what `train` writes for any run)
//! with the run's place in its study, and the runs of one row of a table.

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::train::{RunRecord, Status};

/// A run's place in a study, so that reports can be rebuilt from the run
/// files alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyRun {
    pub study: String,
    pub task: String,
    pub label: String,
    /// (task index, optimizer index) in the study file.
    pub order: (usize, usize),
    /// The fingerprints of the hypotheses the study file declared when the
    /// run was trained ([`super::hypotheses::Hypothesis::fingerprint`]):
    /// what shows, from the records alone, that a hypothesis came before
    /// its data. Empty in records from before this field.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared: Vec<String>,
}

impl StudyRun {
    /// The checkpoint metadata that names the run's place.
    pub fn metadata(&self) -> [(&'static str, String); 3] {
        [
            ("study", self.study.clone()),
            ("task", self.task.clone()),
            ("label", self.label.clone()),
        ]
    }
}

/// The JSON a study writes per run: the run's record and, after it, where
/// the run belongs. Reads as the [`RunRecord`] it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StudyRecord {
    #[serde(flatten)]
    pub run: RunRecord,
    /// None in a record that `train` wrote outside a study.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub study: Option<StudyRun>,
}

impl Deref for StudyRecord {
    type Target = RunRecord;
    fn deref(&self) -> &RunRecord {
        &self.run
    }
}

impl DerefMut for StudyRecord {
    fn deref_mut(&mut self) -> &mut RunRecord {
        &mut self.run
    }
}

/// The runs of one optimizer on one task.
pub struct Group {
    pub task: String,
    pub label: String,
    pub order: (usize, usize),
    pub optimizer: String,
    pub runs: Vec<StudyRecord>,
}

impl Group {
    /// Finished runs with final measures.
    pub fn done(&self) -> impl Iterator<Item = &StudyRecord> {
        self.runs
            .iter()
            .filter(|r| r.status == Status::Done && r.r#final.is_some())
    }
    /// How many runs ended with status `s`.
    pub fn count(&self, s: Status) -> usize {
        self.runs.iter().filter(|r| r.status == s).count()
    }
}
