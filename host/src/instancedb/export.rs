//! An instance's data as an export holds it — its SQL as statements in its
//! own dialect (a dump a person can read and load), its key-value entries —
//! and loading both into a new instance's empty databases.
//!
//! It is read in one read-only transaction — a snapshot, while the guest
//! writes on: on SQLite from the file, on PostgreSQL as the instance's own
//! role (REPEATABLE READ). Loading always runs behind the guest's guard, as the
//! instance: an export is the tenant's file, and nothing in it can reach past
//! the instance's own database.

use std::fmt::Write as _;

use super::types::{Call, Dialect, KvEntry, MAX_BATCH};
use super::{Opened, Snapshot};

/// Rows read per page on PostgreSQL.
const PAGE_ROWS: usize = 1000;

impl Opened {
    /// The SQL dump: statements that rebuild the database, schema and rows,
    /// in its dialect, read in one snapshot.
    pub async fn dump_sql(&self) -> Result<Vec<String>, String> {
        match self.dialect() {
            Dialect::Sqlite => {
                let path = self.local.dir().join("data.sqlite");
                tokio::task::spawn_blocking(move || sqlite_dump(&path))
                    .await
                    .map_err(|e| format!("the export task failed: {e}"))?
            }
            Dialect::Postgres => self.postgres_dump().await,
        }
    }

    /// Run a dump's statements on this (new, empty) database, behind the
    /// guest's guard, in transactions of at most [`MAX_BATCH`] statements.
    pub async fn load_sql(&self, statements: &[String], call: &Call) -> Result<(), String> {
        for (at, chunk) in statements.chunks(MAX_BATCH).enumerate() {
            let batch = chunk.iter().map(|s| (s.clone(), Vec::new())).collect();
            self.batch(batch, call).await.map_err(|e| {
                format!("statement {} to {} of the dump failed: {e}", at * MAX_BATCH + 1, at * MAX_BATCH + chunk.len())
            })?;
        }
        Ok(())
    }

    /// Every live key-value entry, in key order.
    pub async fn kv_entries(&self, call: &Call) -> Result<Vec<KvEntry>, String> {
        let mut all: Vec<KvEntry> = Vec::new();
        loop {
            let after = all.last().map(|e| e.key.clone()).unwrap_or_default();
            let page = self.kv.entries(after, 1000, call).await?;
            let done = page.len() < 1000;
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Set `entries` (an export's; those expired since are left out).
    pub async fn kv_load(&self, entries: Vec<KvEntry>, call: &Call) -> Result<usize, String> {
        let now = crate::store::now_millis();
        let mut loaded = 0;
        for entry in entries {
            let ttl = match entry.expires_at_ms {
                Some(at) if at <= now => continue,
                Some(at) => Some(std::time::Duration::from_millis((at - now) as u64)),
                None => None,
            };
            self.kv_set(entry.key, entry.value, ttl, call).await?;
            loaded += 1;
        }
        Ok(loaded)
    }

    /// The dump of the instance's PostgreSQL schema, read as its role in one
    /// read-only snapshot.
    async fn postgres_dump(&self) -> Result<Vec<String>, String> {
        let Some((pg, instance)) = &self.postgres else {
            return Err("this instance's SQL is not on PostgreSQL".into());
        };
        let snap = pg.snapshot(instance).await?;
        let first =
            |rows: Vec<Vec<Option<String>>>| rows.into_iter().next().and_then(|r| r.into_iter().next()).flatten();
        let column = |rows: Vec<Vec<Option<String>>>| -> Vec<String> {
            rows.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect()
        };
        // The catalog names some objects with their schema (index definitions
        // always do): a dump names none, to load into another instance's.
        let schema = first(snap.rows("SELECT current_schema()::text", &[]).await?).unwrap_or_default();
        let unqualified = |ddl: String| {
            if schema.is_empty() {
                return ddl;
            }
            ddl.replace(&format!("{}.", ident(&schema)), "").replace(&format!("{schema}."), "")
        };
        let mut out = Vec::new();
        let mut after = Vec::new();
        postgres_sequences(&snap, &mut out, &mut after).await?;
        let tables = snap
            .rows(
                "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace \
                 AND c.relkind = 'r' ORDER BY 1",
                &[],
            )
            .await?;
        for table in column(tables) {
            let (create, columns, identities) = postgres_table(&snap, &table).await?;
            out.push(unqualified(create));
            postgres_rows(&snap, &table, &columns, &mut out).await?;
            for column in identities {
                let sequence = format!("pg_get_serial_sequence({}, {})", literal(&ident(&table)), literal(&column));
                let query = format!("SELECT pg_sequence_last_value({sequence}::regclass)::text");
                if let Some(value) = first(snap.rows(&query, &[]).await?) {
                    after.push(format!("SELECT setval({sequence}, {value}, true)"));
                }
            }
            // Foreign keys and indexes after every table's rows: any order loads.
            let later = snap
                .rows(
                    "SELECT 'ALTER TABLE ' || quote_ident($1) || ' ADD CONSTRAINT ' || quote_ident(conname) || ' ' \
                     || pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = quote_ident($1)::regclass \
                     AND contype = 'f' \
                     UNION ALL SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i \
                     WHERE i.indrelid = quote_ident($1)::regclass \
                     AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)",
                    &[&table],
                )
                .await?;
            after.extend(column(later).into_iter().map(&unqualified));
        }
        for view in postgres_views(&snap).await? {
            after.push(unqualified(view));
        }
        out.extend(after);
        Ok(out)
    }
}

/// Sequences other than identity columns' (those come with their column):
/// created first, set to where they were after the rows.
async fn postgres_sequences(snap: &Snapshot, out: &mut Vec<String>, after: &mut Vec<String>) -> Result<(), String> {
    let sequences = snap
        .rows(
            "SELECT c.relname::text FROM pg_class c WHERE c.relnamespace = current_schema()::regnamespace \
             AND c.relkind = 'S' AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'i') \
             ORDER BY 1",
            &[],
        )
        .await?;
    for name in sequences.into_iter().filter_map(|r| r.into_iter().next().flatten()) {
        out.push(format!("CREATE SEQUENCE {}", ident(&name)));
        let state = snap.rows(&format!("SELECT last_value::text, is_called::text FROM {}", ident(&name)), &[]).await?;
        if let Some([Some(value), Some(called)]) = state.first().map(Vec::as_slice) {
            after.push(format!("SELECT setval({}, {value}, {called})", literal(&name)));
        }
    }
    Ok(())
}

/// `CREATE VIEW` of every view, in the order they were made.
async fn postgres_views(snap: &Snapshot) -> Result<Vec<String>, String> {
    let views = snap
        .rows(
            "SELECT c.relname::text, pg_get_viewdef(c.oid) FROM pg_class c \
             WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'v' ORDER BY c.oid",
            &[],
        )
        .await?;
    Ok(views
        .into_iter()
        .filter_map(|row| match row.as_slice() {
            [Some(name), Some(definition)] => {
                Some(format!("CREATE VIEW {} AS {}", ident(name), definition.trim_end_matches(';')))
            }
            _ => None,
        })
        .collect())
}

/// A table's `CREATE TABLE` (columns, defaults, keys, checks), its columns,
/// and its identity columns.
async fn postgres_table(snap: &Snapshot, table: &str) -> Result<(String, Vec<String>, Vec<String>), String> {
    let columns = snap
        .rows(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), a.attnotnull::text, \
             pg_get_expr(d.adbin, d.adrelid), a.attidentity::text FROM pg_attribute a \
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
             WHERE a.attrelid = quote_ident($1)::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[table],
        )
        .await?;
    let mut parts = Vec::new();
    let (mut names, mut identities) = (Vec::new(), Vec::new());
    for c in columns {
        let [Some(name), Some(kind), not_null, default, identity] = c.as_slice() else { continue };
        let mut part = format!("{} {kind}", ident(name));
        match identity.as_deref() {
            Some("a") => part.push_str(" GENERATED ALWAYS AS IDENTITY"),
            Some("d") => part.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
            _ => {
                if let Some(default) = default {
                    let _ = write!(part, " DEFAULT {default}");
                }
            }
        }
        if matches!(identity.as_deref(), Some("a" | "d")) {
            identities.push(name.clone());
        }
        if not_null.as_deref() == Some("true") {
            part.push_str(" NOT NULL");
        }
        parts.push(part);
        names.push(name.clone());
    }
    let constraints = snap
        .rows(
            "SELECT 'CONSTRAINT ' || quote_ident(conname) || ' ' || pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = quote_ident($1)::regclass AND contype IN ('p', 'u', 'c', 'x') ORDER BY conname",
            &[table],
        )
        .await?;
    parts.extend(constraints.into_iter().filter_map(|r| r.into_iter().next().flatten()));
    Ok((format!("CREATE TABLE {} ({})", ident(table), parts.join(", ")), names, identities))
}

/// A table's rows as `INSERT`s, each value in its text form (which every
/// PostgreSQL type reads back), a page at a time within the snapshot.
async fn postgres_rows(snap: &Snapshot, table: &str, columns: &[String], out: &mut Vec<String>) -> Result<(), String> {
    if columns.is_empty() {
        return Ok(());
    }
    let select: Vec<String> = columns.iter().map(|c| format!("{}::text", ident(c))).collect();
    let names: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    let mut offset = 0usize;
    loop {
        let statement = format!(
            "SELECT {} FROM {} ORDER BY ctid LIMIT {PAGE_ROWS} OFFSET {offset}",
            select.join(", "),
            ident(table)
        );
        let rows = snap.rows(&statement, &[]).await?;
        for row in &rows {
            let values: Vec<String> = row.iter().map(|v| v.as_deref().map_or_else(|| "NULL".into(), literal)).collect();
            out.push(format!("INSERT INTO {} ({}) VALUES ({})", ident(table), names.join(", "), values.join(", ")));
        }
        if rows.len() < PAGE_ROWS {
            return Ok(());
        }
        offset += rows.len();
    }
}

/// A quoted identifier (both dialects).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted string literal (both dialects; PostgreSQL with standard strings).
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The dump of a SQLite file, read in one transaction (a snapshot).
fn sqlite_dump(path: &std::path::Path) -> Result<Vec<String>, String> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let failed = |e: rusqlite::Error| format!("cannot read the database: {e}");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = rusqlite::Connection::open_with_flags(path, flags).map_err(failed)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(failed)?;
    let tx = conn.transaction().map_err(failed)?;
    let mut objects: Vec<(String, String, String)> = {
        let mut stmt = tx
            .prepare(
                "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_wharf%' ESCAPE '\\' ORDER BY rowid",
            )
            .map_err(failed)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(failed)?;
        rows.collect::<rusqlite::Result<_>>().map_err(failed)?
    };
    // Tables (parents before the tables that refer to them), then their rows,
    // then indexes, triggers and views.
    let tables = order_by_references(&tx, objects.iter().filter(|o| o.0 == "table").map(|o| o.1.clone()).collect())?;
    let mut out = Vec::new();
    for table in &tables {
        if let Some((_, _, sql)) = objects.iter().find(|o| o.0 == "table" && &o.1 == table) {
            out.push(sql.clone());
        }
    }
    for table in &tables {
        let mut stmt = tx.prepare(&format!("SELECT * FROM {}", ident(table))).map_err(failed)?;
        let width = stmt.column_count();
        let mut rows = stmt.query([]).map_err(failed)?;
        while let Some(row) = rows.next().map_err(failed)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(sqlite_literal(row.get_ref(i).map_err(failed)?));
            }
            out.push(format!("INSERT INTO {} VALUES ({})", ident(table), values.join(", ")));
        }
    }
    let has_sequence: bool = tx
        .query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'sqlite_sequence'", [], |r| r.get(0))
        .map_err(failed)?;
    if has_sequence {
        let mut stmt = tx.prepare("SELECT name, seq FROM sqlite_sequence").map_err(failed)?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(failed)?;
        for row in rows {
            let (name, seq) = row.map_err(failed)?;
            out.push(format!("DELETE FROM sqlite_sequence WHERE name = {}", literal(&name)));
            out.push(format!("INSERT INTO sqlite_sequence (name, seq) VALUES ({}, {seq})", literal(&name)));
        }
    }
    objects.retain(|o| o.0 != "table");
    out.extend(objects.into_iter().map(|(_, _, sql)| sql));
    Ok(out)
}

/// `tables` ordered so that a table comes after those its foreign keys name.
fn order_by_references(tx: &rusqlite::Transaction<'_>, tables: Vec<String>) -> Result<Vec<String>, String> {
    let mut parents = std::collections::BTreeMap::new();
    for table in &tables {
        let mut stmt = tx
            .prepare("SELECT DISTINCT \"table\" FROM pragma_foreign_key_list(?1)")
            .map_err(|e| format!("cannot read foreign keys: {e}"))?;
        let names: Vec<String> = stmt
            .query_map([table], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| format!("cannot read foreign keys: {e}"))?;
        parents.insert(table.clone(), names);
    }
    let mut ordered: Vec<String> = Vec::new();
    let mut left = tables;
    while !left.is_empty() {
        let before = left.len();
        let (ready, rest): (Vec<String>, Vec<String>) = left
            .into_iter()
            .partition(|t| parents[t].iter().all(|p| p == t || ordered.contains(p) || !parents.contains_key(p)));
        ordered.extend(ready);
        left = rest;
        if left.len() == before {
            // A circle of references: keep the rest in creation order.
            ordered.append(&mut left);
        }
    }
    Ok(ordered)
}

/// A SQLite value as a literal of the same type.
fn sqlite_literal(value: rusqlite::types::ValueRef<'_>) -> String {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(r) if r.is_infinite() => if r > 0.0 { "9e999" } else { "-9e999" }.into(),
        // `{:?}` keeps a fraction or exponent: the value stays REAL.
        ValueRef::Real(r) => format!("{r:?}"),
        ValueRef::Text(t) => literal(&String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("X'{}'", hex::encode(b)),
    }
}
