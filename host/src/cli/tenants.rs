//! `wharf tenant`, `instance`, `host`, `quota` and `usage`: tenants, their instances and what they use.

use anyhow::Context as _;
use serde_json::json;

use super::client::{self, Client};
use super::output::Output;
use super::*;

/// Run one of this group's commands (`run_client` dispatches only those here).
pub(super) async fn run(client: &Client, out: &Output, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Tenant(TenantCommand::Create { id, name }) => {
            out.tenant(&client.post("/v1/tenants", &json!({ "id": id, "display_name": name })).await?)
        }
        Command::Tenant(TenantCommand::List) => out.tenants(&client.get_all("/v1/tenants", "tenants").await?),
        Command::Tenant(TenantCommand::Show { id }) => out.tenant(&client.get(&format!("/v1/tenants/{id}")).await?),
        Command::Tenant(TenantCommand::Delete { id, now }) => {
            let path = format!("/v1/tenants/{}{}", client::encode(&id), if now { "?now=true" } else { "" });
            let deleted = client.delete(&path).await?;
            let count = deleted["instances"].as_array().map_or(0, Vec::len);
            let human = if now {
                format!("{id} deleted with {count} instance(s); its data is destroyed")
            } else {
                format!(
                    "{id} deleted with {count} instance(s): its members lost access and nothing of it serves; \
                     its data is destroyed at {} unless restored (wharf tenant restore {id})",
                    deleted["purge_at"].as_i64().map(crate::clock::format_utc).unwrap_or_default()
                )
            };
            out.line(&deleted, &human)
        }
        Command::Tenant(TenantCommand::Restore { id }) => {
            let restored = client.post(&format!("/v1/tenants/{}/restore", client::encode(&id)), &json!({})).await?;
            let count = restored["instances"].as_array().map_or(0, Vec::len);
            out.line(&restored, &format!("{id} restored with {count} instance(s)"))
        }
        Command::Instance(InstanceCommand::Create { tenant, service, name, hosts, version, modules, ends_at }) => {
            let body = json!({
                "tenant": tenant, "service": service, "name": name, "hosts": hosts, "version": version,
                "modules": modules, "ends_at": ends_at,
            });
            out.instance(&client.post("/v1/instances", &body).await?)
        }
        Command::Instance(InstanceCommand::List { tenant }) => {
            let path = match tenant {
                Some(t) => format!("/v1/instances?tenant={}", client::encode(&t)),
                None => "/v1/instances".to_string(),
            };
            out.instances(&client.get_all(&path, "instances").await?)
        }
        Command::Instance(InstanceCommand::Delete { id, now }) => {
            let path = format!("/v1/instances/{}{}", client::encode(&id), if now { "?now=true" } else { "" });
            let deleted = client.delete(&path).await?;
            let human = if now {
                format!("{id} deleted and its data destroyed")
            } else {
                format!(
                    "{id} deleted: it no longer serves; its data is destroyed at {} unless restored \
                     (wharf instance restore {id})",
                    deleted["purge_at"].as_i64().map(crate::clock::format_utc).unwrap_or_default()
                )
            };
            out.line(&deleted, &human)
        }
        Command::Instance(InstanceCommand::Export { id, output }) => {
            let bytes = client.download(&format!("/v1/instances/{}/export", client::encode(&id))).await?;
            let path = output.unwrap_or_else(|| format!("{id}.tar").into());
            std::fs::write(&path, &bytes).with_context(|| format!("cannot write {}", path.display()))?;
            let done = json!({ "instance": id, "file": path, "bytes": bytes.len() });
            out.line(&done, &format!("exported {id} into {} ({} bytes)", path.display(), bytes.len()))
        }
        Command::Instance(InstanceCommand::Import { file, tenant, name, hosts }) => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let mut path = format!("/v1/instances/import?tenant={}", client::encode(&tenant));
            if let Some(name) = name {
                path.push_str(&format!("&name={}", client::encode(&name)));
            }
            if !hosts.is_empty() {
                path.push_str(&format!("&hosts={}", client::encode(&hosts.join(","))));
            }
            out.instance(&client.upload(&path, bytes).await?)
        }
        Command::Instance(InstanceCommand::Restore { id }) => {
            out.instance(&client.post(&format!("/v1/instances/{}/restore", client::encode(&id)), &json!({})).await?)
        }
        Command::Instance(InstanceCommand::Show { id }) => {
            out.instance(&client.get(&format!("/v1/instances/{id}")).await?)
        }
        Command::Instance(InstanceCommand::Update { id, hosts, version, modules, enabled, ends_at }) => {
            let body = instance_changes(hosts, version, modules, enabled, ends_at)?;
            out.instance(&client.patch(&format!("/v1/instances/{id}"), &body).await?)
        }
        Command::Quota(QuotaCommand::Show { tenant, user }) => {
            let value = match (tenant, user) {
                (Some(t), _) => client.get(&format!("/v1/tenants/{}/quotas", client::encode(&t))).await?,
                (None, Some(u)) => client.get(&format!("/v1/users/{}/quotas", client::encode(&u))).await?,
                (None, None) => client.get("/v1/me").await?,
            };
            out.rows(
                &value,
                "quotas",
                &[("QUOTA", "quota"), ("LIMIT", "limit"), ("USED", "used"), ("SOURCE", "source")],
            )
        }
        Command::Quota(QuotaCommand::Set { tenant, user, quota, limit }) => {
            let limit = match limit.as_str() {
                "default" => serde_json::Value::Null,
                n => json!(n.parse::<i64>().with_context(|| format!("{n:?} is not a number or `default`"))?),
            };
            let path = match (tenant, user) {
                (Some(t), _) => format!("/v1/tenants/{}/quotas/{}", client::encode(&t), client::encode(&quota)),
                (None, Some(u)) => format!("/v1/users/{}/quotas/{}", client::encode(&u), client::encode(&quota)),
                (None, None) => anyhow::bail!("pass --tenant or --user"),
            };
            let value = client.put(&path, &json!({ "limit": limit })).await?;
            out.rows(
                &value,
                "quotas",
                &[("QUOTA", "quota"), ("LIMIT", "limit"), ("USED", "used"), ("SOURCE", "source")],
            )
        }
        Command::Host(HostCommand::Verify { instance, hostname, method }) => {
            let body = json!({ "hostname": hostname, "method": method });
            let verified =
                client.post(&format!("/v1/instances/{}/hosts/verify", client::encode(&instance)), &body).await?;
            out.line(&verified, &format!("{hostname} is verified and routes to {instance}"))
        }
        Command::Usage { tenant, instance } => {
            let value = match (instance, tenant) {
                (Some(id), _) => json!({ "usage": [client.get(&format!("/v1/instances/{id}/usage")).await?] }),
                (None, Some(t)) => client.get(&format!("/v1/usage?tenant={}", client::encode(&t))).await?,
                (None, None) => client.get("/v1/usage").await?,
            };
            out.usage(&value)
        }
        _ => unreachable!("run_client dispatches only this group's commands here"),
    }
}

/// The body of `PATCH /v1/instances/{id}`: what `wharf instance update` was asked to change.
fn instance_changes(
    hosts: Vec<String>,
    version: Option<String>,
    modules: Option<String>,
    enabled: Option<bool>,
    ends_at: Option<String>,
) -> anyhow::Result<serde_json::Value> {
    let mut body = serde_json::Map::new();
    if !hosts.is_empty() {
        body.insert("hosts".into(), json!(hosts));
    }
    if let Some(v) = version {
        body.insert("version".into(), json!(v));
    }
    if let Some(modules) = modules {
        let list: Vec<&str> = modules.split(',').map(str::trim).filter(|m| !m.is_empty() && *m != "none").collect();
        body.insert("modules".into(), json!(list));
    }
    if let Some(enabled) = enabled {
        body.insert("enabled".into(), json!(enabled));
    }
    if let Some(ends_at) = ends_at {
        body.insert("ends_at".into(), if ends_at == "none" { serde_json::Value::Null } else { json!(ends_at) });
    }
    anyhow::ensure!(!body.is_empty(), "nothing to change: pass --host, --version, --modules, --enabled or --ends-at");
    Ok(body.into())
}
