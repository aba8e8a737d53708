//! The reproduction verdict: a fresh results folder against the committed
//! reference, cell by cell of `results.csv`, each difference in units of the
//! reference's standard deviation over seeds.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One table cell that differs.
#[derive(Clone, Debug, PartialEq)]
pub struct CellDiff {
    /// `task / optimizer`.
    pub row: String,
    /// The CSV column (a mean), or a text column such as `config`.
    pub column: String,
    pub fresh: String,
    pub reference: String,
    /// (fresh - reference) / the reference's sd over seeds, when both are
    /// numbers and the sd is positive.
    pub z: Option<f64>,
}

/// How a fresh folder compares with its reference.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub fresh: PathBuf,
    pub reference: PathBuf,
    /// results.csv equal byte for byte.
    pub csv_identical: bool,
    /// results.md equal byte for byte.
    pub md_identical: bool,
    /// Cells compared (rows in both x columns in both).
    pub cells: usize,
    pub diffs: Vec<CellDiff>,
    /// Rows in only one of the two tables.
    pub only_fresh: Vec<String>,
    pub only_reference: Vec<String>,
}

impl Verdict {
    pub fn identical(&self) -> bool {
        self.csv_identical && self.md_identical
    }
}

/// Compares `fresh/results.csv` (and results.md) with `reference/`'s.
pub fn compare(fresh: &Path, reference: &Path) -> Result<Verdict> {
    let read = |d: &Path, f: &str| {
        let p = d.join(f);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    };
    let (fc, rc) = (read(fresh, "results.csv")?, read(reference, "results.csv")?);
    let md_identical = match (read(fresh, "results.md"), read(reference, "results.md")) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let (ft, rt) = (
        Table::parse(&String::from_utf8_lossy(&fc)),
        Table::parse(&String::from_utf8_lossy(&rc)),
    );
    let mut v = Verdict {
        fresh: fresh.to_path_buf(),
        reference: reference.to_path_buf(),
        csv_identical: fc == rc,
        md_identical,
        cells: 0,
        diffs: vec![],
        only_fresh: ft
            .rows
            .keys()
            .filter(|k| !rt.rows.contains_key(*k))
            .cloned()
            .collect(),
        only_reference: rt
            .rows
            .keys()
            .filter(|k| !ft.rows.contains_key(*k))
            .cloned()
            .collect(),
    };
    for (key, frow) in &ft.rows {
        let Some(rrow) = rt.rows.get(key) else {
            continue;
        };
        for (ci, col) in ft.header.iter().enumerate().skip(2) {
            if col.ends_with("_std") {
                continue;
            }
            let Some(ri) = rt.header.iter().position(|h| h == col) else {
                continue;
            };
            let (a, b) = (
                frow.get(ci).map(String::as_str).unwrap_or(""),
                rrow.get(ri).map(String::as_str).unwrap_or(""),
            );
            v.cells += 1;
            if a == b {
                continue;
            }
            let sd = col.strip_suffix("_mean").and_then(|stem| {
                let si = rt.header.iter().position(|h| *h == format!("{stem}_std"))?;
                rrow.get(si)?.parse::<f64>().ok()
            });
            let z = match (a.parse::<f64>(), b.parse::<f64>(), sd) {
                (Ok(x), Ok(y), Some(sd)) if sd > 0.0 => Some((x - y) / sd),
                _ => None,
            };
            v.diffs.push(CellDiff {
                row: key.clone(),
                column: col.clone(),
                fresh: a.to_string(),
                reference: b.to_string(),
                z,
            });
        }
    }
    // Largest first: differences with no sd (a change in a constant, or in
    // text) before those measured in sd.
    v.diffs.sort_by(|x, y| {
        let k = |d: &CellDiff| d.z.map_or(f64::INFINITY, f64::abs);
        k(y).total_cmp(&k(x))
    });
    Ok(v)
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.reference.display();
        if self.identical() {
            return write!(
                f,
                "reproduction: identical to the reference {r} (results.csv and results.md byte for byte, {} cells)",
                self.cells
            );
        }
        if self.diffs.is_empty() && self.only_fresh.is_empty() && self.only_reference.is_empty() {
            return write!(
                f,
                "reproduction: every table cell equals the reference {r} ({} cells); results.md differs in its text{}",
                self.cells,
                if self.csv_identical {
                    ""
                } else {
                    " and results.csv in layout"
                }
            );
        }
        let within = |t: f64| {
            self.diffs
                .iter()
                .filter(|d| d.z.is_some_and(|z| z.abs() <= t))
                .count()
        };
        write!(
            f,
            "reproduction: {} of {} cells differ from the reference {r}/results.csv ({} within 1 seed sd, {} within 2, {} beyond 2 or with no sd)",
            self.diffs.len(),
            self.cells,
            within(1.0),
            within(2.0) - within(1.0),
            self.diffs.len() - within(2.0)
        )?;
        for d in self.diffs.iter().take(10) {
            write!(
                f,
                "\n  {}, {}: {} -> {}{}",
                d.row,
                d.column,
                if d.reference.is_empty() {
                    "(empty)"
                } else {
                    &d.reference
                },
                if d.fresh.is_empty() {
                    "(empty)"
                } else {
                    &d.fresh
                },
                d.z.map(|z| format!(" ({z:+.2} sd)")).unwrap_or_default()
            )?;
        }
        if self.diffs.len() > 10 {
            write!(f, "\n  ... and {} more", self.diffs.len() - 10)?;
        }
        for (which, rows) in [
            ("only in the fresh results", &self.only_fresh),
            ("only in the reference", &self.only_reference),
        ] {
            if !rows.is_empty() {
                write!(f, "\n  rows {which}: {}", rows.join("; "))?;
            }
        }
        Ok(())
    }
}

/// A results.csv: the header, and rows by `task / optimizer`.
struct Table {
    header: Vec<String>,
    rows: BTreeMap<String, Vec<String>>,
}

impl Table {
    /// Reads a report's CSV (the `csv` crate's reader: quoted fields may
    /// hold commas, quotes and line breaks); rows are keyed by their first
    /// two fields (task / configuration).
    fn parse(text: &str) -> Self {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut records = reader
            .records()
            .map_while(|r| r.ok())
            .map(|r| r.iter().map(String::from).collect::<Vec<String>>());
        let header = records.next().unwrap_or_default();
        let rows = records
            .filter(|r| r.len() >= 2)
            .map(|r| (format!("{} / {}", r[0], r[1]), r))
            .collect();
        Self { header, rows }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str, csv: &str, md: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "sparsity-lab-compare-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("results.csv"), csv).unwrap();
        std::fs::write(d.join("results.md"), md).unwrap();
        d
    }

    const CSV: &str = "task,optimizer,config,done,acc_mean,acc_std\n\
                       t,\"Adam, lr=1\",adam,3,0.970000,0.010000\n\
                       t,SGD,sgd,3,0.950000,0.000000\n";

    #[test]
    fn identical_folders() {
        let (a, b) = (folder("a1", CSV, "x"), folder("b1", CSV, "x"));
        let v = compare(&a, &b).unwrap();
        assert!(v.identical() && v.diffs.is_empty());
        assert_eq!(v.cells, 6, "3 compared columns x 2 rows");
        assert!(v.to_string().contains("identical"));
    }

    #[test]
    fn differences_in_seed_sd() {
        let fresh = CSV
            .replace("0.970000,0.010000", "0.985000,0.012000")
            .replace("0.950000", "0.951000");
        let (a, b) = (
            folder("a2", &fresh, "x"),
            folder("b2", &(CSV.to_string() + "u,Adam,adam,3,0.5,0.1\n"), "x"),
        );
        let v = compare(&a, &b).unwrap();
        assert!(!v.identical());
        assert_eq!(v.diffs.len(), 2);
        // The SGD cell has sd 0 in the reference: no z, listed first.
        assert_eq!((v.diffs[0].row.as_str(), v.diffs[0].z), ("t / SGD", None));
        let z = v.diffs[1].z.unwrap();
        assert!(
            (z - 1.5).abs() < 1e-9,
            "(0.985 - 0.970) / 0.010 = 1.5, got {z}"
        );
        assert_eq!(v.diffs[1].row, "t / Adam, lr=1", "quoted field kept whole");
        assert_eq!(v.only_reference, vec!["u / Adam".to_string()]);
        let text = v.to_string();
        assert!(text.contains("2 of 6 cells differ"), "{text}");
        assert!(
            text.contains("+1.50 sd") && text.contains("u / Adam"),
            "{text}"
        );
    }

    /// A quoted field may hold quotes and a line break (what the report's
    /// writer produces for such a label): the row stays one row.
    #[test]
    fn quoted_quotes_and_line_breaks_stay_in_their_field() {
        let t =
            Table::parse("task,optimizer,acc_mean\nt,\"say \"\"hi\"\"\nthere\",0.5\nt,SGD,0.4\n");
        assert_eq!(t.header, vec!["task", "optimizer", "acc_mean"]);
        let keys: Vec<&String> = t.rows.keys().collect();
        assert_eq!(keys, vec!["t / SGD", "t / say \"hi\"\nthere"]);
        assert_eq!(t.rows["t / say \"hi\"\nthere"][2], "0.5");
    }
}
