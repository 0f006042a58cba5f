//! Who is calling: users (email and argon2id password), sessions (random tokens,
//! stored hashed, with expiry, revoked at logout) and API keys (shown once, stored
//! hashed, listed by a visible prefix, revocable, optional expiry).
//!
//! Failed logins are rate limited per client address and per account.

pub mod cache;
pub mod credentials;
pub mod invitations;
mod ratelimit;
pub mod secrets;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::config::Registration;
use crate::store::{self, Db};
use invitations::{Invitation, Invitations, Taken};
use ratelimit::Limiter;

/// The longest password accepted (hashing a longer one would be work for nothing).
const MAX_PASSWORD_BYTES: usize = 1024;

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
    /// When the credential itself expires (Unix seconds), if it does: what
    /// remembers the caller must forget it then.
    #[serde(skip)]
    pub expires_at: Option<i64>,
}

/// A user as the API shows it (never with the password hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub is_operator: bool,
    /// Whether the address is proven (by a mailed invitation, or an operator's word).
    pub email_verified: bool,
    pub created_at: i64,
}

/// A new session; the token is shown only here.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewSession {
    pub token: String,
    pub expires_at: i64,
    pub user: User,
}

/// A new API key; `key` is shown only here.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

/// An API key as listed: its id and visible prefix, never the secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
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
    /// Refused without checking (counted by the limits, not audited).
    #[error("wrong email or password (a password is at most 1024 bytes)")]
    OverlongPassword,
    #[error("too many failed logins; retry in {} seconds", .0.as_secs().max(1))]
    RateLimited(Duration),
    #[error("no API key {0:?}")]
    UnknownKey(String),
    #[error("the key name must be 1 to 100 characters")]
    InvalidKeyName,
    #[error("no user with email {0:?}; they must register first")]
    UnknownUser(String),
    #[error("registration is closed on this platform; ask an operator for an account")]
    RegistrationClosed,
    #[error("registration needs an invitation on this platform: ask a tenant's owner to add you, then register with the invitation's token")]
    InvitationRequired,
    #[error("this invitation is unknown, used, expired, or for another address")]
    InvalidInvitation,
    #[error("a tenant may have at most {0} open invitations; cancel some or wait for them to expire")]
    TooManyInvitations(i64),
    #[error("the password does not match: deleting an account needs its password")]
    WrongPassword,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// The identity room of one node.
pub struct Identity {
    db: Db,
    registration: Registration,
    pub invitations: Invitations,
    /// Attempts per client address.
    by_address: Limiter,
    /// Attempts on an account from addresses it has not logged in from: strangers
    /// together can lock only strangers out.
    by_account: Limiter,
    /// Attempts on an account from each address it usually logs in from.
    by_known_address: Limiter,
    pub counters: LoginCounters,
    /// Password hashes computed at once: each takes ~19 MiB and tens of ms.
    hashing: tokio::sync::Semaphore,
    /// The version of every cached credential and membership (shared with
    /// the access room, bumped by every change to either).
    pub epoch: std::sync::Arc<cache::Epoch>,
    /// Callers by their token's hash (`None`: no such credential).
    callers: cache::Memo<[u8; 32], Option<Arc<Caller>>>,
}

/// How long a registration or login waits for a password-hashing slot before
/// it answers "busy".
const HASHING_WAIT: Duration = Duration::from_secs(2);

/// A user's row; the flags are read as integers (see [`store::flag`]).
#[derive(sqlx::FromRow)]
struct UserRow {
    id: String,
    email: String,
    is_operator: i64,
    email_verified: i64,
    created_at: i64,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        User {
            id: row.id,
            email: row.email,
            is_operator: store::flag(row.is_operator),
            email_verified: store::flag(row.email_verified),
            created_at: row.created_at,
        }
    }
}

/// The columns of a [`UserRow`].
const USER_COLUMNS: &str =
    "id, email, (CASE WHEN is_operator THEN 1 ELSE 0 END) AS is_operator, (CASE WHEN email_verified THEN 1 ELSE 0 END) AS email_verified, created_at";

#[derive(sqlx::FromRow)]
struct Credentials {
    #[sqlx(flatten)]
    user: UserRow,
    password_hash: String,
}

/// What became of login attempts, counted (not audited one by one).
#[derive(Debug, Default, Serialize)]
pub struct LoginCounters {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub busy: AtomicU64,
    pub invalid: AtomicU64,
}

/// How long an address stays "usual" for an account after a login from it.
const USUAL_ADDRESS_DAYS: i64 = 90;

impl Identity {
    pub fn new(
        db: Db,
        trust: &crate::config::TrustConfig,
        redis: Option<std::sync::Arc<crate::shared::Redis>>,
    ) -> Self {
        let epoch = std::sync::Arc::new(cache::Epoch::new(Some(cache::max_age(&db))));
        Self {
            registration: trust.registration,
            invitations: Invitations::new(db.clone(), trust.invitation_lifetime),
            // Generous per address (offices share one), strict per account.
            by_address: Limiter::new("address", 20, Duration::from_secs(300), redis.clone()),
            by_account: Limiter::new("account", 5, Duration::from_secs(900), redis.clone()),
            by_known_address: Limiter::new("usual", 5, Duration::from_secs(900), redis),
            counters: LoginCounters::default(),
            epoch: epoch.clone(),
            callers: cache::Memo::new(epoch),
            db,
            hashing: tokio::sync::Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        }
    }

    /// Register a user. Depending on the platform's registration setting this
    /// needs an invitation to the address, which it uses up; operators may always
    /// create accounts. Returns the accepted invitation, if any.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        invitation: Option<&str>,
        by_operator: bool,
    ) -> Result<(User, Option<Invitation>), IdentityError> {
        match (self.registration, invitation, by_operator) {
            (_, _, true) | (_, Some(_), false) | (Registration::Open, None, false) => {}
            (Registration::Closed, None, false) => return Err(IdentityError::RegistrationClosed),
            (Registration::Invite, None, false) => return Err(IdentityError::InvitationRequired),
        }
        if self.registration == Registration::Closed && !by_operator {
            return Err(IdentityError::RegistrationClosed);
        }
        let email = normalize_email(email)?;
        check_password(password)?;
        if let Some(token) = invitation {
            // Refused before any hashing is spent on it.
            self.invitations.open(token).await?;
        }
        let _slot = self.hashing_slot().await?;
        let password_hash = hash_blocking(password.to_string()).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let accepted = match invitation {
            Some(token) => Some(Invitations::take(&mut tx, token, &email).await?),
            None => None,
        };
        // Only a mailed invitation proves the address; one handed to the inviter
        // makes the invitee a member of that tenant and nothing more.
        let proven = by_operator || accepted.as_ref().is_some_and(|t| t.proves_address);
        let user = self.insert_user(&mut tx, email, &password_hash, false, proven).await?;
        tx.commit().await.context("failed to commit registration")?;
        Ok((user, accepted.map(|t| t.invitation)))
    }

    /// Accept an invitation with an existing account of its address (a mailed
    /// one proves the address too); the caller then makes the user a member.
    pub async fn accept(&self, token: &str, user: &Caller) -> Result<Invitation, IdentityError> {
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let Taken { invitation, proves_address } = Invitations::take(&mut tx, token, &user.email).await?;
        if proves_address {
            sqlx::query("UPDATE users SET email_verified = $1 WHERE id = $2")
                .bind(true)
                .bind(&user.user_id)
                .execute(&mut *tx)
                .await
                .context("failed to mark the address proven")?;
        }
        tx.commit().await.context("failed to commit invitation")?;
        Ok(invitation)
    }

    async fn create_user(&self, email: &str, password: &str, operator: bool) -> Result<User, IdentityError> {
        let email = normalize_email(email)?;
        check_password(password)?;
        let _slot = self.hashing_slot().await?;
        let password_hash = hash_blocking(password.to_string()).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let user = self.insert_user(&mut tx, email, &password_hash, operator, true).await?;
        tx.commit().await.context("failed to commit user")?;
        Ok(user)
    }

    async fn insert_user(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        email: String,
        password_hash: &str,
        operator: bool,
        verified: bool,
    ) -> Result<User, IdentityError> {
        let user = User {
            id: format!("user-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            email,
            is_operator: operator,
            email_verified: verified,
            created_at: store::now(),
        };
        let inserted = sqlx::query(
            "INSERT INTO users (id, email, password_hash, is_operator, email_verified, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&user.id)
        .bind(&user.email)
        .bind(password_hash)
        .bind(user.is_operator)
        .bind(user.email_verified)
        .bind(user.created_at)
        .execute(&mut **tx)
        .await;
        match inserted {
            Ok(_) => Ok(user),
            Err(e) if store::is_unique_violation(&e) => Err(IdentityError::EmailTaken),
            Err(e) => Err(anyhow::Error::from(e).context("failed to create user").into()),
        }
    }

    /// Log in: check the password and open a session with a fresh random token.
    ///
    /// Every attempt is counted before its password is checked. Attempts from an
    /// address the account has logged in from lately count against that address
    /// alone; attempts from anywhere else share one budget per account. So
    /// strangers guessing at an account lock out only strangers, never its owner
    /// at their usual addresses.
    pub async fn login(&self, email: &str, password: &str, client: IpAddr) -> Result<NewSession, IdentityError> {
        let result = self.try_login(email, password, client).await;
        let counter = match &result {
            Ok(_) => &self.counters.succeeded,
            Err(IdentityError::BadCredentials) => &self.counters.failed,
            Err(IdentityError::RateLimited(_)) => &self.counters.rate_limited,
            Err(IdentityError::Busy) => &self.counters.busy,
            Err(_) => &self.counters.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }

    async fn try_login(&self, email: &str, password: &str, client: IpAddr) -> Result<NewSession, IdentityError> {
        // Checked before anything is counted or stored.
        let email = normalize_email(email)?;
        let address = usual_address_key(client);
        let usual = self.is_usual_address(&email, &address).await?;
        let account_key = if usual { format!("{email} {address}") } else { email.clone() };
        let account = if usual { &self.by_known_address } else { &self.by_account };
        // Counted before the password is checked: concurrent guesses all count.
        self.by_address.attempt(&address).await.map_err(IdentityError::RateLimited)?;
        if let Err(wait) = account.attempt(&account_key).await {
            self.by_address.refund(&address).await;
            return Err(IdentityError::RateLimited(wait));
        }
        // Refused unhashed (no password is this long), but counted like any
        // wrong password: a guess the limiter does not see is a free guess.
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(IdentityError::OverlongPassword);
        }
        let slot = match self.hashing_slot().await {
            Ok(slot) => slot,
            Err(e) => {
                // Nothing was checked: the attempt is not the caller's fault.
                self.by_address.refund(&address).await;
                account.refund(&account_key).await;
                return Err(e);
            }
        };
        let row: Option<Credentials> =
            sqlx::query_as(&format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"))
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
        account.clear(&account_key).await;
        self.by_address.refund(&address).await;
        let token = format!("{}{}", secrets::SESSION_PREFIX, secrets::random_token(32));
        let now = store::now();
        let expires_at = now + SESSION_LIFETIME.as_secs() as i64;
        sqlx::query("INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(secrets::hash_token(&token))
            .bind(&row.user.id)
            .bind(now)
            .bind(expires_at)
            .execute(&self.db)
            .await
            .context("failed to open session")?;
        sqlx::query(
            "INSERT INTO login_addresses (user_id, address, last_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, address) DO UPDATE SET last_at = excluded.last_at",
        )
        .bind(&row.user.id)
        .bind(&address)
        .bind(now)
        .execute(&self.db)
        .await
        .context("failed to remember the login address")?;
        let user = User::from(row.user);
        Ok(NewSession { token, expires_at, user })
    }

    /// Whether the account of `email` logged in from `address` lately.
    async fn is_usual_address(&self, email: &str, address: &str) -> Result<bool, IdentityError> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT 1 FROM login_addresses a JOIN users u ON u.id = a.user_id \
             WHERE u.email = $1 AND a.address = $2 AND a.last_at > $3",
        )
        .bind(email)
        .bind(address)
        .bind(store::now() - USUAL_ADDRESS_DAYS * 86_400)
        .fetch_optional(&self.db)
        .await
        .context("failed to read login addresses")?;
        Ok(row.is_some())
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
        self.epoch.bump();
        Ok(done.rows_affected() > 0)
    }

    /// Resolve a bearer token (session or API key) to its caller, if it is valid,
    /// unexpired and unrevoked.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Caller>, IdentityError> {
        Ok(self.authenticate_shared(token).await?.map(|caller| (*caller).clone()))
    }

    /// [`Identity::authenticate`] without copying the cached caller: the
    /// request path's form (a hit hashes the token and reads the cache).
    pub async fn authenticate_shared(&self, token: &str) -> Result<Option<Arc<Caller>>, IdentityError> {
        let digest = secrets::token_digest(token);
        if let Some(known) = self.callers.get(&digest) {
            return Ok(known);
        }
        let hash = hex::encode(digest);
        let read_under = self.callers.begin();
        let now = store::now();
        let (sql, credential) = if token.starts_with(secrets::SESSION_PREFIX) {
            (
                "SELECT s.token_hash, u.id, u.email, (CASE WHEN u.is_operator THEN 1 ELSE 0 END), s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id \
                 WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
                "session",
            )
        } else if token.starts_with(secrets::KEY_PREFIX) {
            (
                "SELECT k.key_hash, u.id, u.email, (CASE WHEN u.is_operator THEN 1 ELSE 0 END), k.expires_at FROM api_keys k JOIN users u ON u.id = k.user_id \
                 WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > $2)",
                "api-key",
            )
        } else {
            return Ok(None);
        };
        let row: Option<(String, String, String, i64, Option<i64>)> = sqlx::query_as(sql)
            .bind(&hash)
            .bind(now)
            .fetch_optional(&self.db)
            .await
            .context("failed to check credential")?;
        let found = row.filter(|(stored, ..)| secrets::same(stored, &hash));
        let expires_at = found.as_ref().and_then(|(.., expires)| *expires);
        let caller = found.map(|(_, user_id, email, operator, _)| {
            Arc::new(Caller { user_id, email, operator: store::flag(operator), credential, expires_at })
        });
        self.callers.put(digest, read_under, caller.clone(), caller.is_none(), expires_at);
        Ok(caller)
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
        self.epoch.bump();
        if done.rows_affected() == 0 {
            return Err(IdentityError::UnknownKey(key.to_string()));
        }
        self.keys(user_id)
            .await?
            .into_iter()
            .find(|k| k.id == key || k.prefix == key)
            .ok_or_else(|| IdentityError::UnknownKey(key.to_string()))
    }

    /// Check that `password` is `caller`'s, before something that cannot be
    /// undone: a leaked session or key alone cannot do it. Counted like a
    /// login attempt on the account, so it is no way to guess passwords.
    pub async fn confirm_password(&self, caller: &Caller, password: &str) -> Result<(), IdentityError> {
        self.by_account.attempt(&caller.email).await.map_err(IdentityError::RateLimited)?;
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(IdentityError::WrongPassword);
        }
        let slot = self.hashing_slot().await?;
        let (stored,): (String,) = sqlx::query_as("SELECT password_hash FROM users WHERE id = $1")
            .bind(&caller.user_id)
            .fetch_optional(&self.db)
            .await
            .context("failed to look up user")?
            .ok_or_else(|| IdentityError::UnknownUser(caller.email.clone()))?;
        let matches = verify_blocking(password.to_string(), stored).await?;
        drop(slot);
        if !matches {
            return Err(IdentityError::WrongPassword);
        }
        self.by_account.clear(&caller.email).await;
        Ok(())
    }

    /// A user by email.
    pub async fn user_by_email(&self, email: &str) -> Result<User, IdentityError> {
        let email = email.trim().to_ascii_lowercase();
        sqlx::query_as::<_, UserRow>(&format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1"))
            .bind(&email)
            .fetch_optional(&self.db)
            .await
            .context("failed to look up user")?
            .map(User::from)
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

fn check_password(password: &str) -> Result<(), IdentityError> {
    if password.chars().count() < 10 || password.len() > MAX_PASSWORD_BYTES {
        return Err(IdentityError::WeakPassword);
    }
    Ok(())
}

/// The key an address is known by: an IPv4 address, or an IPv6 /64 (one
/// household or office).
fn usual_address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// Destroy an account within `tx` (its memberships are gone already): its
/// sessions and API keys — refused from the commit on, on every node, as each
/// request checks its credential — its login addresses, and its row.
pub async fn forget_user_in(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    user_id: &str,
) -> Result<(), IdentityError> {
    for table in ["sessions", "api_keys", "login_addresses"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
            .bind(user_id)
            .execute(&mut **tx)
            .await
            .with_context(|| format!("failed to drop the account's {table}"))?;
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .context("failed to drop the account")?;
    Ok(())
}

/// Validate and normalise an email address.
pub fn normalize_email(email: &str) -> Result<String, IdentityError> {
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

#[cfg(test)]
mod tests;
