//! The guards every backend shares, and what each backend must do alike,
//! tested without a guest on every backend available here: SQLite files
//! always; an instance's PostgreSQL schema (and its key-value store in Redis)
//! when `WHARF_TEST_DATABASE` (and `WHARF_TEST_REDIS`) name servers.

#![allow(clippy::unwrap_used)]

use super::*;
use std::time::Instant;

/// An instance's databases on one combination of backends.
struct Handle {
    /// What the SQL and the key-value store are on, for assertion messages.
    name: String,
    db: Opened,
    _plane: crate::testdb::TestDb,
    _dir: tempfile::TempDir,
}

fn later() -> Call {
    Call::until(Instant::now() + Duration::from_secs(60))
}

/// One instance per backend combination available here.
async fn handles() -> Vec<Handle> {
    let threads = DbThreads::start(2).unwrap();
    let budget = OpenDatabases::new(16);
    let redis = match std::env::var("WHARF_TEST_REDIS").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let platform = format!("unit-{}", uuid::Uuid::new_v4().simple());
            Some(Arc::new(crate::shared::Redis::connect(&url, &platform).await.unwrap()))
        }
        None => None,
    };
    let mut all = Vec::new();
    for plane in crate::testdb::control_planes().await {
        let dir = tempfile::tempdir().unwrap();
        let instance = format!("inst-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let mut backends = Backends::default();
        if let Some(url) = &plane.url {
            crate::testdb::tenant_and_user(&plane.db, "t", "owner@example.com").await;
            crate::testdb::instance(&plane.db, "t", &instance, "svc").await;
            let pg = PgDatabases::open(plane.db.clone(), url, 8).await.unwrap();
            let mut tx = crate::store::begin(&plane.db).await.unwrap();
            PgDatabases::create(&mut tx, &instance).await.unwrap();
            tx.commit().await.unwrap();
            backends = Backends { postgres: Some(pg), redis: redis.clone(), calls: Default::default() };
        }
        let name = format!(
            "{} SQL, key-value in {}",
            plane.backend,
            if backends.redis.is_some() { "redis" } else { "sqlite" }
        );
        let db = Opened::new(
            &dir.path().join(&instance),
            &instance,
            "t",
            threads.clone(),
            budget.clone(),
            &backends,
            Default::default(),
        );
        db.provision().unwrap();
        all.push(Handle { name, db, _plane: plane, _dir: dir });
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_limits_hold_on_every_backend() {
    for Handle { name, db, .. } in handles().await {
        let call = later();
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let keys = format!("keys are 1 to {MAX_KEY_BYTES} bytes");
        assert_eq!(db.kv_set(long.clone(), b"v".to_vec(), None, &call).await.unwrap_err(), keys, "{name}");
        assert_eq!(db.kv_get(long.clone(), &call).await.unwrap_err(), keys, "{name}");
        assert_eq!(db.kv_delete(String::new(), &call).await.unwrap_err(), keys, "{name}");
        assert_eq!(db.kv_increment(long.clone(), 1, &call).await.unwrap_err(), keys, "{name}");
        let huge = vec![0u8; MAX_VALUE_BYTES + 1];
        let refused = db.kv_set("k".into(), huge, None, &call).await.unwrap_err();
        assert!(refused.contains("larger than"), "{name}: {refused}");
        let refused = db.kv_list(long, 10, &call).await.unwrap_err();
        assert!(refused.contains("prefix is longer"), "{name}: {refused}");
        let batch = vec![("SELECT 1".to_string(), Vec::new()); MAX_BATCH + 1];
        let refused = db.batch(batch, &call).await.unwrap_err();
        assert!(refused.contains("at most 1000 statements"), "{name}: {refused}");
        // Nothing refused was written.
        assert_eq!(db.kv_get("k".into(), &call).await.unwrap(), None, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_key_value_store_behaves_alike_on_every_backend() {
    for Handle { name, db, .. } in handles().await {
        let call = later();
        for key in ["b/2", "a/1", "b/1", "c"] {
            db.kv_set(key.into(), key.as_bytes().to_vec(), None, &call).await.unwrap();
        }
        assert_eq!(db.kv_get("a/1".into(), &call).await.unwrap().as_deref(), Some(&b"a/1"[..]), "{name}");
        assert_eq!(db.kv_list("b/".into(), 10, &call).await.unwrap(), ["b/1", "b/2"], "{name}");
        assert_eq!(db.kv_list(String::new(), 2, &call).await.unwrap(), ["a/1", "b/1"], "{name}");
        // Prefixes are data, never patterns.
        assert!(db.kv_list("%".into(), 10, &call).await.unwrap().is_empty(), "{name}");
        assert_eq!(db.kv_increment("n".into(), 5, &call).await.unwrap(), 5, "{name}");
        assert_eq!(db.kv_increment("n".into(), -7, &call).await.unwrap(), -2, "{name}");
        let refused = db.kv_increment("a/1".into(), 1, &call).await.unwrap_err();
        assert!(refused.contains("not an integer"), "{name}: {refused}");
        assert!(db.kv_delete("c".into(), &call).await.unwrap(), "{name}");
        assert!(!db.kv_delete("c".into(), &call).await.unwrap(), "{name}: deleted twice");
        db.kv_set("brief".into(), b"x".to_vec(), Some(Duration::from_millis(50)), &call).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(db.kv_get("brief".into(), &call).await.unwrap(), None, "{name}: expired");
        assert!(!db.kv_delete("brief".into(), &call).await.unwrap(), "{name}: an expired entry is not live");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sql_behaves_alike_and_escapes_are_refused_on_every_backend() {
    for Handle { name, db, .. } in handles().await {
        let call = later();
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)".into(), vec![], &call)
            .await
            .unwrap();
        let changed = db
            .execute(
                "INSERT INTO notes (id, body) VALUES (?1, ?2)".into(),
                vec![SqlValue::Integer(1), SqlValue::Text("one".into())],
                &call,
            )
            .await
            .unwrap();
        assert_eq!(changed, 1, "{name}");
        // A batch is one transaction: the second statement fails, the first is undone.
        let batch = vec![
            ("INSERT INTO notes (id, body) VALUES (2, 'two')".to_string(), vec![]),
            ("INSERT INTO notes (id, body) VALUES (1, 'again')".to_string(), vec![]),
        ];
        let failed = db.batch(batch, &call).await.unwrap_err();
        assert!(failed.starts_with("statement 2"), "{name}: {failed}");
        let rows = db.query("SELECT id, body FROM notes ORDER BY id".into(), vec![], &call).await.unwrap();
        assert_eq!(rows.rows, vec![vec![SqlValue::Integer(1), SqlValue::Text("one".into())]], "{name}");
        // Each backend refuses what would reach past the call or the instance.
        let refused = match db.dialect() {
            Dialect::Sqlite => vec!["ATTACH DATABASE 'other.sqlite' AS other", "BEGIN", "PRAGMA writable_schema = ON"],
            Dialect::Postgres => vec!["SET ROLE postgres", "BEGIN", "RESET ALL", "CREATE TABLE public.escape (x INT)"],
        };
        for statement in refused {
            assert!(db.execute(statement.into(), vec![], &call).await.is_err(), "{name}: {statement} was allowed");
        }
        let two = db.query("SELECT 1; SELECT 2".into(), vec![], &call).await;
        assert!(two.is_err(), "{name}: two statements in one call were allowed");
    }
}
