//! Background jobs: `wharf:platform/jobs` to queue them, and the
//! `wharf:platform/worker` export (the [`worker!`](crate::worker) macro) to run
//! them. A job runs at least once, outside any request, on a worker of any
//! node, metered with fuel like a request; a failed attempt (an `Err`, a trap,
//! running out of time or fuel) is retried with exponential backoff, then the
//! job is dead and people can retry it.
//!
//! Declare each kind in `wharf.toml`, with the job versions (payload shapes)
//! this version of the service accepts:
//!
//! ```toml
//! [[jobs]]
//! kind = "welcome-email"
//! versions = [1, 2]
//! ```
//!
//! A job runs on the version of the service its instance runs if that version
//! accepts the job's version, else on the version that queued it: switch on
//! [`Job::version`] and jobs queued before an update still run correctly.
//!
//! ```no_run
//! use wharf_sdk::jobs::{self, Job};
//!
//! fn signed_up(email: &str) -> wharf_sdk::Result<()> {
//!     jobs::Enqueue::new("welcome-email")
//!         .json(&serde_json::json!({ "email": email }))
//!         .version(2)
//!         .key(&format!("welcome:{email}")) // at most one per address
//!         .send()?;
//!     Ok(())
//! }
//!
//! fn run_job(job: Job) -> Result<(), String> {
//!     match (job.kind.as_str(), job.version) {
//!         ("welcome-email", 1) => Ok(()), // payload: the address as text
//!         ("welcome-email", 2) => Ok(()), // payload: JSON
//!         (kind, version) => Err(format!("unknown job {kind} v{version}")),
//!     }
//! }
//!
//! wharf_sdk::worker!(run_job);
//! ```

use std::time::Duration;

use crate::bindings::wharf::platform::jobs as wit;
use crate::Error;

/// One job to run.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub kind: String,
    /// The job version it was queued with.
    pub version: u32,
    pub payload: Vec<u8>,
    /// 1 on the first run.
    pub attempt: u32,
    /// The service version that queued it.
    pub enqueued_by: String,
}

impl Job {
    /// The payload parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.payload).map_err(|e| format!("job {} has an invalid JSON payload: {e}", self.id))
    }

    /// The payload as text.
    pub fn text(&self) -> Result<&str, String> {
        std::str::from_utf8(&self.payload).map_err(|_| format!("job {} has a payload that is not UTF-8", self.id))
    }

    #[doc(hidden)]
    pub fn from_guest(job: crate::bindings::exports::wharf::platform::worker::Job) -> Self {
        Self {
            id: job.id,
            kind: job.kind,
            version: job.version,
            payload: job.payload,
            attempt: job.attempt,
            enqueued_by: job.enqueued_by,
        }
    }
}

/// A job to queue: build it, then [`send`](Enqueue::send).
#[derive(Debug, Clone)]
pub struct Enqueue {
    kind: String,
    payload: Vec<u8>,
    options: wit::Options,
}

impl Enqueue {
    /// A job of `kind` (declared under `[[jobs]]`), version 1, empty payload.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_string(),
            payload: Vec::new(),
            options: wit::Options { version: 1, delay_ms: 0, idempotency_key: None, priority: 0, max_attempts: None },
        }
    }

    /// The payload bytes (at most 64 KiB).
    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The payload, as JSON.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.payload = serde_json::to_vec(value).unwrap_or_default();
        self
    }

    /// The job version (the payload's shape).
    pub fn version(mut self, version: u32) -> Self {
        self.options.version = version;
        self
    }

    /// Run no sooner than `delay` from now.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.options.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Queue it at most once per instance under `key`.
    pub fn key(mut self, key: &str) -> Self {
        self.options.idempotency_key = Some(key.to_string());
        self
    }

    /// Run it before the tenant's lower-priority ready jobs.
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = priority;
        self
    }

    /// Attempts before it is dead (1 to 100).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.options.max_attempts = Some(attempts);
        self
    }

    /// Queue it; returns its id (the first job's id when the key was used before).
    pub fn send(self) -> Result<String, Error> {
        wit::enqueue(&self.kind, &self.payload, &self.options).map_err(|e| Error::internal(format!("jobs: {e}")))
    }
}

/// Queue a job of `kind` with `payload` (version 1, now).
pub fn enqueue(kind: &str, payload: &[u8]) -> Result<String, Error> {
    Enqueue::new(kind).payload(payload).send()
}

/// The seeder of a service that has none.
pub fn no_seed() -> Result<(), String> {
    Ok(())
}
