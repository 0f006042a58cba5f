//! The control plane's two migration folders describe one schema: every table
//! and column one dialect's migrations make, the other's make too.

use std::collections::BTreeSet;

use crate::harness::fresh_database;

/// (table, column) pairs of a migrated control plane.
async fn columns(db: &wharf::store::Db, sql: &str) -> BTreeSet<(String, String)> {
    let rows: Vec<(String, String)> = sqlx::query_as(sql).fetch_all(db).await.unwrap();
    rows.into_iter().filter(|(table, _)| !table.starts_with("_sqlx")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_dialects_migrate_to_the_same_tables_and_columns() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = wharf::store::open(dir.path(), None).await.unwrap();
    let on_sqlite = columns(
        &sqlite,
        "SELECT m.name, p.name FROM sqlite_master m JOIN pragma_table_info(m.name) p \
         WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
    )
    .await;
    assert!(on_sqlite.contains(&("instances".into(), "setup_state".into())), "{on_sqlite:?}");
    // PostgreSQL is there in the cluster pass (and in CI).
    let Some(url) = fresh_database().await else { return };
    let postgres = wharf::store::open(dir.path(), Some(&url)).await.unwrap();
    let on_postgres = columns(
        &postgres,
        "SELECT CAST(table_name AS TEXT), CAST(column_name AS TEXT) FROM information_schema.columns \
         WHERE table_schema = current_schema()",
    )
    .await;
    let only_sqlite: Vec<_> = on_sqlite.difference(&on_postgres).collect();
    let only_postgres: Vec<_> = on_postgres.difference(&on_sqlite).collect();
    assert!(
        only_sqlite.is_empty() && only_postgres.is_empty(),
        "the migrations differ: only in host/migrations/sqlite: {only_sqlite:?}; only in host/migrations/postgres: {only_postgres:?}"
    );
}
