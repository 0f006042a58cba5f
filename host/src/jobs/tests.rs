//! The job queue against both backends, without a node: queued, claimed once,
//! retried with backoff, dead after its attempts, idempotent, within quotas.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::config::QuotaDefaults;
use crate::testdb::{control_planes, instance, tenant_and_user};

fn job(tenant: &str, instance: &str, key: Option<&str>) -> NewJob {
    NewJob {
        tenant: tenant.into(),
        instance: instance.into(),
        service: "lab".into(),
        kind: "record".into(),
        payload: b"{}".to_vec(),
        job_version: 1,
        enqueued_by: "1.0.0".into(),
        delay: Duration::ZERO,
        idempotency_key: key.map(str::to_string),
        priority: 0,
        max_attempts: Some(2),
        trace_parent: None,
    }
}

fn config() -> JobsConfig {
    JobsConfig { backoff: Duration::from_millis(10), ..Default::default() }
}

#[tokio::test]
async fn a_job_is_claimed_once_retried_then_dead_and_a_key_queues_it_once() {
    for plane in control_planes().await {
        let on = plane.backend;
        tenant_and_user(&plane.db, "acme", "ops@acme.test").await;
        instance(&plane.db, "acme", "inst-1", "lab").await;
        let queue = Queue::new(plane.db.clone(), config(), QuotaDefaults::default());
        let first = queue.enqueue_for_tenant(job("acme", "inst-1", Some("once"))).await.unwrap();
        let again = queue.enqueue_for_tenant(job("acme", "inst-1", Some("once"))).await.unwrap();
        assert!(first.created && !again.created, "{on}");
        assert_eq!(first.id, again.id, "an idempotency key queues one job: {on}");

        // Claimed by one worker only, however many ask.
        let (a, b) = tokio::join!(queue.claim(8), queue.claim(8));
        let claimed: Vec<Claimed> = a.unwrap().into_iter().chain(b.unwrap()).collect();
        assert_eq!(claimed.len(), 1, "{on}");
        // A failure is retried after its backoff; the second is its last.
        let failure =
            |c: &Claimed| (c.clone(), Finish::Failed { error: "boom".into(), ran_version: Some("1.0.0".into()) });
        queue.finish(&[failure(&claimed[0])]).await.unwrap();
        assert_eq!(queue.get(&first.id).await.unwrap().state, "failed", "{on}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let retried = queue.claim(8).await.unwrap();
        assert_eq!(retried.len(), 1, "{on}");
        queue.finish(&[failure(&retried[0])]).await.unwrap();
        let dead = queue.get(&first.id).await.unwrap();
        assert_eq!((dead.state.as_str(), dead.attempts, dead.last_error.as_deref()), ("dead", 2, Some("boom")), "{on}");
        assert!(queue.claim(8).await.unwrap().is_empty(), "a dead job is not claimed: {on}");
        // Retried by hand, it runs again.
        assert_eq!(queue.retry(&first.id).await.unwrap().state, "queued", "{on}");
        assert_eq!(queue.claim(8).await.unwrap().len(), 1, "{on}");
    }
}

#[tokio::test]
async fn a_tenant_queues_no_more_than_its_pending_jobs_quota_and_not_the_platforms_kinds() {
    for plane in control_planes().await {
        let on = plane.backend;
        tenant_and_user(&plane.db, "acme", "ops@acme.test").await;
        instance(&plane.db, "acme", "inst-1", "lab").await;
        let quotas = QuotaDefaults { pending_jobs_per_tenant: 3, ..Default::default() };
        let queue = Queue::new(plane.db.clone(), config(), quotas);
        for _ in 0..3 {
            queue.enqueue_for_tenant(job("acme", "inst-1", None)).await.unwrap();
        }
        let refused = queue.enqueue_for_tenant(job("acme", "inst-1", None)).await;
        assert!(matches!(refused, Err(JobError::QuotaExceeded { .. })), "{on}: {refused:?}");
        let mut setup = job("acme", "inst-1", None);
        setup.kind = SETUP_KIND.into();
        assert!(queue.enqueue_for_tenant(setup).await.is_err(), "a tenant cannot queue the platform's kinds: {on}");
    }
}
