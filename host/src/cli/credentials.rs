//! The CLI's saved sessions: one token per admin URL, in a JSON file only the user
//! can read (mode 0600), under `$WHARF_CONFIG_DIR`, `$XDG_CONFIG_HOME/wharf` or
//! `~/.config/wharf`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;

fn path() -> Option<PathBuf> {
    let dir = std::env::var_os("WHARF_CONFIG_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CONFIG_HOME").map(|d| PathBuf::from(d).join("wharf")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/wharf")))?;
    Some(dir.join("credentials.json"))
}

fn read() -> BTreeMap<String, String> {
    path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

fn write(all: &BTreeMap<String, String>) -> anyhow::Result<PathBuf> {
    let path = path().context("no home directory; set WHARF_CONFIG_DIR")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("failed to create {dir:?}"))?;
    }
    let text = serde_json::to_string_pretty(all)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).with_context(|| format!("failed to open {path:?}"))?;
    #[cfg(unix)]
    {
        // The file may predate us with looser permissions.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, text.as_bytes()).with_context(|| format!("failed to write {path:?}"))?;
    Ok(path)
}

/// The saved token for `admin_url`.
pub fn load(admin_url: &str) -> Option<String> {
    read().remove(admin_url.trim_end_matches('/'))
}

/// Save `token` for `admin_url`; returns the file's path.
pub fn save(admin_url: &str, token: &str) -> anyhow::Result<PathBuf> {
    let mut all = read();
    all.insert(admin_url.trim_end_matches('/').to_string(), token.to_string());
    write(&all)
}

/// Forget the token for `admin_url`.
pub fn forget(admin_url: &str) -> anyhow::Result<()> {
    let mut all = read();
    if all.remove(admin_url.trim_end_matches('/')).is_some() {
        write(&all)?;
    }
    Ok(())
}
