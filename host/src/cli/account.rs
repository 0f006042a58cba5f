//! `wharf register`, `accept`, `login`, `logout`, `whoami` and `key`: one's own account and credentials.

use anyhow::Context as _;
use serde_json::json;

use super::client::{self, Client};
use super::output::{self, Output};
use super::*;

/// Run one of this group's commands (`run_client` dispatches only those here).
pub(super) async fn run(client: &Client, out: &Output, admin_url: &str, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Register { email, password_stdin, invitation } => {
            let password = read_password(password_stdin)?;
            let body = json!({ "email": email, "password": password, "invitation": invitation });
            let user = client.post("/v1/users", &body).await?;
            let joined = match user.get("joined") {
                Some(j) => format!(" and joined {} as {}", output::s(j, "tenant"), output::s(j, "role")),
                None => String::new(),
            };
            out.line(&user, &format!("registered {email}{joined}; now run `wharf login {email}`"))
        }
        Command::Accept { token } => {
            let joined = client.post("/v1/invitations/accept", &json!({ "token": token })).await?;
            out.line(&joined, &format!("you joined {} as {}", output::s(&joined, "tenant"), output::s(&joined, "role")))
        }
        Command::Login { email, password_stdin } => {
            let password = read_password(password_stdin)?;
            let session = client.post("/v1/login", &json!({ "email": email, "password": password })).await?;
            let token = session["token"].as_str().context("the node answered without a token")?;
            let path = credentials::save(admin_url, token)?;
            out.line(
                &json!({ "email": email, "expires_at": session["expires_at"], "saved_to": path }),
                &format!("logged in as {email}; session saved in {}", path.display()),
            )
        }
        Command::Logout => {
            client.post("/v1/logout", &json!({})).await?;
            credentials::forget(admin_url)?;
            out.line(&json!({ "logged_out": true }), "logged out")
        }
        Command::Whoami => {
            let me = client.get("/v1/me").await?;
            let tenants: Vec<String> = me["tenants"]
                .as_array()
                .map(|a| a.iter().map(|t| format!("{} ({})", output::s(t, "tenant"), output::s(t, "role"))).collect())
                .unwrap_or_default();
            let operator = if me["operator"] == true { ", platform operator" } else { "" };
            out.line(
                &me,
                &format!(
                    "{}{operator}\ntenants: {}",
                    output::s(&me, "email"),
                    if tenants.is_empty() { "none".into() } else { tenants.join(", ") }
                ),
            )
        }
        Command::Account(AccountCommand::Delete { user: Some(email), .. }) => {
            let deleted = client.delete(&format!("/v1/users/{}", client::encode(&email))).await?;
            out.line(&deleted, &format!("account {email} deleted"))
        }
        Command::Account(AccountCommand::Delete { user: None, password_stdin }) => {
            let password = read_password(password_stdin)?;
            let deleted = client.delete_with("/v1/me", &json!({ "password": password })).await?;
            credentials::forget(admin_url)?;
            out.line(&deleted, &format!("account {} deleted", output::s(&deleted, "deleted")))
        }
        Command::Key(KeyCommand::Create { name, expires_in_days }) => {
            let key = client.post("/v1/keys", &json!({ "name": name, "expires_in_days": expires_in_days })).await?;
            out.line(
                &key,
                &format!(
                    "API key {} created; it is shown only now:\n{}",
                    output::s(&key, "prefix"),
                    output::s(&key, "key")
                ),
            )
        }
        Command::Key(KeyCommand::List) => out.rows(
            &client.get("/v1/keys").await?,
            "keys",
            &[
                ("ID", "id"),
                ("NAME", "name"),
                ("PREFIX", "prefix"),
                ("EXPIRES", "expires_at"),
                ("REVOKED", "revoked_at"),
            ],
        ),
        Command::Key(KeyCommand::Revoke { id }) => {
            let key = client.delete(&format!("/v1/keys/{}", client::encode(&id))).await?;
            out.line(&key, &format!("revoked {}", output::s(&key, "prefix")))
        }
        _ => unreachable!("run_client dispatches only this group's commands here"),
    }
}
