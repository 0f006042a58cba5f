//! `wharf new NAME --lang python`: a service to start from — its manifest, a
//! route guarded by a permission, its own table (a migration per dialect), a
//! job, and a README of how to build and publish it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The languages `wharf new` writes a service in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Lang {
    Python,
}

/// The Python template: (path in the new directory, contents with `{name}`).
const PYTHON: &[(&str, &str)] = &[
    ("wharf.toml", include_str!("templates/python/wharf.toml")),
    ("app.py", include_str!("templates/python/app.py")),
    ("migrations/sqlite/0001_items.sql", include_str!("templates/python/items.sqlite.sql")),
    ("migrations/postgres/0001_items.sql", include_str!("templates/python/items.postgres.sql")),
    ("README.md", include_str!("templates/python/README.md")),
];

/// Write service `name` in `lang` into `dir` (default `./NAME`), which must not
/// exist or be empty; the directory written.
pub fn create(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    crate::registry::validate_name(name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(name));
    if std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some()) {
        anyhow::bail!("{} is not empty: choose another directory (--dir)", dir.display());
    }
    let files = match lang {
        Lang::Python => PYTHON,
    };
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text.replace("{name}", name))
            .with_context(|| format!("cannot write {}", path.display()))?;
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
        let dir = create("notes", Lang::Python, Some(&root.path().join("notes"))).unwrap();
        let manifest = std::fs::read_to_string(dir.join("wharf.toml")).unwrap();
        assert!(manifest.contains("name = \"notes\"") && !manifest.contains("{name}"), "{manifest}");
        let (_, _, parsed) = crate::cli::read_manifest(&dir).unwrap();
        assert_eq!(parsed.migrations.len(), 1);
        assert!(dir.join("migrations/postgres/0001_items.sql").exists());
        let again = create("notes", Lang::Python, Some(&dir)).unwrap_err().to_string();
        assert!(again.contains("not empty"), "{again}");
        let bad = create("Notes!", Lang::Python, Some(&root.path().join("x"))).unwrap_err().to_string();
        assert!(bad.contains("lower-case"), "{bad}");
    }
}
