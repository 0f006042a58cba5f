#![allow(clippy::unwrap_used)]

use super::*;
use rusqlite::Connection;
use std::time::Instant;

fn later() -> &'static Call {
    static LATER: std::sync::OnceLock<Call> = std::sync::OnceLock::new();
    LATER.get_or_init(|| Call::until(Instant::now() + Duration::from_secs(3600)))
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.into())
}

fn db_with(threads: Arc<DbThreads>) -> (tempfile::TempDir, Opened) {
    let dir = tempfile::tempdir().unwrap();
    let db = Opened::new(
        dir.path(),
        "i",
        "t",
        threads,
        OpenDatabases::new(MAX_OPEN_DATABASES),
        &Backends::default(),
        Default::default(),
    );
    db.provision().unwrap();
    (dir, db)
}

/// An instance's databases on this node's disk, in `dir`.
fn local(dir: &std::path::Path, tenant: &str, threads: &Arc<DbThreads>, budget: &Arc<OpenDatabases>) -> Opened {
    Opened::new(dir, "i", tenant, threads.clone(), budget.clone(), &Backends::default(), Default::default())
}

fn db() -> (tempfile::TempDir, Opened) {
    db_with(DbThreads::start(4).unwrap())
}

async fn exec(db: &Opened, sql: &str) -> Result<u64, String> {
    db.execute(sql.into(), vec![], later()).await
}

async fn query(db: &Opened, sql: &str) -> Result<SqlRows, String> {
    db.query(sql.into(), vec![], later()).await
}

#[tokio::test]
async fn ordinary_sql_works() {
    let (_d, db) = db();
    exec(&db, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)").await.unwrap();
    assert_eq!(db.execute("INSERT INTO t (name) VALUES (?1)".into(), vec![text("a")], later()).await.unwrap(), 1);
    let rows = query(&db, "SELECT id, name FROM t").await.unwrap();
    assert_eq!(rows.columns, ["id", "name"]);
    assert_eq!(rows.rows, vec![vec![SqlValue::Integer(1), text("a")]]);
    let failed = db
        .batch(
            vec![("INSERT INTO t (name) VALUES ('b')".into(), vec![]), ("INSERT INTO nope VALUES (1)".into(), vec![])],
            later(),
        )
        .await;
    assert!(failed.unwrap_err().starts_with("statement 2:"));
    assert_eq!(
        query(&db, "SELECT count(*) FROM t").await.unwrap().rows[0][0],
        SqlValue::Integer(1),
        "a failed batch applies nothing"
    );
    let done = db
        .batch(
            vec![
                ("INSERT INTO t (name) VALUES ('b')".into(), vec![]),
                ("DELETE FROM t WHERE name = 'a'".into(), vec![]),
            ],
            later(),
        )
        .await
        .unwrap();
    assert_eq!(done, vec![1, 1]);
}

#[tokio::test]
async fn open_databases_stay_within_budget_and_reopen_with_their_data() {
    let dir = tempfile::tempdir().unwrap();
    let budget = OpenDatabases::new(2);
    let threads = DbThreads::start(2).unwrap();
    let dbs: Vec<Opened> = (0..5).map(|i| local(&dir.path().join(i.to_string()), "t", &threads, &budget)).collect();
    for (i, db) in dbs.iter().enumerate() {
        db.kv_set("n".into(), i.to_string().into_bytes(), None, later()).await.unwrap();
        exec(db, "CREATE TABLE IF NOT EXISTS x (a)").await.unwrap();
        assert!(budget.open_count() <= 2, "{} open", budget.open_count());
    }
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(
            db.kv_get("n".into(), later()).await.unwrap(),
            Some(i.to_string().into_bytes()),
            "data survives closing"
        );
    }
    assert!(budget.open_count() <= 2);
}

#[tokio::test]
async fn escapes_are_refused() {
    let (dir, db) = db();
    let outside = dir.path().join("outside.sqlite");
    let attempts = [
        format!("ATTACH DATABASE '{}' AS other", outside.display()),
        format!("VACUUM INTO '{}'", outside.display()),
        "SELECT load_extension('/tmp/evil')".to_string(),
        "PRAGMA journal_mode = DELETE".to_string(),
        "PRAGMA temp_store_directory = '/tmp'".to_string(),
        "PRAGMA database_list".to_string(),
        "PRAGMA foreign_keys = OFF".to_string(),
        "PRAGMA writable_schema = ON".to_string(),
        "CREATE TABLE _wharf_x (a)".to_string(),
        "CREATE VIEW _wharf_v AS SELECT 1".to_string(),
        "CREATE TEMP TABLE x (a)".to_string(),
        "CREATE VIRTUAL TABLE v USING fts5(a)".to_string(),
        "BEGIN".to_string(),
        "SAVEPOINT s".to_string(),
    ];
    for sql in &attempts {
        assert!(exec(&db, sql).await.is_err() && query(&db, sql).await.is_err(), "{sql} must be refused");
    }
    assert!(!outside.exists(), "nothing may be written outside the database");
    // The key-value store is in another file: the guest's SQL cannot name it.
    db.kv_set("secret".into(), b"v".to_vec(), None, later()).await.unwrap();
    let tables = query(&db, "SELECT name FROM sqlite_schema").await.unwrap();
    assert!(tables.rows.is_empty(), "{:?}", tables.rows);
    assert!(query(&db, "SELECT * FROM kv").await.is_err());
    assert_eq!(query(&db, "PRAGMA foreign_keys").await.unwrap().rows[0][0], SqlValue::Integer(1));
}

#[tokio::test]
async fn a_request_leaves_no_transaction_behind() {
    let (_d, db) = db();
    exec(&db, "CREATE TABLE t (a)").await.unwrap();
    assert!(exec(&db, "BEGIN").await.unwrap_err().contains("not allowed"));
    exec(&db, "INSERT INTO t VALUES (1)").await.unwrap();
    // A second handle on the file sees the row: it was committed, not held open.
    let other = Connection::open(_d.path().join("data.sqlite")).unwrap();
    let n: i64 = other.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn wide_and_huge_results_are_refused_before_they_are_held() {
    let (_d, db) = db();
    let wide: Vec<String> = (0..1500).map(|_| "randomblob(1000000)".to_string()).collect();
    let err = query(&db, &format!("SELECT {}", wide.join(", "))).await.unwrap_err();
    assert!(err.contains("too many columns"), "{err}");
    let blobs: Vec<String> = (0..MAX_COLUMNS).map(|_| "randomblob(1000000)".to_string()).collect();
    let err = query(&db, &format!("SELECT {}", blobs.join(", "))).await.unwrap_err();
    assert!(err.contains("larger than 4 MiB"), "{err}");
    let err = query(&db, "SELECT randomblob(2000000)").await.unwrap_err();
    assert!(err.contains("too big"), "{err}");
}

#[tokio::test]
async fn an_endless_statement_stops_at_its_deadline() {
    let (_d, db) = db();
    let started = Instant::now();
    let err = query(&db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
        .await
        .unwrap_err();
    assert!(err.contains("ran longer"), "{err}");
    assert!(started.elapsed() < STATEMENT_TIMEOUT + Duration::from_secs(1), "{:?}", started.elapsed());
    // Bounded by the request's own deadline too.
    let started = Instant::now();
    let err = db
        .query(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c".into(),
            vec![],
            &Call::until(Instant::now() + Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(900), "{err}: {:?}", started.elapsed());
    assert_eq!(
        query(&db, "SELECT 1").await.unwrap().rows[0][0],
        SqlValue::Integer(1),
        "the connection is usable again"
    );
}

#[tokio::test]
async fn a_caller_that_goes_away_interrupts_its_statement() {
    let (_d, db) = db();
    let db = Arc::new(db);
    let slow = {
        let db = db.clone();
        tokio::spawn(async move {
            query(&db, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c").await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    slow.abort();
    let started = Instant::now();
    query(&db, "SELECT 1").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(500), "the next call waited {:?}", started.elapsed());
}

#[tokio::test]
async fn waiting_for_a_busy_connection_is_bounded() {
    let (_d, db) = db();
    let db = Arc::new(db);
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let holder = {
        let db = db.clone();
        tokio::spawn(async move { query(&db, endless).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = query(&db, "SELECT 1").await.unwrap_err();
    assert!(err.contains("busy"), "{err}");
    assert!(started.elapsed() < MAX_WAIT + Duration::from_millis(300), "{:?}", started.elapsed());
    assert!(holder.await.unwrap().is_err());
}

#[tokio::test]
async fn a_tenant_uses_at_most_half_the_threads() {
    let threads = DbThreads::start(4).unwrap();
    let endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c";
    let dir = tempfile::tempdir().unwrap();
    let budget = OpenDatabases::new(16);
    let greedy: Vec<Arc<Opened>> =
        (0..4).map(|i| Arc::new(local(&dir.path().join(format!("g{i}")), "greedy", &threads, &budget))).collect();
    let attacks: Vec<_> = greedy
        .iter()
        .map(|db| {
            let db = db.clone();
            tokio::spawn(async move { query(&db, endless).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let neighbour = local(&dir.path().join("n"), "neighbour", &threads, &budget);
    let started = Instant::now();
    exec(&neighbour, "CREATE TABLE t (a)").await.unwrap();
    assert!(started.elapsed() < Duration::from_millis(300), "the neighbour waited {:?}", started.elapsed());
    let outcomes: Vec<String> =
        futures::future::join_all(attacks).await.into_iter().map(|r| r.unwrap().unwrap_err()).collect();
    assert_eq!(outcomes.iter().filter(|e| e.contains("busy")).count(), 2, "{outcomes:?}");
}

#[tokio::test]
async fn increments_are_atomic_and_keep_the_ttl() {
    let (_d, db) = db();
    let db = Arc::new(db);
    let all: Vec<_> = (0..50)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { db.kv_increment("n".into(), 1, later()).await })
        })
        .collect();
    for r in futures::future::join_all(all).await {
        r.unwrap().unwrap();
    }
    assert_eq!(db.kv_get("n".into(), later()).await.unwrap(), Some(b"50".to_vec()));
    db.kv_set("t".into(), b"1".to_vec(), Some(Duration::from_millis(300)), later()).await.unwrap();
    assert_eq!(db.kv_increment("t".into(), 2, later()).await.unwrap(), 3);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(db.kv_get("t".into(), later()).await.unwrap(), None, "the increment kept the expiry");
    assert_eq!(db.kv_increment("t".into(), 2, later()).await.unwrap(), 2, "an expired counter starts again");
    db.kv_set("s".into(), b"abc".to_vec(), None, later()).await.unwrap();
    assert!(db.kv_increment("s".into(), 1, later()).await.unwrap_err().contains("not an integer"));
}

#[tokio::test]
async fn a_refused_huge_write_leaves_no_large_log_behind() {
    let (dir, db) = db();
    exec(&db, "CREATE TABLE t (b)").await.unwrap();
    let err = exec(
        &db,
        "INSERT INTO t WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 400) \
         SELECT randomblob(1000000) FROM c",
    )
    .await
    .unwrap_err();
    assert!(err.contains("full") || err.contains("ran longer"), "{err}");
    let wal = std::fs::metadata(dir.path().join("data.sqlite-wal")).map(|m| m.len()).unwrap_or(0);
    assert!(wal <= WAL_LIMIT, "the WAL holds {wal} bytes");
    assert_eq!(query(&db, "SELECT count(*) FROM t").await.unwrap().rows[0][0], SqlValue::Integer(0));
}

#[tokio::test]
async fn an_old_key_value_table_moves_to_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let old = Connection::open(dir.path().join("data.sqlite")).unwrap();
        old.execute_batch(
            "CREATE TABLE _wharf_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at INTEGER); \
             INSERT INTO _wharf_kv VALUES ('session', x'6869', NULL);",
        )
        .unwrap();
    }
    let db = Opened::new(
        dir.path(),
        "i",
        "t",
        DbThreads::start(2).unwrap(),
        OpenDatabases::new(4),
        &Backends::default(),
        Default::default(),
    );
    assert_eq!(query(&db, "SELECT count(*) FROM sqlite_schema").await.unwrap().rows[0][0], SqlValue::Integer(0));
    assert_eq!(db.kv_get("session".into(), later()).await.unwrap(), Some(b"hi".to_vec()));
}
