//! `wharf new NAME --lang rust|python|js`: a service to start from — its manifest, a
//! route guarded by a permission, its own table (a migration per dialect), a
//! job, and a README of how to build and publish it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The languages `wharf new` writes a service in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    /// JavaScript (TypeScript when `app.js` is renamed `app.ts`).
    Js,
}

/// The Python template: (path in the new directory, contents with `{name}`).
const PYTHON: &[(&str, &str)] = &[
    ("wharf.toml", include_str!("templates/python/wharf.toml")),
    ("app.py", include_str!("templates/python/app.py")),
    ("migrations/sqlite/0001_items.sql", include_str!("templates/python/items.sqlite.sql")),
    ("migrations/postgres/0001_items.sql", include_str!("templates/python/items.postgres.sql")),
    ("README.md", include_str!("templates/python/README.md")),
];

/// The JavaScript template.
const JS: &[(&str, &str)] = &[
    ("wharf.toml", include_str!("templates/js/wharf.toml")),
    ("app.js", include_str!("templates/js/app.js")),
    ("migrations/sqlite/0001_items.sql", include_str!("templates/python/items.sqlite.sql")),
    ("migrations/postgres/0001_items.sql", include_str!("templates/python/items.postgres.sql")),
    ("README.md", include_str!("templates/js/README.md")),
];

/// The Rust template (`{sdk}`: the path of Wharf's `sdk/`, `{crate}`: the
/// name as a crate's file name).
const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
    // The examples' own stack setting: one file, so the two cannot drift apart.
    (".cargo/config.toml", include_str!("../../../plugins/.cargo/config.toml")),
    ("src/lib.rs", include_str!("templates/rust/lib.rs")),
    ("wharf.toml", include_str!("templates/rust/wharf.toml")),
    ("migrations/sqlite/0001_items.sql", include_str!("templates/python/items.sqlite.sql")),
    ("migrations/postgres/0001_items.sql", include_str!("templates/python/items.postgres.sql")),
    ("README.md", include_str!("templates/rust/README.md")),
];

/// Write service `name` in `lang` into `dir` (default `./NAME`), which must not
/// exist or be empty; a Rust service depends on the Rust SDK at `sdk` (Wharf's
/// `sdk/` directory). The directory written.
pub fn create(name: &str, lang: Lang, dir: Option<&Path>, sdk: Option<&Path>) -> anyhow::Result<PathBuf> {
    crate::registry::validate_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!("{} is not empty: choose another directory (--dir)", dir.display());
    }
    let (files, sdk) = match lang {
        Lang::Python => (PYTHON, String::new()),
        Lang::Js => (JS, String::new()),
        Lang::Rust => {
            let sdk = sdk.context("a Rust service needs --sdk PATH: the sdk/ directory of the Wharf repository")?;
            let manifest = std::fs::read_to_string(sdk.join("Cargo.toml")).unwrap_or_default();
            if !manifest.contains("name = \"wharf-sdk\"") {
                anyhow::bail!("{} is not Wharf's sdk/ directory (no wharf-sdk Cargo.toml there)", sdk.display());
            }
            let sdk = std::path::absolute(sdk).context("cannot resolve --sdk")?;
            (RUST, sdk.display().to_string().replace('\\', "/"))
        }
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{name}", name).replace("{crate}", &name.replace('-', "_")).replace("{sdk}", &sdk);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_new_service_is_written_once_under_a_valid_name() {
        let root = tempfile::tempdir().unwrap();
        let dir = create("notes", Lang::Python, Some(&root.path().join("notes")), None).unwrap();
        let manifest = std::fs::read_to_string(dir.join("wharf.toml")).unwrap();
        assert!(manifest.contains("name = \"notes\"") && !manifest.contains("{name}"), "{manifest}");
        let (_, _, parsed) = crate::cli::read_manifest(&dir).unwrap();
        assert_eq!(parsed.migrations.len(), 1);
        assert!(dir.join("migrations/postgres/0001_items.sql").exists());
        let again = create("notes", Lang::Python, Some(&dir), None).unwrap_err().to_string();
        assert!(again.contains("not empty"), "{again}");
        let bad = create("Notes!", Lang::Python, Some(&root.path().join("x")), None).unwrap_err().to_string();
        assert!(bad.contains("lower-case"), "{bad}");
        let dir = create("js-svc", Lang::Js, Some(&root.path().join("js")), None).unwrap();
        let app = std::fs::read_to_string(dir.join("app.js")).unwrap();
        assert!(app.contains("Hello from js-svc!") && app.contains("export const worker"), "{app}");
        assert_eq!(crate::cli::read_manifest(&dir).unwrap().2.service.name, "js-svc");
        let no_sdk = create("rusty", Lang::Rust, Some(&root.path().join("r")), None).unwrap_err().to_string();
        assert!(no_sdk.contains("--sdk"), "{no_sdk}");
        let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        let dir = create("my-svc", Lang::Rust, Some(&root.path().join("r")), Some(&sdk)).unwrap();
        let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(cargo.contains("name = \"my-svc\"") && cargo.contains("/sdk\" }"), "{cargo}");
        let manifest = std::fs::read_to_string(dir.join("wharf.toml")).unwrap();
        assert!(manifest.contains("release/my_svc.wasm"), "{manifest}");
        let config = std::fs::read_to_string(dir.join(".cargo/config.toml")).unwrap();
        assert!(config.contains("[target.wasm32-wasip2]") && config.contains("stack-size=131072"), "{config}");
    }
}
