//! The house rules of `src/`, checked on the source itself: each layer
//! imports only the layers below it, no module imports one that imports it
//! back, and no file grows past the size a reader takes in at once.
//!
//! Data flows core → ops → config → acquire → profile → store → sink →
//! gateway; `sim` (devices for tests and the demo) sits beside the gateway,
//! `fuzz` and the binary's `cli` on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers of the library, lowest first.
const LAYERS: [&str; 10] = [
    "core", "ops", "config", "acquire", "profile", "store", "sink", "gateway", "sim", "fuzz",
];

/// Lines of non-test code a file may hold.
const MAX_LINES: usize = 700;

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a library file, e.g. `src/sink/uplink/mod.rs` → `sink::uplink`.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

/// A file's code without its unit tests (they may reach anywhere).
fn code_of(text: &str) -> &str {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    }
}

/// Every `crate::a::b::c` path a file names, resolved to the longest known module.
fn imports(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let path: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        while !segments.is_empty() {
            let candidate = segments.join("::");
            if modules.contains(&candidate) {
                found.insert(candidate);
                break;
            }
            segments.pop();
        }
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| *l == top)
}

struct Library {
    /// Module path → the modules it imports (outside its own unit tests).
    imports: BTreeMap<String, BTreeSet<String>>,
    /// Module path → lines of non-test code.
    lines: BTreeMap<String, usize>,
}

fn library() -> Library {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let files: Vec<(String, String)> = files
        .iter()
        // The binary's files, and unit-test files (`#[cfg(test)] mod tests;`).
        .filter(|f| !f.starts_with(src.join("cli")) && !f.ends_with("main.rs"))
        .filter(|f| !f.ends_with("tests.rs"))
        .filter_map(|f| Some((module_of(&src, f), std::fs::read_to_string(f).ok()?)))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut library = Library {
        imports: BTreeMap::new(),
        lines: BTreeMap::new(),
    };
    for (module, text) in &files {
        let code = code_of(text);
        let mut used = imports(code, &modules);
        used.remove(module);
        library.imports.insert(module.clone(), used);
        library.lines.insert(module.clone(), code.lines().count());
    }
    library
}

#[test]
fn each_layer_imports_only_the_layers_below_it() {
    let library = library();
    assert!(
        library.imports.len() > 40,
        "the walk found only {} modules",
        library.imports.len()
    );
    let mut upward = Vec::new();
    for (module, used) in &library.imports {
        let Some(layer) = layer_of(module) else {
            continue;
        };
        for target in used {
            if layer_of(target).is_some_and(|t| t > layer) {
                upward.push(format!("{module} -> {target}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let library = library();
    // Depth-first search for a cycle, reporting the first one found.
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|m| m == module) {
            let mut cycle = path[start..].to_vec();
            cycle.push(module.to_owned());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(module.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for module in library.imports.keys() {
        if let Some(cycle) = visit(module, &library.imports, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn no_file_holds_more_than_700_lines_of_code() {
    let library = library();
    let long: Vec<String> = library
        .lines
        .iter()
        .filter(|(_, lines)| **lines > MAX_LINES)
        .map(|(module, lines)| format!("{module}: {lines}"))
        .collect();
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}

#[test]
fn main_is_parsing_and_dispatch_only() {
    let main = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs"))
        .unwrap_or_default();
    let lines = main.lines().count();
    assert!((20..150).contains(&lines), "src/main.rs has {lines} lines");
}
