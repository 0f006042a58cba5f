//! Reading and acting on jobs: one job, pages of them, queue depth per
//! service, and retrying or cancelling.

use super::*;

impl Queue {
    /// One job.
    pub async fn get(&self, id: &str) -> Result<JobInfo, JobError> {
        let row: Option<JobRow> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .context("failed to read the job")?;
        row.map(JobInfo::from).ok_or_else(|| JobError::UnknownJob(id.to_string()))
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<JobInfo>, JobError> {
        if let Some(state) = &filter.state {
            if !STATES.contains(&state.as_str()) {
                return Err(JobError::InvalidState(state.clone()));
            }
        }
        let mut clauses = Vec::new();
        let mut binds: Vec<String> = Vec::new();
        let mut add = |clause: &str, value: &String| {
            binds.push(value.clone());
            clauses.push(clause.replace('?', &format!("${}", binds.len())));
        };
        if let Some(v) = &filter.instance {
            add("instance_id = ?", v);
        }
        if let Some(v) = &filter.kind {
            add("kind = ?", v);
        }
        if let Some(v) = &filter.state {
            add("state = ?", v);
        }
        if let Some(v) = &filter.service {
            add("service = ?", v);
        }
        if let Some(v) = &filter.before {
            add("(created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?)", v);
        }
        if let Some(tenants) = &filter.tenants {
            if tenants.is_empty() {
                return Ok(Vec::new());
            }
            let first = binds.len() + 1;
            binds.extend(tenants.iter().take(500).cloned());
            let marks: Vec<String> = (first..=binds.len()).map(|n| format!("${n}")).collect();
            clauses.push(format!("tenant_id IN ({})", marks.join(", ")));
        }
        let filter_sql = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs {filter_sql} ORDER BY created_at DESC, id DESC LIMIT {}",
            filter.limit.clamp(1, 1000)
        );
        let mut query = sqlx::query_as::<_, JobRow>(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        Ok(query.fetch_all(&self.db).await.context("failed to list jobs")?.into_iter().map(JobInfo::from).collect())
    }

    /// Queue a dead (or failed, or cancelled) job again, with its attempts reset.
    pub async fn retry(&self, id: &str) -> Result<JobInfo, JobError> {
        let job = self.get(id).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'queued', attempts = 0, run_at = $1, finished_at = NULL \
             WHERE id = $2 AND state IN ('dead', 'failed', 'cancelled')",
        )
        .bind(store::now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to retry the job")?
        .rows_affected();
        if changed == 0 {
            return Err(JobError::WrongState {
                id: id.to_string(),
                state: job.state,
                allowed: "dead, failed or cancelled",
                action: "retried",
            });
        }
        if job.state == "cancelled" {
            // It counts as unfinished again (a failed or dead one still did).
            sqlx::query("UPDATE job_tenants SET pending = pending + 1 WHERE tenant_id = $1")
                .bind(&job.tenant)
                .execute(&mut *tx)
                .await
                .context("failed to count the job")?;
        }
        if job.kind == SETUP_KIND {
            setup::retrying(&mut tx, &job.instance, &job.enqueued_by).await?;
        }
        tx.commit().await.context("failed to commit the retry")?;
        self.wake.notify_one();
        self.get(id).await
    }

    /// Cancel a job that is not running: it will not run (again).
    pub async fn cancel(&self, id: &str) -> Result<JobInfo, JobError> {
        let job = self.get(id).await?;
        let mut tx = crate::store::begin(&self.db).await.context("failed to begin transaction")?;
        let changed = sqlx::query(
            "UPDATE jobs SET state = 'cancelled', finished_at = $1 WHERE id = $2 AND state IN ('queued', 'failed', 'dead')",
        )
        .bind(store::now_millis())
        .bind(id)
        .execute(&mut *tx)
        .await
        .context("failed to cancel the job")?
        .rows_affected();
        if changed == 0 {
            return Err(JobError::WrongState {
                id: id.to_string(),
                state: job.state,
                allowed: "queued, failed or dead",
                action: "cancelled",
            });
        }
        // Finished for good (its payload stays, for a retry, until the job is deleted).
        sqlx::query("UPDATE job_tenants SET pending = pending - 1 WHERE tenant_id = $1")
            .bind(&job.tenant)
            .execute(&mut *tx)
            .await
            .context("failed to count the job")?;
        if job.kind == SETUP_KIND {
            setup::cancelled(&mut tx, &job.instance, &job.enqueued_by).await?;
        }
        tx.commit().await.context("failed to commit the cancellation")?;
        self.get(id).await
    }

    /// Queue depth and the oldest ready job's wait, per service (of `tenants`
    /// only, when given).
    pub async fn stats(&self, tenants: Option<&[String]>) -> Result<Vec<ServiceQueue>, JobError> {
        let now = store::now_millis();
        let (filter, binds) = match tenants {
            Some([]) => return Ok(Vec::new()),
            Some(tenants) => {
                let tenants: Vec<String> = tenants.iter().take(500).cloned().collect();
                let marks: Vec<String> = (2..tenants.len() + 2).map(|n| format!("${n}")).collect();
                (format!("AND tenant_id IN ({})", marks.join(", ")), tenants)
            }
            None => (String::new(), Vec::new()),
        };
        let sql = format!(
            "SELECT service, \
             SUM(CASE WHEN state IN ('queued', 'failed') THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END), \
             SUM(CASE WHEN state = 'dead' THEN 1 ELSE 0 END), \
             MIN(CASE WHEN state IN ('queued', 'failed') AND run_at <= $1 THEN run_at ELSE NULL END) \
             FROM jobs WHERE state IN ('queued', 'failed', 'running', 'dead') {filter} GROUP BY service ORDER BY service"
        );
        let mut query = sqlx::query_as::<_, (String, i64, i64, i64, Option<i64>)>(&sql).bind(now);
        for t in &binds {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.db).await.context("failed to count jobs")?;
        Ok(rows
            .into_iter()
            .map(|(service, queued, running, dead, oldest)| ServiceQueue {
                service,
                queued,
                running,
                dead,
                oldest_ready_ms: oldest.map(|t| (now - t).max(0)).unwrap_or(0),
            })
            .collect())
    }
}
