//! `wharf publish`, `activate` and `service`: service versions and what they declare.

use anyhow::Context as _;
use serde_json::json;

use super::client::{self, Client};
use super::output::Output;
use super::*;

/// Run one of this group's commands (`run_client` dispatches only those here).
pub(super) async fn run(client: &Client, out: &Output, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Publish { path, component, activate } => {
            let (manifest_path, manifest_text, manifest) = client::read_manifest(&path)?;
            let component_path = match component {
                Some(p) => p,
                None => {
                    let rel = manifest.service.component.as_deref().with_context(|| {
                        format!("{manifest_path:?} names no `component`; add one under [service] or pass --component")
                    })?;
                    manifest_path.parent().unwrap_or_else(|| std::path::Path::new(".")).join(rel)
                }
            };
            let bytes = std::fs::read(&component_path)
                .with_context(|| format!("failed to read component {component_path:?} (build it first?)"))?;
            if !out.json {
                eprintln!(
                    "publishing {} {} ({:.1} MiB): uploading, validating and compiling…",
                    manifest.service.name,
                    manifest.service.version,
                    bytes.len() as f64 / (1 << 20) as f64
                );
            }
            let published = client.publish(&manifest.service.name, manifest_text, bytes, activate).await?;
            out.published(&published)
        }
        Command::Activate { service, version } => {
            let v = client.post(&format!("/v1/services/{service}/activate"), &json!({ "version": version })).await?;
            out.activated(&v)
        }
        Command::Service(ServiceCommand::List) => out.services(&client.get("/v1/services").await?),
        Command::Service(ServiceCommand::DeleteVersion { name, version }) => {
            let path = format!("/v1/services/{}/versions/{}", client::encode(&name), client::encode(&version));
            let deleted = client.delete(&path).await?;
            out.line(&deleted, &format!("{name} {version} deleted"))
        }
        Command::Service(ServiceCommand::Show { name }) => {
            out.service(&client.get(&format!("/v1/services/{name}")).await?)
        }
        Command::Service(ServiceCommand::Permissions { name, version }) => {
            let path = match version {
                Some(v) => format!("/v1/services/{name}/permissions?version={}", client::encode(&v)),
                None => format!("/v1/services/{name}/permissions"),
            };
            out.rows(
                &client.get(&path).await?,
                "permissions",
                &[("PERMISSION", "permission"), ("DESCRIPTION", "description"), ("ROUTES", "routes")],
            )
        }
        _ => unreachable!("run_client dispatches only this group's commands here"),
    }
}
