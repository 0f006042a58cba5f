//! Who is calling: users (email and argon2id password), sessions (random tokens,
//! stored hashed, with expiry, revoked at logout) and API keys (shown once, stored
//! hashed, listed by a visible prefix, revocable, optional expiry).
//!
//! Failed logins are rate limited per client address and per account.

mod ratelimit;
pub mod secrets;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::store::{self, Db};
use ratelimit::FailureLimiter;

/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// An authenticated caller.
#[derive(Debug, Clone, Serialize)]
pub struct Caller {
    pub user_id: String,
    pub email: String,
    /// Platform operators may do everything, in every tenant.
    pub operator: bool,
    /// `session` or `api-key`.
    pub credential: &'static str,
}

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct User {
    pub id: String,
    pub email: String,
    pub is_operator: bool,
    pub created_at: i64,
}

/// A new session; the token is shown only here.
#[derive(Debug, Clone, Serialize)]
pub struct NewSession {
    pub token: String,
    pub expires_at: i64,
    pub user: User,
}

/// A new API key; `key` is shown only here.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// An API key as listed: its id and visible prefix, never the secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why an identity operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?} is not a valid email address (at most 254 characters, like ann@example.com)")]
    InvalidEmail(String),
    #[error("the node is busy checking passwords; retry in a second")]
    Busy,
    #[error("the password must be 10 to 1024 characters long")]
    WeakPassword,
    #[error("an account with this email already exists; log in instead")]
    EmailTaken,
    #[error("wrong email or password")]
    BadCredentials,
    #[error("too many failed logins; retry in {} seconds", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("no API key {0:?}")]
    UnknownKey(String),
    #[error("the key name must be 1 to 100 characters")]
    InvalidKeyName,
    #[error("no user with email {0:?}; they must register first")]
    UnknownUser(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The identity room of one node.
pub struct Identity {
    db: Db,
    by_address: FailureLimiter,
    by_account: FailureLimiter,
    /// Password hashes computed at once: each takes ~19 MiB and tens of ms.
    hashing: tokio::sync::Semaphore,
}

/// How long a registration or login waits for a password-hashing slot before
/// it answers "busy".
const HASHING_WAIT: Duration = Duration::from_secs(2);

#[derive(sqlx::FromRow)]
struct Credentials {
    id: String,
    email: String,
    password_hash: String,
    is_operator: bool,
    created_at: i64,
}

impl Identity {
    pub fn new(db: Db) -> Self {
        Self {
            db,
            // Generous per address (offices share one), strict per account.
            by_address: FailureLimiter::new(20, Duration::from_secs(300)),
            by_account: FailureLimiter::new(5, Duration::from_secs(900)),
            hashing: tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        }
    }

    /// Register a user.
    pub async fn register(&self, email: &str, password: &str) -> Result<User, IdentityError> {
        self.create_user(email, password, false).await
    }

    async fn create_user(&self, email: &str, password: &str, operator: bool) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        if password.chars().count() < 10 || password.len() > 1024 {
            return Err(IdentityError::WeakPassword);
        }
        let _slot = self.hashing_slot().await?;
        let password_hash = hash_blocking(password.to_string()).await?;
        let user = User {
            id: format!("user-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            email,
            is_operator: operator,
            created_at: store::now(),
        };
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, is_operator, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(&password_hash)
        .bind(user.is_operator)
        .bind(user.created_at)
        .execute(&self.db)
        .await;
        match inserted {
            Ok(_) => Ok(user),
            Err(e) if store::is_unique_violation(&e) => Err(IdentityError::EmailTaken),
            Err(e) => Err(anyhow::Error::from(e).context("failed to create user").into()),
        }
    }

    /// Log in: check the password and open a session with a fresh random token.
    pub async fn login(&self, email: &str, password: &str, client: IpAddr) -> Result<NewSession, IdentityError> {
        // Checked before anything is counted or stored.
        let email = normalize_email(email)?;
        if password.len() > 1024 {
            return Err(IdentityError::BadCredentials);
        }
        let address_key = client.to_string();
        // Counted before the password is checked: concurrent guesses all count.
        self.by_address.attempt(&address_key).map_err(IdentityError::RateLimited)?;
        if let Err(wait) = self.by_account.attempt(&email) {
            self.by_address.refund(&address_key);
            return Err(IdentityError::RateLimited(wait));
        }
        let slot = match self.hashing_slot().await {
            Ok(slot) => slot,
            Err(e) => {
                // Nothing was checked: the attempt is not the caller's fault.
                self.by_address.refund(&address_key);
                self.by_account.refund(&email);
                return Err(e);
            }
        };
        let row: Option<Credentials> =
            sqlx::query_as("SELECT id, email, password_hash, is_operator, created_at FROM users WHERE email = $1")
                .bind(&email)
                .fetch_optional(&self.db)
                .await
                .context("failed to look up user")?;
        // Verify against a dummy hash for unknown accounts: same time either way.
        let stored = row.as_ref().map(|r| r.password_hash.clone()).unwrap_or_else(|| secrets::dummy_hash().to_string());
        let matches = verify_blocking(password.to_string(), stored).await?;
        drop(slot);
        let Some(row) = row.filter(|_| matches) else {
            return Err(IdentityError::BadCredentials);
        };
        self.by_account.clear(&email);
        self.by_address.refund(&address_key);
        let token = format!("{}{}", secrets::SESSION_PREFIX, secrets::random_token(32));
        let now = store::now();
        let expires_at = now + SESSION_LIFETIME.as_secs() as i64;
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(secrets::hash_token(&token))
            .bind(&row.id)
            .bind(now)
            .bind(expires_at)
            .execute(&self.db)
            .await
            .context("failed to open session")?;
        let user = User { id: row.id, email: row.email, is_operator: row.is_operator, created_at: row.created_at };
        Ok(NewSession { token, expires_at, user })
    }

    /// A password-hashing slot, waiting at most [`HASHING_WAIT`].
    async fn hashing_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, IdentityError> {
        match tokio::time::timeout(HASHING_WAIT, self.hashing.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(IdentityError::Busy),
        }
    }

    /// Revoke a session token. Returns whether it was an open session.
    pub async fn logout(&self, token: &str) -> Result<bool, IdentityError> {
        let done = sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE token_hash = $2 AND revoked_at IS NULL")
            .bind(store::now())
            .bind(secrets::hash_token(token))
            .execute(&self.db)
            .await
            .context("failed to revoke session")?;
        Ok(done.rows_affected() > 0)
    }

    /// Resolve a bearer token (session or API key) to its caller, if it is valid,
    /// unexpired and unrevoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, IdentityError> {
        let hash = secrets::hash_token(token);
        let now = store::now();
        let (sql, credential) = if token.starts_with(secrets::SESSION_PREFIX) {
            (
                "SELECT s.token_hash, u.id, u.email, u.is_operator FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
                "session",
            )
        } else if token.starts_with(secrets::KEY_PREFIX) {
            (
                "SELECT k.key_hash, u.id, u.email, u.is_operator FROM api_keys k JOIN users u ON u.id = k.user_id \
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
                "api-key",
            )
        } else {
            return Ok(None);
        };
        let row: Option<(String, String, String, bool)> = sqlx::query_as(sql)
            .bind(&hash)
            .bind(now)
            .fetch_optional(&self.db)
            .await
            .context("failed to check credential")?;
        Ok(row.filter(|(stored, ..)| secrets::same(stored, &hash)).map(|(_, user_id, email, operator)| Caller {
            user_id,
            email,
            operator,
            credential,
        }))
    }

    /// Create an API key for `user_id`. The key is returned once and stored hashed.
    pub async fn create_key(
        &self,
        user_id: &str,
        name: &str,
        expires_in: Option<Duration>,
    ) -> Result<NewKey, IdentityError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(IdentityError::InvalidKeyName);
        }
        // The prefix is random too, so listing keys reveals nothing of the secret.
        let prefix = format!("{}{}", secrets::KEY_PREFIX, &secrets::random_token(6)[..8]);
        let key = format!("{prefix}_{}", secrets::random_token(32));
        let now = store::now();
        let info = KeyInfo {
            id: format!("key-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            name: name.to_string(),
            prefix,
            created_at: now,
            expires_at: expires_in.map(|d| now + d.as_secs() as i64),
            revoked_at: None,
        };
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&info.id)
        .bind(user_id)
        .bind(&info.name)
        .bind(&info.prefix)
        .bind(secrets::hash_token(&key))
        .bind(info.created_at)
        .bind(info.expires_at)
        .execute(&self.db)
        .await
        .context("failed to create key")?;
        Ok(NewKey { key, info })
    }

    /// The API keys of a user.
    pub async fn keys(&self, user_id: &str) -> Result<Vec<KeyInfo>, IdentityError> {
        Ok(sqlx::query_as(
            "SELECT id, name, prefix, created_at, expires_at, revoked_at FROM api_keys WHERE user_id = $1 ORDER BY created_at, id",
        )
        .bind(user_id)
        .fetch_all(&self.db)
        .await
        .context("failed to list keys")?)
    }

    /// Revoke one of `user_id`'s keys (by id or prefix).
    pub async fn revoke_key(&self, user_id: &str, key: &str) -> Result<KeyInfo, IdentityError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE user_id = $2 AND (id = $3 OR prefix = $3) AND revoked_at IS NULL",
        )
        .bind(store::now())
        .bind(user_id)
        .bind(key)
        .execute(&self.db)
        .await
        .context("failed to revoke key")?;
        if done.rows_affected() == 0 {
            return Err(IdentityError::UnknownKey(key.to_string()));
        }
        self.keys(user_id)
            .await?
            .into_iter()
            .find(|k| k.id == key || k.prefix == key)
            .ok_or_else(|| IdentityError::UnknownKey(key.to_string()))
    }

    /// A user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<User, IdentityError> {
        let email = email.trim().to_ascii_lowercase();
        sqlx::query_as("SELECT id, email, is_operator, created_at FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&self.db)
            .await
            .context("failed to look up user")?
            .ok_or(IdentityError::UnknownUser(email))
    }

    /// Create the first operator if there is none, with a random password and an
    /// API key; returns the key (to be shown once), or `None` if an operator exists.
    pub async fn init_operator(&self, email: &str) -> Result<Option<(User, String)>, IdentityError> {
        let existing: Option<(String,)> = sqlx::query_as("SELECT id FROM users WHERE is_operator = $1 LIMIT 1")
            .bind(true)
            .fetch_optional(&self.db)
            .await
            .context("failed to look for operators")?;
        if existing.is_some() {
            return Ok(None);
        }
        let user = self.create_user(email, &secrets::random_token(24), true).await?;
        let key = self.create_key(&user.id, "initial operator key", None).await?;
        Ok(Some((user, key.key)))
    }
}

fn normalize_email(email: &str) -> Result<String, IdentityError> {
    let email = email.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.') && !domain.contains('@'));
    if valid {
        Ok(email)
    } else {
        // Echo enough to recognise it, never a megabyte of it.
        Err(IdentityError::InvalidEmail(email.chars().take(64).collect()))
    }
}

// argon2 is deliberately slow; keep it off the async workers.
async fn hash_blocking(password: String) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || secrets::hash_password(&password)).await.context("hash task failed")?
}

async fn verify_blocking(password: String, stored: String) -> anyhow::Result<bool> {
    tokio::task::spawn_blocking(move || secrets::verify_password(&password, &stored))
        .await
        .context("verify task failed")
}
