//! What a caller may do. Platform permissions are namespaced like service ones
//! (`wharf.instances.manage`); tenant members hold them through their role, and
//! operators hold them everywhere. Service permissions (`forum.addUsers`) are
//! declared by a service's manifest and granted to members of a tenant.
//!
//! A caller who is not a member of a tenant learns nothing about it: checks
//! answer "not found", exactly as for a tenant that does not exist.

use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::identity::cache::{Epoch, Memo};
use crate::identity::Caller;
use crate::store::{self, Db};

/// A member's role in a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }

    /// Whether this role holds a platform permission within its tenant.
    pub fn holds(self, permission: Platform) -> bool {
        match permission {
            Platform::TenantRead => true,
            Platform::InstancesManage | Platform::BillingRead | Platform::AuditRead => {
                matches!(self, Role::Owner | Role::Admin)
            }
            Platform::MembersManage | Platform::BillingManage => matches!(self, Role::Owner | Role::Admin),
            Platform::TenantDelete => matches!(self, Role::Owner),
            Platform::ServicesPublish | Platform::NodeRead | Platform::QuotasManage | Platform::BillingOperate => false,
        }
    }
}

/// Platform permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// See a tenant and its instances.
    TenantRead,
    /// Create and change instances.
    InstancesManage,
    /// Add and remove members, grant and revoke permissions.
    MembersManage,
    /// Read usage, subscriptions and invoices.
    BillingRead,
    /// Set the tenant's billing details and spending limit.
    BillingManage,
    /// Set plans and discounts, close invoices, move the clock (operators).
    BillingOperate,
    /// Delete the tenant (owners).
    TenantDelete,
    /// Read the audit log.
    AuditRead,
    /// Publish and activate service versions (operators).
    ServicesPublish,
    /// Inspect the node (operators).
    NodeRead,
    /// Set quotas (operators).
    QuotasManage,
}

impl Platform {
    /// Whether holding it lets one change something in a tenant (refused in a
    /// deleted tenant, even to operators).
    fn changes_tenant(self) -> bool {
        matches!(
            self,
            Platform::InstancesManage | Platform::MembersManage | Platform::BillingManage | Platform::QuotasManage
        )
    }

    /// Whether it reads records kept after a tenant is purged.
    fn reads_records(self) -> bool {
        matches!(self, Platform::BillingRead | Platform::BillingOperate | Platform::AuditRead)
    }

    pub fn name(self) -> &'static str {
        match self {
            Platform::TenantRead => "wharf.tenants.read",
            Platform::InstancesManage => "wharf.instances.manage",
            Platform::MembersManage => "wharf.members.manage",
            Platform::BillingRead => "wharf.billing.read",
            Platform::BillingManage => "wharf.billing.manage",
            Platform::BillingOperate => "wharf.billing.operate",
            Platform::TenantDelete => "wharf.tenants.delete",
            Platform::AuditRead => "wharf.audit.read",
            Platform::ServicesPublish => "wharf.services.publish",
            Platform::NodeRead => "wharf.node.read",
            Platform::QuotasManage => "wharf.quotas.manage",
        }
    }
}

/// Why an access check failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// Not a member: indistinguishable from a tenant that does not exist.
    #[error("no tenant {0:?}")]
    NoSuchTenant(String),
    #[error("you lack {0} in tenant {1:?}; ask an owner or admin")]
    Forbidden(&'static str, String),
    #[error("only platform operators hold {0}")]
    OperatorsOnly(&'static str),
    #[error("{0:?} is not a role; use owner, admin or member")]
    InvalidRole(String),
    #[error("{0:?} is not a member of tenant {1:?}")]
    NotAMember(String, String),
    #[error("a tenant must keep at least one owner")]
    LastOwner,
    #[error("tenant {0:?} is deleted: restore it first (wharf tenant restore {0})")]
    TenantDeleted(String),
    #[error(
        "this account is the last owner of {}: make another member owner first (wharf member transfer --tenant {} EMAIL) or delete the tenant (wharf tenant delete {})",
        .0.join(", "), .0[0], .0[0]
    )]
    LastOwnerOf(Vec<String>),
    #[error("this is the platform's last operator account: make another operator first")]
    LastOperator,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// A membership as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Member {
    pub tenant: String,
    pub user_id: String,
    pub email: String,
    pub role: Role,
    pub created_at: i64,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Grant {
    pub tenant: String,
    pub email: String,
    /// `service.permission`
    pub permission: String,
    pub created_at: i64,
}

/// Memberships count only in tenants that are not deleted: a deleted tenant's
/// people lose access at once, on every node, and get it back if it is restored.
const LIVE: &str = "tenant_id IN (SELECT id FROM tenants WHERE deleted_at IS NULL)";

/// The access room of one node.
pub struct Access {
    db: Db,
    epoch: Arc<Epoch>,
    /// Roles by (tenant, user); `None`: not a member of a live tenant.
    roles: Memo<(String, String), Option<Role>>,
    /// Every permission a member holds in a tenant, by (tenant, user).
    held: Memo<(String, String), Arc<Vec<String>>>,
}

impl Access {
    /// The access room, with a cache of its own (see [`Access::with_epoch`]).
    pub fn new(db: Db) -> Self {
        let max_age = crate::identity::cache::max_age(&db);
        Self::with_epoch(db, Arc::new(Epoch::new(Some(max_age))))
    }

    /// The access room caching under `epoch`, the identity room's: a change to
    /// credentials and one to memberships invalidate the same entries.
    pub fn with_epoch(db: Db, epoch: Arc<Epoch>) -> Self {
        Self { db, roles: Memo::new(epoch.clone()), held: Memo::new(epoch.clone()), epoch }
    }

    /// A user's role in a tenant.
    pub async fn role(&self, tenant: &str, user_id: &str) -> Result<Option<Role>, AccessError> {
        self.role_of(&(tenant.to_string(), user_id.to_string())).await
    }

    /// [`Access::role`] for a `(tenant, user)` key already made.
    async fn role_of(&self, key: &(String, String)) -> Result<Option<Role>, AccessError> {
        if let Some(role) = self.roles.get(key) {
            return Ok(role);
        }
        let read_under = self.roles.begin();
        let role = self.role_now(&key.0, &key.1).await?;
        self.roles.put(key.clone(), read_under, role, role.is_none(), None);
        Ok(role)
    }

    /// A user's role in a tenant, from the control plane.
    async fn role_now(&self, tenant: &str, user_id: &str) -> Result<Option<Role>, AccessError> {
        let row: Option<(String,)> = sqlx::query_as(&format!(
            "SELECT role FROM tenant_members WHERE tenant_id = $1 AND user_id = $2 AND {LIVE}"
        ))
        .bind(tenant)
        .bind(user_id)
        .fetch_optional(&self.db)
        .await
        .context("failed to read membership")?;
        Ok(row.and_then(|(r,)| Role::parse(&r)))
    }

    /// Require `permission` in `tenant`: operators pass; non-members get "no such
    /// tenant"; members without it get "forbidden".
    /// A deleted tenant is not there for its members; operators may still
    /// read it but change nothing in it, and once it is purged only its
    /// records (billing, audit) remain.
    pub async fn require(&self, caller: &Caller, tenant: &str, permission: Platform) -> Result<(), AccessError> {
        if caller.operator {
            return match self.deleted(tenant).await? {
                None => Ok(()),
                Some(_) if permission.reads_records() => Ok(()),
                Some(true) => Err(AccessError::NoSuchTenant(tenant.to_string())),
                Some(false) if permission.changes_tenant() => Err(AccessError::TenantDeleted(tenant.to_string())),
                Some(false) => Ok(()),
            };
        }
        match self.role(tenant, &caller.user_id).await? {
            None => Err(AccessError::NoSuchTenant(tenant.to_string())),
            Some(role) if role.holds(permission) => Ok(()),
            Some(_) => Err(AccessError::Forbidden(permission.name(), tenant.to_string())),
        }
    }

    /// Whether `tenant` is deleted: `Some(purged)`, or `None` while it lives.
    async fn deleted(&self, tenant: &str) -> Result<Option<bool>, AccessError> {
        let row: Option<(Option<i64>, Option<i64>)> =
            sqlx::query_as("SELECT deleted_at, purged_at FROM tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&self.db)
                .await
                .context("failed to read the tenant")?;
        Ok(match row {
            Some((Some(_), purged)) => Some(purged.is_some()),
            _ => None,
        })
    }

    /// Require that `caller` may bring back the deleted `tenant`: an operator,
    /// or one of its owners (whose membership waits out the grace with it).
    pub async fn require_restorer(&self, caller: &Caller, tenant: &str) -> Result<(), AccessError> {
        if caller.operator {
            return Ok(());
        }
        let row: Option<(String,)> =
            sqlx::query_as("SELECT role FROM tenant_members WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(&caller.user_id)
                .fetch_optional(&self.db)
                .await
                .context("failed to read membership")?;
        match row.and_then(|(r,)| Role::parse(&r)) {
            None => Err(AccessError::NoSuchTenant(tenant.to_string())),
            Some(Role::Owner) => Ok(()),
            Some(_) => Err(AccessError::Forbidden(Platform::TenantDelete.name(), tenant.to_string())),
        }
    }

    /// Require a platform-wide permission (operators only).
    pub fn require_operator(&self, caller: &Caller, permission: Platform) -> Result<(), AccessError> {
        if caller.operator {
            Ok(())
        } else {
            Err(AccessError::OperatorsOnly(permission.name()))
        }
    }

    /// The tenants a caller may see (`None`: all, for operators).
    pub async fn visible_tenants(&self, caller: &Caller) -> Result<Option<Vec<String>>, AccessError> {
        if caller.operator {
            return Ok(None);
        }
        let rows: Vec<(String,)> = sqlx::query_as(&format!(
            "SELECT tenant_id FROM tenant_members WHERE user_id = $1 AND {LIVE} ORDER BY tenant_id"
        ))
        .bind(&caller.user_id)
        .fetch_all(&self.db)
        .await
        .context("failed to list memberships")?;
        Ok(Some(rows.into_iter().map(|(t,)| t).collect()))
    }

    /// The tenants in which `caller` holds `permission` (`None`: all, for operators).
    pub async fn tenants_holding(
        &self,
        caller: &Caller,
        permission: Platform,
    ) -> Result<Option<Vec<String>>, AccessError> {
        if caller.operator {
            return Ok(None);
        }
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT tenant_id, role FROM tenant_members WHERE user_id = $1 AND {LIVE} ORDER BY tenant_id"
        ))
        .bind(&caller.user_id)
        .fetch_all(&self.db)
        .await
        .context("failed to list memberships")?;
        Ok(Some(
            rows.into_iter()
                .filter(|(_, role)| Role::parse(role).is_some_and(|r| r.holds(permission)))
                .map(|(t, _)| t)
                .collect(),
        ))
    }

    /// Add or change a member. The last owner cannot be demoted: the check and
    /// the change are one statement, so two owners demoting each other at once
    /// cannot both succeed.
    pub async fn set_member(&self, tenant: &str, user_id: &str, role: Role) -> Result<(), AccessError> {
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", tenant).await.context("failed to lock the tenant")?;
        let changed = sqlx::query(
            "INSERT INTO tenant_members (tenant_id, user_id, role, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = excluded.role \
             WHERE excluded.role = 'owner' OR tenant_members.role <> 'owner' OR EXISTS ( \
                 SELECT 1 FROM tenant_members o WHERE o.tenant_id = $1 AND o.role = 'owner' AND o.user_id <> $2)",
        )
        .bind(tenant)
        .bind(user_id)
        .bind(role.as_str())
        .bind(store::now())
        .execute(&mut *tx)
        .await
        .context("failed to set member")?
        .rows_affected();
        if changed == 0 {
            return Err(AccessError::LastOwner);
        }
        tx.commit().await.context("failed to commit member")?;
        self.changed();
        Ok(())
    }

    /// Remove a member and their grants in the tenant; never the last owner.
    pub async fn remove_member(&self, tenant: &str, user_id: &str, email: &str) -> Result<(), AccessError> {
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        store::lock_row(&mut tx, "tenants", "id", tenant).await.context("failed to lock the tenant")?;
        let removed = sqlx::query(
            "DELETE FROM tenant_members WHERE tenant_id = $1 AND user_id = $2 AND (role <> 'owner' OR EXISTS ( \
                 SELECT 1 FROM tenant_members o WHERE o.tenant_id = $1 AND o.role = 'owner' AND o.user_id <> $2))",
        )
        .bind(tenant)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .context("failed to remove member")?
        .rows_affected();
        if removed == 0 {
            drop(tx);
            return match self.role(tenant, user_id).await? {
                None => Err(AccessError::NotAMember(email.to_string(), tenant.to_string())),
                Some(_) => Err(AccessError::LastOwner),
            };
        }
        sqlx::query("DELETE FROM grants WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .context("failed to remove grants")?;
        tx.commit().await.context("failed to commit")?;
        self.changed();
        Ok(())
    }

    /// The tenants `user_id` is a member of, with their role in each.
    pub async fn memberships(&self, user_id: &str) -> Result<Vec<Member>, AccessError> {
        self.member_rows("m.user_id", user_id, "m.tenant_id").await
    }

    /// Members of a tenant.
    pub async fn members(&self, tenant: &str) -> Result<Vec<Member>, AccessError> {
        self.member_rows("m.tenant_id", tenant, "u.email").await
    }

    /// Memberships where `column` (of `tenant_members m`) is `value`, ordered by `order`.
    async fn member_rows(&self, column: &str, value: &str, order: &str) -> Result<Vec<Member>, AccessError> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(&format!(
            "SELECT m.tenant_id, m.user_id, u.email, m.role, m.created_at FROM tenant_members m \
             JOIN users u ON u.id = m.user_id WHERE {column} = $1 AND m.{LIVE} ORDER BY {order}"
        ))
        .bind(value)
        .fetch_all(&self.db)
        .await
        .context("failed to list members")?;
        Ok(rows
            .into_iter()
            .filter_map(|(tenant, user_id, email, role, created_at)| {
                Some(Member { tenant, user_id, email, role: Role::parse(&role)?, created_at })
            })
            .collect())
    }

    /// Grant a service permission to a member (idempotent).
    pub async fn grant(&self, tenant: &str, user_id: &str, email: &str, permission: &str) -> Result<(), AccessError> {
        if self.role(tenant, user_id).await?.is_none() {
            return Err(AccessError::NotAMember(email.to_string(), tenant.to_string()));
        }
        sqlx::query(
            "INSERT INTO grants (tenant_id, user_id, permission, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant_id, user_id, permission) DO NOTHING",
        )
        .bind(tenant)
        .bind(user_id)
        .bind(permission)
        .bind(store::now())
        .execute(&self.db)
        .await
        .context("failed to grant")?;
        self.changed();
        Ok(())
    }

    /// Revoke a grant; returns whether it existed.
    pub async fn revoke(&self, tenant: &str, user_id: &str, permission: &str) -> Result<bool, AccessError> {
        let done = sqlx::query("DELETE FROM grants WHERE tenant_id = $1 AND user_id = $2 AND permission = $3")
            .bind(tenant)
            .bind(user_id)
            .bind(permission)
            .execute(&self.db)
            .await
            .context("failed to revoke")?;
        self.changed();
        Ok(done.rows_affected() > 0)
    }

    /// Grants in a tenant.
    pub async fn grants(&self, tenant: &str) -> Result<Vec<Grant>, AccessError> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT u.email, g.permission, g.created_at FROM grants g JOIN users u ON u.id = g.user_id \
             WHERE g.tenant_id = $1 ORDER BY u.email, g.permission",
        )
        .bind(tenant)
        .fetch_all(&self.db)
        .await
        .context("failed to list grants")?;
        Ok(rows
            .into_iter()
            .map(|(email, permission, created_at)| Grant { tenant: tenant.to_string(), email, permission, created_at })
            .collect())
    }

    /// The permissions of `service` (names within it) that `user_id` holds in
    /// `tenant`; `None` if the user is not a member of the tenant.
    pub async fn service_grants(
        &self,
        tenant: &str,
        user_id: &str,
        service: &str,
    ) -> Result<Option<Vec<String>>, AccessError> {
        let Some(held) = self.held(tenant, user_id).await? else { return Ok(None) };
        Ok(Some(
            held.iter()
                .filter_map(|p| p.strip_prefix(service).and_then(|rest| rest.strip_prefix('.')).map(str::to_string))
                .collect(),
        ))
    }

    /// Whether `user_id` is a member of `tenant` holding `permission` (`service.name`).
    pub async fn holds(&self, tenant: &str, user_id: &str, permission: &str) -> Result<bool, AccessError> {
        Ok(self.held(tenant, user_id).await?.is_some_and(|held| held.iter().any(|p| p == permission)))
    }

    /// Every permission `user_id` holds in `tenant`; `None` if not a member.
    async fn held(&self, tenant: &str, user_id: &str) -> Result<Option<Arc<Vec<String>>>, AccessError> {
        let key = (tenant.to_string(), user_id.to_string());
        // Read under the epoch from before the role: a change between the two
        // reads leaves nothing cached.
        let read_under = self.held.begin();
        if self.role_of(&key).await?.is_none() {
            return Ok(None);
        }
        if let Some(held) = self.held.get(&key) {
            return Ok(Some(held));
        }
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT permission FROM grants WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(user_id)
                .fetch_all(&self.db)
                .await
                .context("failed to read grants")?;
        let held = Arc::new(rows.into_iter().map(|(p,)| p).collect::<Vec<_>>());
        self.held.put(key, read_under, held.clone(), false, None);
        Ok(Some(held))
    }

    /// Something about who may do what changed (and is committed): nothing
    /// cached before is used again.
    pub fn changed(&self) {
        self.epoch.bump();
    }
}

impl Access {
    /// Delete account `user_id` with everything that is only its own: refused
    /// while it is the last owner of a tenant not yet purged, or the last
    /// operator. Its memberships and grants go in the transaction that
    /// destroys its credentials, so no node lets it in after the commit.
    pub async fn delete_account(&self, user_id: &str) -> Result<(), AccessError> {
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        // Under the owned tenants' locks: two owners leaving at once cannot
        // both count on the other.
        let owned: Vec<(String,)> = sqlx::query_as(
            "SELECT tenant_id FROM tenant_members WHERE user_id = $1 AND role = 'owner' ORDER BY tenant_id",
        )
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .context("failed to read memberships")?;
        for (tenant,) in &owned {
            crate::store::lock_row(&mut tx, "tenants", "id", tenant).await.context("failed to lock a tenant")?;
        }
        let alone: Vec<(String,)> = sqlx::query_as(
            "SELECT m.tenant_id FROM tenant_members m JOIN tenants t ON t.id = m.tenant_id \
             WHERE m.user_id = $1 AND m.role = 'owner' AND t.purged_at IS NULL AND NOT EXISTS ( \
                 SELECT 1 FROM tenant_members o WHERE o.tenant_id = m.tenant_id AND o.role = 'owner' AND o.user_id <> $1) \
             ORDER BY m.tenant_id",
        )
        .bind(user_id)
        .fetch_all(&mut *tx)
        .await
        .context("failed to read owners")?;
        if !alone.is_empty() {
            return Err(AccessError::LastOwnerOf(alone.into_iter().map(|(t,)| t).collect()));
        }
        crate::store::lock_row(&mut tx, "users", "id", user_id).await.context("failed to lock the account")?;
        let (operator, others): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM users WHERE id = $1 AND is_operator), \
                    (SELECT COUNT(*) FROM users WHERE id <> $1 AND is_operator)",
        )
        .bind(user_id)
        .fetch_one(&mut *tx)
        .await
        .context("failed to count operators")?;
        if operator > 0 && others == 0 {
            return Err(AccessError::LastOperator);
        }
        for table in ["grants", "tenant_members"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1"))
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .with_context(|| format!("failed to drop the account's {table}"))?;
        }
        crate::identity::forget_user_in(&mut tx, user_id).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.commit().await.context("failed to commit the account's deletion")?;
        self.changed();
        Ok(())
    }

    /// Make member `to` an owner of `tenant` and, when `from` (an owner
    /// handing over) is given, make `from` an admin — one change.
    pub async fn transfer(
        &self,
        tenant: &str,
        from: Option<&str>,
        to: &str,
        to_email: &str,
    ) -> Result<(), AccessError> {
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        crate::store::lock_row(&mut tx, "tenants", "id", tenant).await.context("failed to lock the tenant")?;
        let made = sqlx::query("UPDATE tenant_members SET role = 'owner' WHERE tenant_id = $1 AND user_id = $2")
            .bind(tenant)
            .bind(to)
            .execute(&mut *tx)
            .await
            .context("failed to make the owner")?
            .rows_affected();
        if made == 0 {
            return Err(AccessError::NotAMember(to_email.to_string(), tenant.to_string()));
        }
        if let Some(from) = from.filter(|from| *from != to) {
            sqlx::query("UPDATE tenant_members SET role = 'admin' WHERE tenant_id = $1 AND user_id = $2")
                .bind(tenant)
                .bind(from)
                .execute(&mut *tx)
                .await
                .context("failed to hand over ownership")?;
        }
        tx.commit().await.context("failed to commit the transfer")?;
        self.changed();
        Ok(())
    }
}

/// Destroy a purged tenant's memberships and grants (within the purge's `tx`).
pub async fn forget_tenant_in(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    tenant: &str,
) -> Result<(), AccessError> {
    for table in ["grants", "tenant_members"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1"))
            .bind(tenant)
            .execute(&mut **tx)
            .await
            .with_context(|| format!("failed to drop the tenant's {table}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
