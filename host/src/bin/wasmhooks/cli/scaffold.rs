//! `wasmhooks plugin new`: a plugin project that builds and passes its own tests as generated,
//! in Rust, JavaScript or Python. The templates are the files under `scaffolds/`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};

/// Languages a plugin can be written in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    /// Rust with the wasmhooks-guest SDK (`cargo build --target wasm32-wasip2`).
    Rust,
    /// JavaScript with ComponentizeJS (npm).
    Js,
    /// Python with componentize-py (PyPI).
    Python,
}

/// Arguments of `wasmhooks plugin new`.
#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and dashes, starting with a letter.
    pub name: String,
    /// The language.
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Where to create it (default: ./<name>); must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The wasmhooks-guest crate (Rust only; default: the one in the source tree this binary
    /// was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

const WIT: &str = include_str!("../../../../../wit/plugin.wit");
const EVENT: &str = include_str!("../../../../../scaffolds/event.json");
const CONFIG: &str = include_str!("../../../../../scaffolds/config.json");

/// The files of a language's project: path and template.
fn templates(lang: Lang) -> Vec<(&'static str, &'static str)> {
    let mut files = vec![("event.json", EVENT), ("config.json", CONFIG)];
    match lang {
        Lang::Rust => files.extend([
            (
                "Cargo.toml",
                include_str!("../../../../../scaffolds/rust/Cargo.toml"),
            ),
            (
                "src/lib.rs",
                include_str!("../../../../../scaffolds/rust/src/lib.rs"),
            ),
            (
                "README.md",
                include_str!("../../../../../scaffolds/rust/README.md"),
            ),
            (".gitignore", "target/\n"),
        ]),
        Lang::Js => files.extend([
            (
                "package.json",
                include_str!("../../../../../scaffolds/js/package.json"),
            ),
            (
                "src/logic.js",
                include_str!("../../../../../scaffolds/js/src/logic.js"),
            ),
            (
                "src/plugin.js",
                include_str!("../../../../../scaffolds/js/src/plugin.js"),
            ),
            (
                "test/logic.test.js",
                include_str!("../../../../../scaffolds/js/test/logic.test.js"),
            ),
            (
                "README.md",
                include_str!("../../../../../scaffolds/js/README.md"),
            ),
            ("wit/plugin.wit", WIT),
            (".gitignore", "node_modules/\ndist/\n"),
        ]),
        Lang::Python => files.extend([
            (
                "app.py",
                include_str!("../../../../../scaffolds/python/app.py"),
            ),
            (
                "logic.py",
                include_str!("../../../../../scaffolds/python/logic.py"),
            ),
            (
                "test_logic.py",
                include_str!("../../../../../scaffolds/python/test_logic.py"),
            ),
            (
                "requirements.txt",
                include_str!("../../../../../scaffolds/python/requirements.txt"),
            ),
            (
                "README.md",
                include_str!("../../../../../scaffolds/python/README.md"),
            ),
            ("wit/plugin.wit", WIT),
            (".gitignore", ".venv/\n__pycache__/\n*.wasm\n"),
        ]),
    }
    files
}

/// Checks a plugin name.
///
/// # Errors
/// A message saying what a name must be.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if !ok {
        bail!(
            "plugin name `{name}` must be 1 to 64 lowercase letters, digits and dashes, \
             starting with a letter and not ending with a dash"
        );
    }
    Ok(())
}

/// `order-notify` → `OrderNotify`.
fn type_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The Rust SDK to depend on.
fn sdk_path(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = given.map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk")),
        Path::to_path_buf,
    );
    let path = path.canonicalize().with_context(|| {
        format!(
            "the Rust SDK (wasmhooks-guest) is not at {}; pass --sdk PATH/TO/guest-sdk",
            path.display()
        )
    })?;
    if !path.join("Cargo.toml").exists() {
        bail!(
            "{} is not the wasmhooks-guest crate (no Cargo.toml)",
            path.display()
        );
    }
    Ok(path)
}

/// Writes the project and prints what to do next.
///
/// # Errors
/// A bad name, an existing non-empty directory, a missing SDK, or a write failure.
pub fn run(args: &NewArgs) -> anyhow::Result<ExitCode> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        bail!(
            "{} already exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    let sdk = match args.lang {
        Lang::Rust => Some(sdk_path(args.sdk.as_deref())?),
        Lang::Js | Lang::Python => None,
    };
    let snake = args.name.replace('-', "_");
    let type_name = type_name(&args.name);
    for (path, template) in templates(args.lang) {
        let mut text = template
            .replace("__NAME__", &args.name)
            .replace("__SNAKE__", &snake)
            .replace("__TYPE__", &type_name);
        if let Some(sdk) = &sdk {
            // TOML basic string: backslashes and quotes escaped.
            let sdk = sdk.display().to_string();
            text = text.replace("__SDK__", &sdk.replace('\\', "\\\\").replace('"', "\\\""));
        }
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    let d = dir.display();
    let next = match args.lang {
        Lang::Rust => format!(
            "cd {d}\ncargo test\ncargo build --release --target wasm32-wasip2\n\
             wasmhooks plugin run target/wasm32-wasip2/release/{snake}.wasm --event event.json --config config.json"
        ),
        Lang::Js => format!(
            "cd {d}\nnpm install\nnpm test\nnpm run build\n\
             wasmhooks plugin run dist/{}.wasm --event event.json --config config.json",
            args.name
        ),
        Lang::Python => format!(
            "cd {d}\npython3 -m venv .venv && .venv/bin/pip install -r requirements.txt\n\
             .venv/bin/python -m unittest\n\
             .venv/bin/componentize-py -d wit -w webhook componentize app -o {0}.wasm\n\
             wasmhooks plugin run {0}.wasm --event event.json --config config.json",
            args.name
        ),
    };
    println!(
        "created {} plugin `{}` in {d}\n\nnext:\n{next}",
        lang_name(args.lang),
        args.name
    );
    Ok(ExitCode::SUCCESS)
}

fn lang_name(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "a Rust",
        Lang::Js => "a JavaScript",
        Lang::Python => "a Python",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_turned_into_type_names() {
        assert!(check_name("order-notify").is_ok());
        for bad in ["", "Order", "1st", "a_b", "a-", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(type_name("order-notify"), "OrderNotify");
        assert_eq!(type_name("x2"), "X2");
    }

    #[test]
    fn every_language_writes_its_files_and_refuses_a_non_empty_dir() {
        let tmp = tempfile::tempdir().unwrap();
        for (lang, expected) in [
            (Lang::Rust, "src/lib.rs"),
            (Lang::Js, "src/plugin.js"),
            (Lang::Python, "app.py"),
        ] {
            let dir = tmp.path().join(format!("{lang:?}"));
            let args = NewArgs {
                name: "order-notify".into(),
                lang,
                dir: Some(dir.clone()),
                sdk: None,
            };
            run(&args).unwrap();
            assert!(dir.join(expected).exists());
            let all = walk(&dir);
            assert!(
                !all.contains("__NAME__") && !all.contains("__SDK__"),
                "{lang:?}"
            );
            let err = run(&args).unwrap_err().to_string();
            assert!(err.contains("already exists and is not empty"), "{err}");
        }
        let rust = std::fs::read_to_string(tmp.path().join("Rust/src/lib.rs")).unwrap();
        assert!(rust.contains("pub struct OrderNotify;"));
    }

    fn walk(dir: &Path) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                text.push_str(&walk(&path));
            } else {
                text.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
        text
    }
}
