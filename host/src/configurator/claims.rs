//! Custom hostnames of an instance: claims, their proof, and binding a proven
//! name (the rules of what may be claimed and how it is proven are in
//! [`super::hostnames`]).

use super::*;

impl Configurator {
    /// Make `desired` the custom hostnames of `instance`: names kept stay as they
    /// are; removed ones are released (verified names stay reserved to the
    /// tenant); added ones are bound at once for operators and for names the
    /// tenant released lately, and claimed (pending proof) otherwise.
    pub(super) async fn apply_hosts(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        instance: &str,
        tenant: &str,
        desired: &[String],
        actor: Actor<'_>,
    ) -> Result<(), ConfigError> {
        let now = store::now();
        let before = self.count_hostnames(&mut **tx, tenant).await?;
        let verified: Vec<(String,)> = sqlx::query_as("SELECT hostname FROM instance_hosts WHERE instance_id = $1")
            .bind(instance)
            .fetch_all(&mut **tx)
            .await
            .context("failed to read hostnames")?;
        let pending: Vec<(String,)> = sqlx::query_as("SELECT hostname FROM hostname_claims WHERE instance_id = $1")
            .bind(instance)
            .fetch_all(&mut **tx)
            .await
            .context("failed to read hostname claims")?;
        for (host,) in verified.iter().filter(|(h,)| !desired.contains(h)) {
            self.release_host(tx, tenant, host, now).await?;
        }
        for (host,) in pending.iter().filter(|(h,)| !desired.contains(h)) {
            sqlx::query("DELETE FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                .bind(host)
                .bind(instance)
                .execute(&mut **tx)
                .await
                .context("failed to drop hostname claim")?;
        }
        for host in desired {
            if !verified.iter().chain(&pending).any(|(h,)| h == host) {
                self.add_host(tx, instance, tenant, host, actor, now).await?;
            }
        }
        if !actor.operator {
            let limit = self.quotas.limit(&Subject::Tenant(tenant), Quota::Hostnames).await?;
            let used = self.count_hostnames(&mut **tx, tenant).await?;
            if used > limit {
                return Err(ConfigError::QuotaExceeded {
                    quota: Quota::Hostnames.name(),
                    holder: format!("tenant {tenant:?}"),
                    limit,
                    used: before,
                });
            }
        }
        Ok(())
    }

    /// Release a verified `host`: it stops routing and stays reserved to
    /// `tenant` for the reservation period.
    pub(super) async fn release_host(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        tenant: &str,
        host: &str,
        now: i64,
    ) -> Result<(), ConfigError> {
        sqlx::query("DELETE FROM instance_hosts WHERE hostname = $1")
            .bind(host)
            .execute(&mut **tx)
            .await
            .context("failed to release hostname")?;
        sqlx::query(
            "INSERT INTO hostname_reservations (hostname, tenant_id, until_at) VALUES ($1, $2, $3) \
             ON CONFLICT (hostname) DO UPDATE SET tenant_id = excluded.tenant_id, until_at = excluded.until_at",
        )
        .bind(host)
        .bind(tenant)
        .bind(now + self.reservation.as_secs() as i64)
        .execute(&mut **tx)
        .await
        .context("failed to reserve hostname")?;
        Ok(())
    }

    /// Add `host` to `instance`: bound at once for operators and for a name
    /// the tenant released lately, claimed (pending proof) otherwise.
    async fn add_host(
        &self,
        tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
        instance: &str,
        tenant: &str,
        host: &str,
        actor: Actor<'_>,
        now: i64,
    ) -> Result<(), ConfigError> {
        let taken: Option<(String,)> = sqlx::query_as("SELECT instance_id FROM instance_hosts WHERE hostname = $1")
            .bind(host)
            .fetch_optional(&mut **tx)
            .await
            .context("failed to read hostname")?;
        if taken.is_some() {
            return Err(ConfigError::HostnameTaken(host.to_string()));
        }
        let reserved: Option<(String, i64)> = sqlx::query_as(
            "SELECT tenant_id, until_at FROM hostname_reservations WHERE hostname = $1 AND until_at > $2",
        )
        .bind(host)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await
        .context("failed to read hostname reservation")?;
        let bind_now = match &reserved {
            _ if actor.operator => true,
            Some((holder, _)) if holder == tenant => true,
            Some((_, until)) => return Err(ConfigError::HostnameReserved(host.to_string(), *until)),
            None => false,
        };
        if bind_now {
            return insert_verified(tx, instance, host).await;
        }
        if let Some(reason) = hostnames::refusal(&self.policy, host) {
            return Err(ConfigError::HostnameRefused(host.to_string(), reason));
        }
        sqlx::query(
            "INSERT INTO hostname_claims (hostname, instance_id, tenant_id, token, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(host)
        .bind(instance)
        .bind(tenant)
        .bind(hostnames::new_token())
        .bind(now)
        .execute(&mut **tx)
        .await
        .context("failed to claim hostname")?;
        Ok(())
    }

    /// Check the proof of `host` (its claim's `token`) by `method`, or by HTTP
    /// then DNS; `Err` says what each method found. A name several tenants
    /// claim is disputed: the HTTP proof shows only that the name reaches the
    /// platform, which is true for every claimant at once, so the first to ask
    /// would win. Only the name's owner can publish its TXT record.
    async fn prove(&self, host: &str, token: &str, method: Option<Method>) -> Result<Result<(), String>, ConfigError> {
        let (claimants,): (i64,) =
            sqlx::query_as("SELECT COUNT(DISTINCT tenant_id) FROM hostname_claims WHERE hostname = $1")
                .bind(host)
                .fetch_one(&self.db)
                .await
                .context("failed to count the name's claims")?;
        let disputed = claimants > 1;
        let mut failures = Vec::new();
        let methods = match method {
            Some(Method::Http) if disputed => {
                failures.push(format!(
                    "http: {host} is claimed by more than one tenant, so an HTTP check proves nothing; publish \
                     {TXT_LABEL}.{host} TXT \"{TXT_PREFIX}{token}\" and verify with --method dns"
                ));
                vec![]
            }
            Some(m) => vec![m],
            None if disputed => {
                failures.push(format!(
                    "http: not tried: {host} is claimed by more than one tenant, and only its TXT record proves it"
                ));
                vec![Method::Dns]
            }
            None => vec![Method::Http, Method::Dns],
        };
        let mut proven = false;
        for method in methods {
            match self.verifier.check(host, token, method).await {
                Ok(()) => {
                    proven = true;
                    break;
                }
                Err(why) => failures.push(why),
            }
        }
        Ok(if proven { Ok(()) } else { Err(failures.join("; ")) })
    }

    /// Prove a claimed hostname of `instance` (by `method`, or HTTP then DNS) and
    /// route it; `NotVerified` says what each method found.
    pub async fn verify_hostname(
        &self,
        instance: &str,
        hostname: &str,
        method: Option<Method>,
    ) -> Result<Instance, ConfigError> {
        let host =
            router::normalize(hostname).map_err(|_| ConfigError::InvalidHostname(hostname.to_string()))?.into_owned();
        let claim: Option<(String, Option<i64>)> =
            sqlx::query_as("SELECT token, checked_at FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                .bind(&host)
                .bind(instance)
                .fetch_optional(&self.db)
                .await
                .context("failed to read hostname claim")?;
        let Some((token, checked_at)) = claim else {
            let current = self.instance(instance).await?;
            if current.hosts.contains(&host) {
                return Ok(current);
            }
            return Err(ConfigError::NoClaim(instance.to_string(), host));
        };
        // One check per claim every few seconds: the checks reach out to
        // whatever the name points at.
        if checked_at.is_some_and(|at| store::now() - at < 3) {
            return Err(ConfigError::NotVerified(host, "checked less than 3 seconds ago; retry shortly".into()));
        }
        sqlx::query("UPDATE hostname_claims SET checked_at = $1 WHERE hostname = $2 AND instance_id = $3")
            .bind(store::now())
            .bind(&host)
            .bind(instance)
            .execute(&self.db)
            .await
            .context("failed to record the check")?;
        let proof = self.prove(&host, &token, method).await?;
        if let Err(why) = proof {
            sqlx::query("UPDATE hostname_claims SET last_error = $1 WHERE hostname = $2 AND instance_id = $3")
                .bind(&why)
                .bind(&host)
                .bind(instance)
                .execute(&self.db)
                .await
                .context("failed to record the check")?;
            return Err(ConfigError::NotVerified(host, why));
        }
        let _guard = self.change_lock.lock().await;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        // The claim may have been withdrawn, or another tenant proven first.
        let still: Option<(String,)> =
            sqlx::query_as("SELECT token FROM hostname_claims WHERE hostname = $1 AND instance_id = $2")
                .bind(&host)
                .bind(instance)
                .fetch_optional(&mut *tx)
                .await
                .context("failed to read hostname claim")?;
        if still.is_none() {
            return Err(ConfigError::NoClaim(instance.to_string(), host));
        }
        insert_verified(&mut tx, instance, &host).await?;
        store::commit_change_for(tx, &self.seen, store::Change::Instance(instance), || self.refresh_instance(instance))
            .await?;
        tracing::info!(%instance, hostname = %host, "hostname verified");
        self.instance(instance).await
    }
}

/// Bind a proven (or operator-bound) hostname to `instance`: other tenants'
/// claims on it end, and so does any reservation.
pub(super) async fn insert_verified(
    tx: &mut sqlx::Transaction<'_, crate::store::Backend>,
    instance: &str,
    host: &str,
) -> Result<(), ConfigError> {
    let inserted = sqlx::query("INSERT INTO instance_hosts (hostname, instance_id) VALUES ($1, $2)")
        .bind(host)
        .bind(instance)
        .execute(&mut **tx)
        .await;
    match inserted {
        Ok(_) => {}
        Err(e) if store::is_unique_violation(&e) => return Err(ConfigError::HostnameTaken(host.to_string())),
        Err(e) => return Err(anyhow::Error::from(e).context("failed to bind hostname").into()),
    }
    for sql in
        ["DELETE FROM hostname_claims WHERE hostname = $1", "DELETE FROM hostname_reservations WHERE hostname = $1"]
    {
        sqlx::query(sql).bind(host).execute(&mut **tx).await.context("failed to settle hostname")?;
    }
    Ok(())
}

pub(super) fn normalize_hosts(raw: &[String]) -> Result<Vec<String>, ConfigError> {
    if raw.len() > MAX_HOSTS {
        return Err(ConfigError::TooManyHostnames);
    }
    let mut hosts = Vec::with_capacity(raw.len());
    for host in raw {
        // Configured hostnames carry no port: a port in the Host header is ignored.
        let bare = host.trim();
        let normalized = router::normalize(bare).map_err(|_| ConfigError::InvalidHostname(host.clone()))?.into_owned();
        if bare.contains(':') || normalized.starts_with('[') {
            return Err(ConfigError::InvalidHostname(host.clone()));
        }
        if !hosts.contains(&normalized) {
            hosts.push(normalized);
        }
    }
    Ok(hosts)
}
