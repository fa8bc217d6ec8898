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
    ("decide", &["selection", "routing", "dispatch", "workflows"]),
    ("fleet", &["fleet"]),
    (
        "base",
        &[
            "config",
            "request",
            "upstream",
            "metrics",
            "error",
            "shutdown",
            "logging",
            "state",
            "tenancy",
            "tools",
            "telemetry",
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

fn ident(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The code of a file without its comment lines.
fn code(src: &str) -> String {
    src.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first segment of each item of a `{a, b::c, d::{e, f}}` group.
fn group_heads(group: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for (j, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = true,
            c if item_start && !c.is_whitespace() => {
                out.push(ident(&group[j..]));
                item_start = false;
            }
            _ => {}
        }
    }
    out
}

/// The names `lib.rs` re-exports at the crate root, and the module each comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in code(lib).lines() {
        let Some(path) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let module = ident(path);
        let rest = path.trim_end_matches(';');
        let names = match rest.find('{') {
            Some(i) => group_heads(&rest[i + 1..]),
            None => vec![ident(rest.rsplit("::").next().unwrap_or(""))],
        };
        for n in names {
            out.insert(n, module.clone());
        }
    }
    out
}

/// What a path segment right under the crate root names: a top-level module, or a
/// name `lib.rs` re-exports from one.
fn resolve(name: String, reexports: &BTreeMap<String, String>) -> String {
    reexports.get(&name).cloned().unwrap_or(name)
}

/// The top-level modules a source file at module depth `depth` (`fleet/mod.rs`: 1,
/// `fleet/worker.rs`: 2) refers to: through `crate::` paths (single or grouped), through
/// root re-exports, and through `super::` chains that climb to the crate root.
fn crate_refs(src: &str, depth: usize, reexports: &BTreeMap<String, String>) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let code = code(src);
    for (i, _) in code.match_indices("crate::") {
        if code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue; // e.g. `switchyard_crate::`
        }
        let rest = &code[i + "crate::".len()..];
        let heads = match rest.strip_prefix('{') {
            Some(group) => group_heads(group),
            None => vec![ident(rest)],
        };
        refs.extend(heads.into_iter().map(|h| resolve(h, reexports)));
    }
    for (i, _) in code.match_indices("super::") {
        if code[..i].ends_with("super::")
            || code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        {
            continue; // counted from the first `super::` of the chain
        }
        let mut rest = &code[i..];
        let mut ups = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            ups += 1;
            rest = r;
        }
        if ups == depth {
            let heads = match rest.strip_prefix('{') {
                Some(group) => group_heads(group),
                None => vec![ident(rest)],
            };
            refs.extend(heads.into_iter().map(|h| resolve(h, reexports)));
        }
    }
    refs.retain(|r| !r.is_empty());
    refs
}

/// How deep a file's module is below the crate root.
fn module_depth(rel: &Path) -> usize {
    let parts = rel.components().count();
    if rel.file_name().is_some_and(|f| f == "mod.rs") {
        parts - 1
    } else {
        parts
    }
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
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
        // Crate roots, not modules of the library: main.rs and the binaries in bin/.
        if top == "lib" || top == "main" || top == "bin" {
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
        for r in crate_refs(&text, module_depth(rel), &reexports) {
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
                None => violations.push(format!(
                    "{}: `crate::{r}` is neither a module with a layer nor a root re-export of one",
                    rel.display()
                )),
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
    let reexports = root_reexports(
        "pub mod server;\npub use config::{Config, PolicyKind};\npub use server::Gateway;\n",
    );
    assert_eq!(reexports["Gateway"], "server");
    assert_eq!(reexports["PolicyKind"], "config");
    let src = "use crate::fleet::Worker;\nuse crate::{config::Config, request::{Route, body}, error};\n// crate::server in a comment\nlet x = crate::metrics::Metrics::new();\nuse crate::Gateway;";
    let refs: Vec<String> = crate_refs(src, 1, &reexports).into_iter().collect();
    assert_eq!(
        refs,
        ["config", "error", "fleet", "metrics", "request", "server"]
    );
    // `super::` climbing to the crate root, from a top-level `mod.rs` and from deeper.
    let top = "use super::server::Gateway;\nuse super::Config;";
    let refs: Vec<String> = crate_refs(top, 1, &reexports).into_iter().collect();
    assert_eq!(refs, ["config", "server"]);
    let nested = "use super::super::{pipeline::Pipeline, fleet};\nuse super::sibling::X;";
    let refs: Vec<String> = crate_refs(nested, 2, &reexports).into_iter().collect();
    assert_eq!(
        refs,
        ["fleet", "pipeline"],
        "one `super::` stays inside the module"
    );
    assert_eq!(module_depth(Path::new("fleet/mod.rs")), 1);
    assert_eq!(module_depth(Path::new("server/admin/workers.rs")), 3);
    assert_eq!(module_depth(Path::new("upstream.rs")), 1);
}
