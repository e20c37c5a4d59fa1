//! The shape rules ARCHITECTURE.md declares, checked on the source: the layer
//! order of top-level modules (no import from a lower module to a higher one,
//! so no cycle), files at most 600 lines, functions at most 80 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Layer index per module (0 = lowest), from the `<!-- layers -->` block.
fn declared_layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let start = doc
        .find("<!-- layers -->")
        .expect("ARCHITECTURE.md has a <!-- layers --> block");
    let block: Vec<&str> = doc[start..]
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    let n = block.len();
    let mut layers = BTreeMap::new();
    for (i, line) in block.iter().enumerate() {
        for m in line.split_whitespace() {
            assert!(
                layers.insert(m.to_string(), n - 1 - i).is_none(),
                "{m} listed twice"
            );
        }
    }
    layers
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level module a file under `src/` belongs to (`None` for lib.rs/main.rs).
fn module_of(path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root().join("src")).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    (name != "lib" && name != "main").then_some(name)
}

/// Top-level modules a source text names through `crate::`.
fn imported_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::x, b}`: the first segment of each item.
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

fn sources() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    files.sort();
    files
}

#[test]
fn no_module_imports_one_above_it() {
    let layers = declared_layers();
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for file in sources() {
        let Some(module) = module_of(&file) else {
            continue;
        };
        let Some(&own) = layers.get(&module) else {
            errors.push(format!(
                "module `{module}` is not in ARCHITECTURE.md's layers"
            ));
            continue;
        };
        seen.insert(module.clone());
        let text = std::fs::read_to_string(&file).unwrap();
        for dep in imported_modules(&text) {
            if dep == module {
                continue;
            }
            match layers.get(&dep) {
                Some(&l) if l < own => {}
                Some(_) => errors.push(format!(
                    "{} imports `{dep}`, which is not below `{module}`",
                    file.display()
                )),
                None => errors.push(format!("{} imports undeclared `{dep}`", file.display())),
            }
        }
    }
    for m in layers.keys() {
        if !seen.contains(m) {
            errors.push(format!(
                "ARCHITECTURE.md lists `{m}` but src/ has no such module"
            ));
        }
    }
    assert!(errors.is_empty(), "layering broken:\n{}", errors.join("\n"));
}

#[test]
fn the_import_scanner_sees_grouped_and_path_imports() {
    let found = imported_modules("use crate::{a::X, b};\nlet x = crate::c::f(); // crate::D");
    assert_eq!(
        found,
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    );
}

/// The demo seeder writes one long, linear script of sample rows.
const EXEMPT_FUNCTIONS: &[&str] = &["src/demo/mod.rs::seed"];

/// `fn` items longer than `max` lines: a fn line and its closing brace at the
/// same indentation (rustfmt's layout).
fn long_functions(path: &Path, text: &str, max: usize) -> Vec<(String, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let sig = trimmed
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ")
            .trim_start_matches("unsafe ");
        let Some(name) = sig.strip_prefix("fn ") else {
            continue;
        };
        let name: String = name
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // A declaration without a body (trait method) ends with `;` before any `{`.
        let body_start = lines[i..]
            .iter()
            .position(|l| l.contains('{') || l.trim_end().ends_with(';'));
        let Some(b) = body_start else { continue };
        if lines[i + b].trim_end().ends_with(';') && !lines[i + b].contains('{') {
            continue;
        }
        let close = format!("{indent}}}");
        if let Some(end) = lines[i + 1..].iter().position(|l| *l == close) {
            let n = end + 2;
            if n > max {
                out.push((format!("{}::{name}", path.display()), n));
            }
        }
    }
    out
}

#[test]
fn files_and_functions_stay_small() {
    let mut over = Vec::new();
    for file in sources() {
        let text = std::fs::read_to_string(&file).unwrap();
        let rel = file.strip_prefix(root()).unwrap().to_path_buf();
        let n = text.lines().count();
        if n > 600 {
            over.push((rel.display().to_string(), n));
        }
        for (name, len) in long_functions(&rel, &text, 80) {
            if !EXEMPT_FUNCTIONS.contains(&name.as_str()) {
                over.push((name, len));
            }
        }
    }
    let report: Vec<_> = over
        .iter()
        .map(|(name, n)| format!("{name}: {n} lines"))
        .collect();
    assert!(
        report.is_empty(),
        "over the limits (files 600, functions 80 lines):\n{}",
        report.join("\n")
    );
}
