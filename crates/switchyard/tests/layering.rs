//! The gateway's modules are layered (docs/architecture.md): a module may use modules of
//! its own layer or below, never above, and modules of one layer never use each other
//! in a cycle. This reads every `crate::` path in `src/` and fails on any violation,
//! naming the file and the import — a guard for the next contributor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, from the top (entry) to the base.
const LAYERS: &[(&str, &[&str])] = &[
    ("entry", &["server"]),
    ("flow", &["pipeline"]),
    ("decide", &["selection", "routing", "dispatch"]),
    ("fleet", &["fleet"]),
    (
        "base",
        &[
            "config", "request", "upstream", "metrics", "error", "shutdown", "logging",
        ],
    ),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, mods)| mods.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source file refers to through `crate::`.
fn crate_refs(src: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let code: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a, b::c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        refs.insert(ident(&group[j..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            refs.insert(ident(rest));
        }
    }
    refs.retain(|r| !r.is_empty());
    refs
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer_of(&top) else {
            violations.push(format!(
                "{}: module `{top}` has no layer in tests/layering.rs (and docs/architecture.md)",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for r in crate_refs(&text) {
            if r == top {
                continue;
            }
            match layer_of(&r) {
                Some(l) if l < own => violations.push(format!(
                    "{}: `{top}` ({}) uses `crate::{r}` from the layer above ({})",
                    rel.display(),
                    LAYERS[own].0,
                    LAYERS[l].0
                )),
                Some(_) => {
                    edges.entry(top.clone()).or_default().insert(r);
                }
                None => {}
            }
        }
    }
    // Within a layer, no cycles: a depth-first search over same-layer edges.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|p| p == m) {
            out.push(format!("cycle: {} -> {m}", path[start..].join(" -> ")));
            return;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if layer_of(next) == layer_of(m) {
                visit(next, edges, path, out);
            }
        }
        path.pop();
    }
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut violations);
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_every_form_of_import() {
    let src = "use crate::fleet::Worker;\nuse crate::{config::Config, request::{Route, body}, error};\n// crate::server in a comment\nlet x = crate::metrics::Metrics::new();";
    let refs: Vec<String> = crate_refs(src).into_iter().collect();
    assert_eq!(refs, ["config", "error", "fleet", "metrics", "request"]);
}
