//! Invitations: how someone without a proven account joins a tenant. Adding them
//! creates an invitation, a one-time token that expires; it goes to the address
//! by email when SMTP is configured, else its link is returned to the inviter and
//! printed in the node's log. Registering with the token (or, for an existing
//! account of that address, accepting it) makes the invitee a member of that
//! tenant. Only a mailed token proves the address (to every tenant): a token
//! handed back to the inviter proves only that the inviter passed it on, so an
//! owner cannot invite `ann@corp.com` to their own tenant, register that address
//! with the token, and be given Corp's role for Ann later.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::{secrets, IdentityError};
use crate::store::{self, Db};

/// Prefix of invitation tokens.
pub const INVITATION_PREFIX: &str = "whi_";
/// Open invitations one tenant may have at once: inviting cannot become a way
/// to send mail in bulk.
pub const MAX_OPEN_PER_TENANT: i64 = 100;

/// An invitation as the API lists it (never with its token).
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Invitation {
    pub id: String,
    #[sqlx(rename = "tenant_id")]
    pub tenant: String,
    pub email: String,
    pub role: String,
    pub invited_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub accepted_at: Option<i64>,
}

/// An invitation used up by [`Invitations::take`], and whether using it proves
/// the address (its token reached the address by mail).
pub struct Taken {
    pub invitation: Invitation,
    pub proves_address: bool,
}

#[derive(sqlx::FromRow)]
struct TakenRow {
    #[sqlx(flatten)]
    invitation: Invitation,
    /// `(CASE WHEN proves_address THEN 1 ELSE 0 END)`: see [`store::flag`].
    proves: i64,
}

/// A new invitation: the token is shown only here (and only when no email was sent).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewInvitation {
    #[serde(flatten)]
    pub invitation: Invitation,
    /// `email` when it was sent by SMTP, else `link`: give the link to the invitee.
    #[schema(value_type = String)]
    pub delivery: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

const COLUMNS: &str = "id, tenant_id, email, role, invited_by, created_at, expires_at, accepted_at";

/// The invitations of a node.
pub struct Invitations {
    db: Db,
    lifetime: Duration,
}

impl Invitations {
    pub fn new(db: Db, lifetime: Duration) -> Self {
        Self { db, lifetime }
    }

    /// Create an invitation of `email` (normalised) to `tenant` as `role`;
    /// returns it with its token. `mailed`: the token goes to the address
    /// itself, so using it proves the address.
    pub async fn create(
        &self,
        tenant: &str,
        email: &str,
        role: &str,
        invited_by: &str,
        mailed: bool,
    ) -> Result<(Invitation, String), IdentityError> {
        let token = format!("{INVITATION_PREFIX}{}", secrets::random_token(32));
        let now = store::now();
        let invitation = Invitation {
            id: format!("inv-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            tenant: tenant.to_string(),
            email: email.to_string(),
            role: role.to_string(),
            invited_by: invited_by.to_string(),
            created_at: now,
            expires_at: now + self.lifetime.as_secs() as i64,
            accepted_at: None,
        };
        // Counted and inserted in one statement.
        let done = sqlx::query(
            "INSERT INTO invitations (id, token_hash, tenant_id, email, role, invited_by, created_at, expires_at, \
                 proves_address) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10 WHERE (SELECT COUNT(*) FROM invitations \
                 WHERE tenant_id = $3 AND accepted_at IS NULL AND expires_at > $7) < $9",
        )
        .bind(&invitation.id)
        .bind(secrets::hash_token(&token))
        .bind(&invitation.tenant)
        .bind(&invitation.email)
        .bind(&invitation.role)
        .bind(&invitation.invited_by)
        .bind(invitation.created_at)
        .bind(invitation.expires_at)
        .bind(MAX_OPEN_PER_TENANT)
        .bind(mailed)
        .execute(&self.db)
        .await
        .context("failed to create invitation")?;
        if done.rows_affected() == 0 {
            return Err(IdentityError::TooManyInvitations(MAX_OPEN_PER_TENANT));
        }
        Ok((invitation, token))
    }

    /// Withdraw an invitation (it can no longer be accepted).
    pub async fn cancel(&self, tenant: &str, id: &str) -> Result<bool, IdentityError> {
        let done = sqlx::query("DELETE FROM invitations WHERE tenant_id = $1 AND id = $2 AND accepted_at IS NULL")
            .bind(tenant)
            .bind(id)
            .execute(&self.db)
            .await
            .context("failed to cancel invitation")?;
        Ok(done.rows_affected() > 0)
    }

    /// The open and accepted invitations of a tenant, newest first.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Invitation>, IdentityError> {
        Ok(sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM invitations WHERE tenant_id = $1 ORDER BY created_at DESC, id LIMIT 500"
        ))
        .bind(tenant)
        .fetch_all(&self.db)
        .await
        .context("failed to list invitations")?)
    }

    /// An open invitation by its token.
    pub async fn open(&self, token: &str) -> Result<Invitation, IdentityError> {
        if !token.starts_with(INVITATION_PREFIX) || token.len() > 100 {
            return Err(IdentityError::InvalidInvitation);
        }
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM invitations WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > $2 \
             AND tenant_id IN (SELECT id FROM tenants WHERE deleted_at IS NULL)"
        ))
        .bind(secrets::hash_token(token))
        .bind(store::now())
        .fetch_optional(&self.db)
        .await
        .context("failed to read invitation")?
        .ok_or(IdentityError::InvalidInvitation)
    }

    /// Use up the invitation `token` of `email` inside `tx`: at most once, before
    /// it expires, only by its address.
    pub async fn take(
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        token: &str,
        email: &str,
    ) -> Result<Taken, IdentityError> {
        let now = store::now();
        let found: Option<TakenRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS}, (CASE WHEN proves_address THEN 1 ELSE 0 END) AS proves FROM invitations \
             WHERE token_hash = $1 AND accepted_at IS NULL AND expires_at > $2 \
             AND tenant_id IN (SELECT id FROM tenants WHERE deleted_at IS NULL)"
        ))
        .bind(secrets::hash_token(token))
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .context("failed to read invitation")?;
        let Some(TakenRow { mut invitation, proves }) = found.filter(|r| r.invitation.email == email) else {
            return Err(IdentityError::InvalidInvitation);
        };
        let done = sqlx::query("UPDATE invitations SET accepted_at = $1 WHERE id = $2 AND accepted_at IS NULL")
            .bind(now)
            .bind(&invitation.id)
            .execute(&mut **tx)
            .await
            .context("failed to accept invitation")?;
        if done.rows_affected() == 0 {
            return Err(IdentityError::InvalidInvitation);
        }
        invitation.accepted_at = Some(now);
        Ok(Taken { invitation, proves_address: store::flag(proves) })
    }
}

/// Sends invitations by SMTP.
pub struct Mailer {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
}

impl Mailer {
    /// A mailer for `url` (`smtp://host:port`, `smtps://user:pass@host`), sending as `from`.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url)
            .with_context(|| format!("invalid SMTP URL {url:?}"))?
            .timeout(Some(Duration::from_secs(10)))
            .build();
        let from = from.parse().with_context(|| format!("invalid sender address {from:?}"))?;
        Ok(Self { transport, from })
    }

    /// Send the invitation `link` to its address.
    pub async fn send(&self, invitation: &Invitation, link: &str, token: &str) -> anyhow::Result<()> {
        use lettre::AsyncTransport as _;
        let text = format!(
            "{} invited you to the tenant {} as {}.\n\n\
             Accept by registering with this invitation (it expires in {} days and works once):\n\n  {link}\n\n\
             or with the CLI:\n\n  wharf register {} --invitation {token}\n\n\
             If you have an account already, log in and run: wharf accept {token}\n",
            invitation.invited_by,
            invitation.tenant,
            invitation.role,
            ((invitation.expires_at - invitation.created_at) / 86_400).max(1),
            invitation.email,
        );
        // Plain 7-bit when it can be (ASCII, lines far below SMTP's 998), so the
        // link and token arrive unbroken, never folded by quoted-printable.
        let body = if text.is_ascii() && text.lines().all(|l| l.len() < 900) {
            lettre::message::Body::dangerous_pre_encoded(
                text.replace('\n', "\r\n").into_bytes(),
                lettre::message::header::ContentTransferEncoding::SevenBit,
            )
        } else {
            lettre::message::Body::new(text)
        };
        let message = lettre::Message::builder()
            .from(self.from.clone())
            .to(invitation.email.parse().context("invalid recipient")?)
            .subject(format!("You are invited to {} on Wharf", invitation.tenant))
            .header(lettre::message::header::ContentType::TEXT_PLAIN)
            .body(body)
            .context("failed to build the invitation email")?;
        self.transport.send(message).await.context("the SMTP server refused the invitation")?;
        Ok(())
    }
}

/// Destroy a purged tenant's invitations (within the purge's `tx`).
pub async fn forget_tenant_in(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    tenant: &str,
) -> Result<(), IdentityError> {
    sqlx::query("DELETE FROM invitations WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&mut **tx)
        .await
        .context("failed to drop the tenant's invitations")?;
    Ok(())
}
