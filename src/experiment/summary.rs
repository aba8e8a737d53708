//! The answer on one page (`sparsity-lab summary`): every study's declared
//! hypotheses ([`super::hypotheses`]) tested from its committed run records,
//! written as the generated block of FINDINGS.md (between [`BEGIN`] and
//! [`END`]; the prose around it is left as it is) and a forest plot.
//!
//! No number in the block is typed by hand: rerun the command after any
//! study's records change, and commit both files (tests/summary.rs checks
//! that the committed ones equal what the command writes).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::hypotheses::{Outcome, Verdict, p_text, test_family};
use super::report::load_groups;
use super::study::{Study, list};
use crate::bail_usage;
use crate::io::write_atomic;

/// The line that opens the generated block (matched by its start).
pub const BEGIN: &str = "<!-- summary:begin";
/// The line that closes it.
pub const END: &str = "<!-- summary:end -->";

/// Where the block's image link points (from the repository root, where
/// FINDINGS.md is), whatever `--svg` the command was given.
pub const FOREST_LINK: &str = "experiments/forest.svg";

/// Studies whose runs are not results (the tests' tiny study): their
/// hypotheses exercise the report, not the answer.
const NOT_RESULTS: [&str; 1] = ["smoke"];

/// The order of settings in the table.
const SETTINGS: [&str; 4] = ["MNIST MLP", "Fashion-MNIST MLP", "CNN", "Transformer"];

/// One study's family, tested.
pub struct StudyOutcomes {
    pub study: String,
    pub outcomes: Vec<Outcome>,
}

/// Every study of `experiments` that declares hypotheses and has a results
/// folder `experiments/<name>/runs`, tested.
pub fn collect(experiments: &Path) -> Result<Vec<StudyOutcomes>> {
    let mut out = vec![];
    for name in list(experiments)
        .with_context(|| format!("summary: cannot read {}", experiments.display()))?
    {
        if NOT_RESULTS.contains(&name.as_str()) {
            continue;
        }
        let study = Study::load(&experiments.join(format!("{name}.toml")), false, &[])?;
        let dir = experiments.join(&name);
        if study.hypotheses.is_empty() || !dir.join("runs").is_dir() {
            continue;
        }
        let groups = load_groups(&dir)?;
        out.push(StudyOutcomes {
            outcomes: test_family(&study.hypotheses, &groups, &study.baselines()),
            study: name,
        });
    }
    Ok(out)
}

/// A setting's place in the table: [`SETTINGS`]' order, a variant of one
/// ("CNN (7 conv)") right after it, anything else last.
fn setting_rank(setting: &str) -> usize {
    let exact = SETTINGS.iter().position(|s| *s == setting);
    let variant = || {
        SETTINGS
            .iter()
            .position(|s| setting.starts_with(&format!("{s} (")))
    };
    match (exact, variant()) {
        (Some(i), _) => 2 * i,
        (None, Some(i)) => 2 * i + 1,
        (None, None) => 2 * SETTINGS.len(),
    }
}

/// The rows in table order: claim, then setting (MNIST MLP, Fashion-MNIST
/// MLP, CNN and its variants, Transformer and its variants, others), then
/// study and declaration order.
pub fn rows(all: &[StudyOutcomes]) -> Vec<(&str, &Outcome)> {
    let mut rows: Vec<(usize, usize, &str, &Outcome)> = vec![];
    for s in all {
        for (i, o) in s.outcomes.iter().enumerate() {
            rows.push((i, 0, &s.study, o));
        }
    }
    let setting_rank = |o: &Outcome| setting_rank(&o.setting);
    for (k, r) in rows.iter_mut().enumerate() {
        r.1 = k;
    }
    rows.sort_by(|a, b| {
        a.3.hypothesis
            .claim
            .cmp(&b.3.hypothesis.claim)
            .then(setting_rank(a.3).cmp(&setting_rank(b.3)))
            .then(a.1.cmp(&b.1))
    });
    rows.into_iter().map(|(_, _, s, o)| (s, o)).collect()
}

fn verdict_cell(o: &Outcome) -> String {
    match o.verdict {
        Verdict::Confirmed | Verdict::Contradicted => format!("**{}**", o.verdict_text()),
        _ => o.verdict_text(),
    }
}

/// The generated block, markers included.
pub fn markdown(all: &[StudyOutcomes]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{BEGIN} (written by `sparsity-lab summary` from the studies' run records; do not edit by hand) -->"
    );
    let n: usize = all.iter().map(|s| s.outcomes.len()).sum();
    let count = |f: fn(&Verdict) -> bool| {
        all.iter()
            .flat_map(|s| &s.outcomes)
            .filter(|o| f(&o.verdict))
            .count()
    };
    let before = all
        .iter()
        .flat_map(|s| &s.outcomes)
        .filter(|o| o.declared_before)
        .count();
    let _ = writeln!(
        out,
        "\n## The answer, claim by claim\n\n\
         {n} hypotheses, each declared in its study file (`[[hypotheses]]`, with the reason it is there), in {} \
         studies ({}). {} of them were declared before the runs they are tested on (*declared*: \
         \"before\"; every run records the fingerprints of the hypotheses its study file declared when it was \
         trained), so they are confirmatory in substance; the other {} were written after their runs (\"after\") \
         and are confirmatory in form only, until the study is retrained. Each row: the claim of STUDY.md it tests, the setting, the comparison a − b \
         paired by seed and the direction the hypothesis expects, the mean difference with its two-sided 95 % \
         confidence interval (percentage points for fractions), the pairs n, the paired t-test's p-value \
         (one-sided for a directional hypothesis) after Holm's adjustment within the study's family, and the \
         verdict: *confirmed* when that p is below 0.05 with the mean in the declared direction, *contradicted* \
         when the interval excludes 0 on the other side, *not decided* otherwise. {} confirmed, {} contradicted, \
         {} not decided. Every other comparison in the studies' tables is exploratory.\n",
        all.len(),
        all.iter()
            .map(|s| format!("`{}`", s.study))
            .collect::<Vec<_>>()
            .join(", "),
        before,
        n - before,
        count(|v| *v == Verdict::Confirmed),
        count(|v| *v == Verdict::Contradicted),
        count(|v| !matches!(v, Verdict::Confirmed | Verdict::Contradicted)),
    );
    let header = [
        "claim",
        "setting",
        "hypothesis",
        "a − b",
        "measure",
        "expected",
        "effect [95 % CI]",
        "n",
        "Holm p",
        "verdict",
        "declared",
    ];
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|---|---|---|---|---|:-:|---:|---:|---:|---|---|");
    for (study, o) in rows(all) {
        let n = o.paired.as_ref().map_or(0, |p| p.n);
        let p = if o.p.is_some() {
            p_text(o.p_holm)
        } else {
            "–".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | `{study}:{}` | {} − {} | {} | {} 0 | {} {} | {n} | {p} | {} | {} |",
            o.hypothesis.claim,
            o.setting,
            o.hypothesis.id,
            o.a,
            o.b,
            o.measure_name.replace('|', "\\|"),
            o.direction.symbol(),
            o.effect(),
            o.unit(),
            verdict_cell(o),
            if o.declared_before { "before" } else { "after" },
        );
    }
    let _ = writeln!(
        out,
        "\n![forest plot: each hypothesis's mean difference and 95 % interval, each row on its own scale symmetric about 0]({FOREST_LINK})\n\n{END}"
    );
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The forest plot: one row per hypothesis (the table's order), the mean
/// difference and its 95 % interval on the row's own scale, symmetric about
/// 0 (the measures have different units); the numbers are written beside.
pub fn forest_svg(all: &[StudyOutcomes]) -> String {
    let rows = rows(all);
    let (w, row_h, top) = (1000.0, 22.0, 48.0);
    let (left, plot_w) = (430.0, 240.0);
    let zero = left + plot_w / 2.0;
    let h = top + row_h * rows.len() as f64 + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">Confirmatory hypotheses: a − b, mean and 95 % CI (each row on its own scale; 0 at the line)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">green: confirmed (Holm within the study); red: contradicted; grey: not decided. The arrow is the declared direction.</text>"##
    );
    let _ = writeln!(
        s,
        r##"<line x1="{zero}" y1="{}" x2="{zero}" y2="{}" stroke="#888" stroke-dasharray="3,3"/>"##,
        top - 4.0,
        h - 24.0
    );
    for (i, (study, o)) in rows.iter().enumerate() {
        let y = top + row_h * (i as f64 + 0.5);
        if i % 2 == 0 {
            let _ = writeln!(
                s,
                r##"<rect x="0" y="{}" width="{w}" height="{row_h}" fill="#f4f4f4"/>"##,
                y - row_h / 2.0
            );
        }
        let label = format!(
            "{} {} · {}:{} · {} − {} · {}",
            o.hypothesis.claim, o.setting, study, o.hypothesis.id, o.a, o.b, o.measure_name
        );
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" textLength="{}" lengthAdjust="spacingAndGlyphs">{}</text>"#,
            y + 4.0,
            (label.chars().count() as f64 * 6.2).min(left - 20.0),
            xml(&label)
        );
        let colour = match o.verdict {
            Verdict::Confirmed => "#1a7f37",
            Verdict::Contradicted => "#cf222e",
            _ => "#6e7781",
        };
        let arrow = match o.direction.symbol() {
            ">" => "→",
            "<" => "←",
            _ => "↔",
        };
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" fill="#888">{arrow}</text>"##,
            left - 16.0,
            y + 4.0
        );
        if let Some(p) = &o.paired {
            let (lo, hi) = if p.lo.is_finite() && p.hi.is_finite() {
                (p.lo, p.hi)
            } else {
                (p.mean, p.mean)
            };
            let r = lo.abs().max(hi.abs()).max(p.mean.abs()) * 1.1;
            let x = |v: f64| {
                if r > 0.0 {
                    zero + v / r * plot_w / 2.0
                } else {
                    zero
                }
            };
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{y}" x2="{:.1}" y2="{y}" stroke="{colour}" stroke-width="2"/>"#,
                x(lo),
                x(hi)
            );
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{y}" r="4" fill="{colour}"/>"#,
                x(p.mean)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" fill="{colour}">{} {} · {}</text>"#,
            left + plot_w + 12.0,
            y + 4.0,
            xml(&o.effect()),
            o.unit(),
            xml(&o.verdict_text())
        );
    }
    s.push_str("</svg>\n");
    s
}

/// `text` with the block between [`BEGIN`] and [`END`] replaced by `block`.
/// `what` names the file in the error when the markers are missing.
pub fn replace_block(text: &str, block: &str, what: &str) -> Result<String> {
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        bail_usage!(
            "{what} has no generated block; add a line `{BEGIN} -->` and a line `{END}` where the summary belongs"
        );
    };
    if e < b {
        bail_usage!("{what}: `{END}` comes before `{BEGIN}`; put the begin marker first");
    }
    let mut out = text[..b].to_string();
    out.push_str(block.trim_end_matches('\n'));
    out.push_str(&text[e + END.len()..]);
    Ok(out)
}

/// Tests every study's hypotheses and writes the block into `findings`
/// and the forest plot to `svg`. Returns the number of hypotheses.
pub fn write(experiments: &Path, findings: &Path, svg: &Path) -> Result<usize> {
    let all = collect(experiments)?;
    let what = findings.display().to_string();
    let text = std::fs::read_to_string(findings)
        .map_err(|e| crate::error::usage(format!("cannot read {what}: {e}")))?;
    let new = replace_block(&text, &markdown(&all), &what)?;
    write_atomic(findings, new.as_bytes())?;
    if let Some(parent) = svg.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    write_atomic(svg, forest_svg(&all).as_bytes())?;
    Ok(all.iter().map(|s| s.outcomes.len()).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_block_is_replaced_and_the_prose_kept() {
        let text = format!("# Findings\n\n{BEGIN} old -->\nold table\n{END}\n\nProse.\n");
        let block = format!("{BEGIN} new -->\nnew\n{END}\n");
        let got = replace_block(&text, &block, "F.md").unwrap();
        assert_eq!(
            got,
            format!("# Findings\n\n{BEGIN} new -->\nnew\n{END}\n\nProse.\n")
        );
        // Idempotent.
        assert_eq!(replace_block(&got, &block, "F.md").unwrap(), got);
        let e = replace_block("no markers", &block, "F.md").unwrap_err();
        assert!(crate::error::is_usage(&e));
        assert!(
            format!("{e}").contains("F.md has no generated block"),
            "{e}"
        );
        let e = replace_block(&format!("{END}\n{BEGIN} -->"), &block, "F.md").unwrap_err();
        assert!(format!("{e}").contains("comes before"));
    }

    #[test]
    fn variants_of_a_setting_follow_it() {
        let mut got = vec![
            "MLP (text)",
            "Transformer (modadd)",
            "CNN (7 conv)",
            "Transformer",
            "CNN",
            "Fashion-MNIST MLP",
            "MNIST MLP",
            "CNNs",
        ];
        got.sort_by_key(|s| setting_rank(s));
        assert_eq!(
            got,
            [
                "MNIST MLP",
                "Fashion-MNIST MLP",
                "CNN",
                "CNN (7 conv)",
                "Transformer",
                "Transformer (modadd)",
                "MLP (text)",
                "CNNs",
            ]
        );
    }

    #[test]
    fn svg_text_is_escaped() {
        assert_eq!(xml("a<b & \"c\">"), "a&lt;b &amp; &quot;c&quot;&gt;");
    }
}
