//! The layer rule, checked: a module names only modules of lower layers (`crate::…` paths
//! anywhere in its files, `use crate::{…}` groups included). The table is the layout of
//! `lib.rs`; a new module gets a row here, which is where its place is decided.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Each top-level module and its layer: a module may name only modules of a lower layer.
const LAYERS: &[(&str, u8)] = &[
    ("examples", 0),
    ("signature", 0),
    ("model", 1),
    ("clock", 2),
    ("config", 2),
    ("metrics", 2),
    ("client", 3),
    ("fair_share", 3),
    ("runtime", 3),
    ("sender", 3),
    ("storage", 3),
    // The sled engine sits beside the catalog; the catalog and the pipeline reach storage
    // only through the `storage` traits, and `host` wires them together.
    ("store", 4),
    ("postgres", 4),
    ("catalog", 4),
    ("pipeline", 5),
    ("api", 6),
    ("host", 7),
    // Re-exported at the crate root.
    ("Host", 7),
    ("OpenError", 7),
    ("ShutdownError", 7),
    ("fuzz", 8),
];

/// Pairs the layers would allow that are kept apart: (module, the module it may not name).
const KEPT_APART: &[(&str, &str)] = &[
    ("api", "store"),
    ("pipeline", "store"),
    ("api", "postgres"),
    ("pipeline", "postgres"),
];

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
}

/// The library's source files and the top-level module each belongs to (`lib.rs` and the
/// binary's files are not in any).
fn library_files(src: &Path) -> Vec<(String, PathBuf)> {
    let mut files = Vec::new();
    let mut pending = vec![src.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(src).unwrap();
            let top = relative.components().next().unwrap().as_os_str();
            let top = top.to_str().unwrap().trim_end_matches(".rs").to_string();
            // This file quotes paths in its tests.
            if top == "bin" || top == "lib" || top == "layering" {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push((top, path));
            }
        }
    }
    files.sort();
    files
}

/// The top-level modules a source text names through `crate::`.
fn named_modules(source: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[at + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::B, b, c::{D, E}}`: the names at the group's top level.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphabetic() || c == '_') => {
                        named.insert(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.insert(identifier(rest));
        }
    }
    named
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every place under `src` where a module names one it may not.
fn violations(src: &Path) -> Vec<String> {
    let mut wrong = Vec::new();
    for (module, file) in library_files(src) {
        let Some(layer) = layer_of(&module) else {
            wrong.push(format!(
                "{}: module `{module}` has no row in layering::LAYERS",
                file.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(&file).unwrap();
        for named in named_modules(&source) {
            if named == module || named == "self" {
                continue;
            }
            if KEPT_APART.contains(&(module.as_str(), named.as_str())) {
                wrong.push(format!(
                    "{}: `{module}` names `crate::{named}`, which it is kept apart from",
                    file.display()
                ));
                continue;
            }
            match layer_of(&named) {
                Some(other) if other < layer => {}
                Some(other) => wrong.push(format!(
                    "{}: `{module}` (layer {layer}) names `crate::{named}` (layer {other})",
                    file.display()
                )),
                // A name at the crate root, such as `crate::Host`, belongs to no layer.
                None => wrong.push(format!(
                    "{}: `{module}` names `crate::{named}`, which is not a module in the table",
                    file.display()
                )),
            }
        }
    }
    wrong
}

#[test]
fn no_module_names_a_module_above_it() {
    let wrong = violations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(wrong.is_empty(), "layer rule broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_scanner_reads_paths_and_groups() {
    let source = "use crate::model::X;\nuse crate::{config::{A, B}, store, sender::Guard};\n\
                  fn f() { crate::api::g(); $crate::no(); notcrate::x(); }";
    let named: Vec<String> = named_modules(source).into_iter().collect();
    assert_eq!(named, ["api", "config", "model", "sender", "store"]);
}

#[test]
fn a_module_naming_one_above_or_beside_it_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("store")).unwrap();
    std::fs::write(dir.path().join("lib.rs"), "pub mod store;").unwrap();
    std::fs::write(dir.path().join("model.rs"), "use crate::signature::Signer;").unwrap();
    std::fs::write(
        dir.path().join("store/queue.rs"),
        "use crate::{model::Delivery, pipeline::Thing};\nfn f() { crate::api::serve(); }",
    )
    .unwrap();
    let wrong = violations(dir.path());
    assert_eq!(wrong.len(), 2, "{wrong:?}");
    assert!(wrong[0].contains("names `crate::api`"), "{wrong:?}");
    assert!(wrong[1].contains("names `crate::pipeline`"), "{wrong:?}");
}

#[test]
fn the_library_returns_typed_errors() {
    // anyhow is for the binary; the library's errors are enums a caller can match on.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let using: Vec<String> = library_files(&src)
        .into_iter()
        .filter(|(_, file)| {
            std::fs::read_to_string(file)
                .unwrap()
                .contains(concat!("anyhow", "::"))
        })
        .map(|(_, file)| file.display().to_string())
        .collect();
    assert!(using.is_empty(), "anyhow in the library: {using:?}");
}

#[test]
fn public_functions_return_typed_errors_not_strings() {
    // A rule broken is `model::Invalid`; other failures have their own error types.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (_, file) in library_files(&src) {
        let source = std::fs::read_to_string(&file).unwrap();
        let mut rest = source.as_str();
        while let Some(at) = rest.find("pub fn ") {
            let signature = &rest[at..];
            let end = signature.find(['{', ';']).unwrap_or(signature.len());
            let returns = signature[..end]
                .rsplit_once("->")
                .map_or("", |(_, r)| r.trim());
            if returns.starts_with("Result<") && returns.ends_with(", String>") {
                let name: String = signature["pub fn ".len()..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                found.push(format!("{}: {name}", file.display()));
            }
            rest = &signature["pub fn ".len()..];
        }
    }
    assert!(
        found.is_empty(),
        "Result<_, String> in public functions: {found:?}"
    );
}
