//! `wharf invitation`, `member`, `grant`, `revoke`, `grants` and `audit`: who belongs to a
//! tenant, what they may do, and what was done.

use serde_json::json;

use super::client::{self, Client};
use super::output::Output;
use super::*;

/// Run one of this group's commands (`run_client` dispatches only those here).
pub(super) async fn run(client: &Client, out: &Output, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Invitation(InvitationCommand::List { tenant }) => out.rows(
            &client.get(&format!("/v1/tenants/{}/invitations", client::encode(&tenant))).await?,
            "invitations",
            &[
                ("ID", "id"),
                ("EMAIL", "email"),
                ("ROLE", "role"),
                ("INVITED BY", "invited_by"),
                ("EXPIRES", "expires_at"),
                ("ACCEPTED", "accepted_at"),
            ],
        ),
        Command::Invitation(InvitationCommand::Cancel { tenant, id }) => {
            client
                .delete(&format!("/v1/tenants/{}/invitations/{}", client::encode(&tenant), client::encode(&id)))
                .await?;
            out.line(&json!({ "cancelled": id }), &format!("invitation {id} cancelled"))
        }
        Command::Member(MemberCommand::Add { tenant, email, role }) => {
            let member = client
                .post(
                    &format!("/v1/tenants/{}/members", client::encode(&tenant)),
                    &json!({ "email": email, "role": role }),
                )
                .await?;
            out.line(&member, &member_added(&member, &tenant, &email, &role))
        }
        Command::Member(MemberCommand::Remove { tenant, email }) => {
            client
                .delete(&format!("/v1/tenants/{}/members/{}", client::encode(&tenant), client::encode(&email)))
                .await?;
            out.line(&json!({ "removed": email }), &format!("{email} removed from {tenant}"))
        }
        Command::Member(MemberCommand::Transfer { tenant, email }) => {
            let path = format!("/v1/tenants/{}/transfer", client::encode(&tenant));
            let members = client.post(&path, &json!({ "email": email })).await?;
            out.line(&members, &format!("{email} now owns {tenant}"))
        }
        Command::Member(MemberCommand::List { tenant }) => out.rows(
            &client.get(&format!("/v1/tenants/{}/members", client::encode(&tenant))).await?,
            "members",
            &[("EMAIL", "email"), ("ROLE", "role")],
        ),
        Command::Grant { tenant, email, permission } => {
            let grant = client
                .post(
                    &format!("/v1/tenants/{}/grants", client::encode(&tenant)),
                    &json!({ "email": email, "permission": permission }),
                )
                .await?;
            out.line(&grant, &format!("{email} holds {permission} in {tenant}"))
        }
        Command::Revoke { tenant, email, permission } => {
            client
                .delete(&format!(
                    "/v1/tenants/{}/grants/{}/{}",
                    client::encode(&tenant),
                    client::encode(&email),
                    client::encode(&permission)
                ))
                .await?;
            out.line(&json!({ "revoked": permission }), &format!("{permission} revoked from {email} in {tenant}"))
        }
        Command::Grants { tenant } => out.rows(
            &client.get(&format!("/v1/tenants/{}/grants", client::encode(&tenant))).await?,
            "grants",
            &[("EMAIL", "email"), ("PERMISSION", "permission"), ("STATUS", "status")],
        ),
        Command::Audit { limit } => out.rows(
            &client.get(&format!("/v1/audit?limit={limit}")).await?,
            "entries",
            &[
                ("AT", "at"),
                ("ACTOR", "actor"),
                ("ACTION", "action"),
                ("TARGET", "target"),
                ("TENANT", "tenant_id"),
                ("OUTCOME", "outcome"),
            ],
        ),
        _ => unreachable!("run_client dispatches only this group's commands here"),
    }
}

/// What `wharf member add` says: the member added, or the invitation sent.
fn member_added(member: &serde_json::Value, tenant: &str, email: &str, role: &str) -> String {
    match member.get("invitation") {
        Some(invitation) => match invitation.get("link").and_then(serde_json::Value::as_str) {
            Some(link) => format!(
                "{email} has no proven account: invited as {role} of {tenant}.\n\
                 Send them this link (it works once and expires):\n{link}"
            ),
            None => format!("{email} has no proven account: an invitation was emailed to them"),
        },
        None => format!("{email} is {role} of {tenant}"),
    }
}
