//! The source files under `src/` import one another one way only: no two
//! files import each other, directly or around a loop. A file imports
//! another when it names an item of that file's module by path: in a `use`
//! (`use crate::a::b`, `use super::{c, d}`), inline (`crate::a::f()`,
//! `super::g`), or through a child module it declares (`child::f()`).
//! `mod` declarations alone are not imports, and neither are paths into
//! other crates nor the paths of test modules (`#[cfg(test)] mod tests`),
//! which may test a file through any part of the crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module path, `[]` for the crate root.
type Module = Vec<String>;

/// The module a file under `src/` defines: `a.rs` and `a/mod.rs` are `a`.
fn module_of(rel: &str) -> Option<Module> {
    let rel = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    match parts.last().map(String::as_str) {
        Some("lib") if parts.len() == 1 => Some(vec![]),
        Some("main") if parts.len() == 1 => None, // the binary: another crate
        Some("mod") => {
            parts.pop();
            Some(parts)
        }
        _ => Some(parts),
    }
}

/// The code without comments, string and character literals.
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '/' if c.get(i + 1) == Some(&'/') => {
                while i < c.len() && c[i] != '\n' {
                    i += 1;
                }
            }
            '/' if c.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < c.len() {
                    if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(' ');
            }
            'r' if (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
                && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_')) =>
            {
                // A raw string r"..." or r#"..."#.
                let mut j = i + 1;
                let mut hashes = 0;
                while c.get(j) == Some(&'#') {
                    hashes += 1;
                    j += 1;
                }
                if c.get(j) != Some(&'"') {
                    out.push(c[i]);
                    i += 1;
                    continue;
                }
                j += 1;
                loop {
                    if j >= c.len() {
                        break;
                    }
                    if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                        j += 1 + hashes;
                        break;
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j;
            }
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            '\'' => {
                // A character literal ('a', '\n', '\u{..}'), else a lifetime.
                if c.get(i + 1) == Some(&'\\') {
                    let mut j = i + 2;
                    while j < c.len() && c[j] != '\'' {
                        j += 1;
                    }
                    i = j + 1;
                    out.push_str("' '");
                } else if c.get(i + 2) == Some(&'\'') {
                    i += 3;
                    out.push_str("' '");
                } else {
                    out.push('\'');
                    i += 1;
                }
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// Tokens: identifiers, `::`, and single punctuation characters.
fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut out = vec![];
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphanumeric() || c[i] == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(c[s..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else if !c[i].is_whitespace() {
            out.push(c[i].to_string());
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The paths a `use` tree names, from the token after `use` to its `;`.
fn use_paths(t: &[String], prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "::" => i += 1,
            "{" => {
                i += 1;
                loop {
                    i += use_paths(&t[i..], path.clone(), out);
                    match t.get(i).map(String::as_str) {
                        Some(",") => i += 1,
                        Some("}") => {
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                    if t.get(i).map(String::as_str) == Some("}") {
                        i += 1;
                        break;
                    }
                }
                return i;
            }
            "," | "}" | ";" => break,
            "as" => i += 2,
            "*" => i += 1,
            w => {
                path.push(w.to_string());
                i += 1;
            }
        }
    }
    out.push(path);
    i
}

/// Whether the attributes just before a `mod` (the end of `before`)
/// include a `#[cfg(..test..)]`.
fn is_test_module(before: &[String]) -> bool {
    let mut end = before.len();
    while end > 0 && before[end - 1] == "]" {
        let Some(start) = before[..end].iter().rposition(|x| x == "#") else {
            return false;
        };
        let attr = &before[start..end];
        if attr.get(2).is_some_and(|x| x == "cfg") && attr.iter().any(|x| x == "test") {
            return true;
        }
        end = start;
    }
    false
}

/// The module paths a file names: from `use` trees and inline paths, as
/// written (`crate`, `super`, `self`, or a first segment), each with how
/// deep inside inline modules (`mod tests { .. }`) it stands.
fn named_paths(code: &str) -> Vec<(usize, Vec<String>)> {
    let t = tokens(&strip(code));
    let mut out = vec![];
    // The brace depth at which each open inline module began, and whether
    // it is a test module (`#[cfg(test)] mod tests { .. }`).
    let mut inline: Vec<(usize, bool)> = vec![];
    let mut braces = 0;
    let mut i = 0;
    while i < t.len() {
        match t[i].as_str() {
            "{" => braces += 1,
            "}" => {
                braces -= 1;
                if inline.last().map(|m| m.0) == Some(braces) {
                    inline.pop();
                }
            }
            "mod" if t.get(i + 2).map(String::as_str) == Some("{") => {
                let test = is_test_module(&t[..i]);
                inline.push((braces, test));
                braces += 1;
                i += 3;
                continue;
            }
            _ => {}
        }
        let depth = inline.len();
        if inline.iter().any(|m| m.1) {
            // Test code may use any part of the crate.
            i += 1;
            continue;
        }
        if t[i] == "use" {
            let end = (i..t.len()).find(|&j| t[j] == ";").unwrap_or(t.len());
            let mut paths = vec![];
            use_paths(&t[i + 1..end], vec![], &mut paths);
            out.extend(paths.into_iter().map(|p| (depth, p)));
            i = end + 1;
            continue;
        }
        // An inline path: IDENT :: IDENT (:: IDENT)*, not preceded by `::`.
        let ident = |s: &str| s.chars().all(|ch| ch.is_alphanumeric() || ch == '_');
        if ident(&t[i])
            && t.get(i + 1).map(String::as_str) == Some("::")
            && (i == 0 || t[i - 1] != "::")
        {
            let mut path = vec![t[i].clone()];
            let mut j = i + 1;
            while t.get(j).map(String::as_str) == Some("::")
                && t.get(j + 1).is_some_and(|s| ident(s))
            {
                path.push(t[j + 1].clone());
                j += 2;
            }
            out.push((depth, path));
            i = j;
            continue;
        }
        i += 1;
    }
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`).
fn declared_children(code: &str) -> BTreeSet<String> {
    let t = tokens(&strip(code));
    (0..t.len().saturating_sub(2))
        .filter(|&i| t[i] == "mod" && t[i + 2] == ";")
        .map(|i| t[i + 1].clone())
        .collect()
}

/// Edges between files: `files` maps a file's name to its source text.
fn import_graph(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<Module, String> = files
        .keys()
        .filter_map(|f| Some((module_of(f)?, f.clone())))
        .collect();
    let mut graph = BTreeMap::new();
    for (file, text) in files {
        let Some(me) = module_of(file) else { continue };
        let children = declared_children(text);
        let mut edges = BTreeSet::new();
        for (depth, path) in named_paths(text) {
            // The absolute module path the written path starts from.
            let supers = path.iter().take_while(|s| *s == "super").count();
            let mut abs: Module = match path[0].as_str() {
                "crate" => vec![],
                // Inside inline modules, the first `super`s stay in this file.
                "super" if supers <= depth => continue,
                "super" => me[..me.len().saturating_sub(supers - depth)].to_vec(),
                "self" if depth > 0 => continue,
                "self" => me.clone(),
                c if depth == 0 && children.contains(c) => {
                    let mut m = me.clone();
                    m.push(c.to_string());
                    m
                }
                _ => continue, // another crate, or a local name
            };
            let skip = if path[0] == "super" { supers } else { 1 };
            abs.extend(path[skip..].iter().cloned());
            // The longest prefix that is a file's module.
            let target = (0..=abs.len()).rev().find_map(|n| modules.get(&abs[..n]));
            if let Some(target) = target
                && target != file
            {
                edges.insert(target.clone());
            }
        }
        graph.insert(file.clone(), edges);
    }
    graph
}

/// Every loop of the graph, one per strongly connected component of more
/// than one file, as the files of the component.
fn loops(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Files that reach each other both ways form a loop.
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.clone()];
        while let Some(f) = stack.pop() {
            for g in graph.get(&f).into_iter().flatten() {
                if seen.insert(g.clone()) {
                    stack.push(g.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|f| (f, reach(f))).collect();
    let mut done = BTreeSet::new();
    let mut out = vec![];
    for f in graph.keys() {
        if done.contains(f) {
            continue;
        }
        let comp: Vec<String> = graph
            .keys()
            .filter(|g| *g == f || (reached[f].contains(*g) && reached[*g].contains(f)))
            .cloned()
            .collect();
        done.extend(comp.iter().cloned());
        if comp.len() > 1 {
            out.push(comp);
        }
    }
    out
}

fn read_src(dir: &Path, rel: &str, out: &mut BTreeMap<String, String>) {
    for e in std::fs::read_dir(dir).expect("src/ is readable") {
        let p = e.expect("a directory entry").path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if p.is_dir() {
            read_src(&p, &rel, out);
        } else if rel.ends_with(".rs") {
            out.insert(
                rel,
                std::fs::read_to_string(&p).expect("a readable source file"),
            );
        }
    }
}

#[test]
fn no_two_source_files_import_each_other() {
    let mut files = BTreeMap::new();
    read_src(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut files,
    );
    let graph = import_graph(&files);
    // The parser sees imports at all: edges that the code has today.
    for (from, to) in [
        ("experiment/report/paired.rs", "experiment/stats.rs"),
        ("experiment/runner.rs", "train/mod.rs"),
        ("train/run.rs", "models/mod.rs"),
        ("cli/mod.rs", "cli/train_cmd.rs"),
        (
            "models/transformer/manual/layers.rs",
            "models/kernels/mod.rs",
        ),
    ] {
        assert!(
            graph[from].contains(to),
            "the import {from} -> {to} was not found; the parser is broken: {:?}",
            graph[from]
        );
    }
    let found = loops(&graph);
    assert!(
        found.is_empty(),
        "files under src/ that import each other (directly or around a loop): {}",
        found
            .iter()
            .map(|c| {
                let edges: Vec<String> = c
                    .iter()
                    .flat_map(|f| {
                        graph[f]
                            .iter()
                            .filter(|g| c.contains(g))
                            .map(move |g| format!("{f} -> {g}"))
                    })
                    .collect();
                format!("{} ({})", c.join(" <-> "), edges.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    );
}

#[test]
fn the_check_finds_loops_through_use_trees_inline_paths_and_children() {
    let files = |list: &[(&str, &str)]| -> BTreeMap<String, String> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    // A use tree one way, an inline path back.
    let g = import_graph(&files(&[
        ("lib.rs", "pub mod a;\npub mod b;"),
        ("a/mod.rs", "mod x;\nuse super::b::{self, Thing as T};"),
        ("a/x.rs", "fn f() { let s = \"crate::b::f\"; }"),
        ("b.rs", "fn g() { crate::a::h(); } // crate::lib"),
    ]));
    assert_eq!(
        loops(&g),
        vec![vec!["a/mod.rs".to_string(), "b.rs".to_string()]]
    );
    // Strings and comments name nothing: x.rs imports nothing.
    assert!(g["a/x.rs"].is_empty());
    // A parent calling its child, the child using the parent's helper.
    let g = import_graph(&files(&[
        (
            "cli/mod.rs",
            "mod run;\nfn main() { run::go() }\nfn helper() {}",
        ),
        ("cli/run.rs", "use super::helper;\npub fn go() {}"),
    ]));
    assert_eq!(loops(&g).len(), 1);
    // `super` inside a file's inline test module is that file.
    let g = import_graph(&files(&[
        ("p/mod.rs", "mod q;\nfn f() { q::g() }"),
        (
            "p/q.rs",
            "pub fn g() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n}",
        ),
    ]));
    assert!(loops(&g).is_empty() && g["p/q.rs"].is_empty());
    // A test module that uses the parent is not a loop; other code is.
    let g = import_graph(&files(&[
        ("p/mod.rs", "mod q;\nfn f() { q::g() }\npub fn h() {}"),
        (
            "p/q.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::p::h;\n}",
        ),
    ]));
    assert!(loops(&g).is_empty());
    let g = import_graph(&files(&[
        ("p/mod.rs", "mod q;\nfn f() { q::g() }\npub fn h() {}"),
        ("p/q.rs", "mod inner {\n    use crate::p::h;\n}"),
    ]));
    assert_eq!(loops(&g).len(), 1);
    // Three files around a loop; one-way imports are not loops.
    let g = import_graph(&files(&[
        ("a.rs", "use crate::b::B;"),
        ("b.rs", "use crate::c::{d::D, C};"),
        ("c.rs", "mod d;\nfn f() -> crate::a::A { todo!() }"),
        ("c/d.rs", "use super::super::a;"),
        ("e.rs", "use crate::a::A;"),
    ]));
    assert_eq!(
        loops(&g),
        vec![vec![
            "a.rs".to_string(),
            "b.rs".to_string(),
            "c.rs".to_string(),
            "c/d.rs".to_string()
        ]]
    );
}
