//! What a guest's SQL may do: the authorizer, the statement checks, and the
//! messages the guest reads when something is refused.

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};

use super::types::{MAX_DB_BYTES, MAX_KEY_BYTES, MAX_STATEMENT_BYTES, STATEMENT_TIMEOUT};

/// PRAGMAs that describe the guest's own schema; they may name a table.
const SCHEMA_PRAGMAS: &[&str] =
    &["table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "foreign_key_list"];

/// Check a statement and trim what follows its end (`;` and whitespace), so one
/// statement with a trailing `;` is still one statement.
pub(super) fn check_statement(statement: &str) -> Result<&str, String> {
    if statement.len() > MAX_STATEMENT_BYTES {
        return Err(format!("the statement is longer than {} KiB", MAX_STATEMENT_BYTES >> 10));
    }
    // VACUUM INTO writes a copy of the database to any path: refused outright.
    let words: Vec<String> = statement.split_whitespace().take(3).map(|w| w.to_ascii_uppercase()).collect();
    if words.first().is_some_and(|w| w == "VACUUM") && statement.to_ascii_uppercase().contains("INTO") {
        return Err("VACUUM INTO is not allowed: it writes outside the instance's database".into());
    }
    Ok(statement.trim_end_matches(|c: char| c == ';' || c.is_whitespace()))
}

pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(format!("keys are 1 to {MAX_KEY_BYTES} bytes"));
    }
    Ok(())
}

/// The message a guest reads for a failed statement.
pub(super) fn describe(e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(err, Some(msg)) if err.code == C::AuthorizationForStatementDenied => {
            format!("not allowed: {msg}")
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == C::OperationInterrupted => {
            format!("the statement ran longer than {} s (or the request ended)", STATEMENT_TIMEOUT.as_secs())
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == C::DiskFull => {
            format!(
                "the database is full: an instance's database holds at most {} MiB, and all of a tenant's \
                 databases together at most its database_bytes quota",
                MAX_DB_BYTES >> 20
            )
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == C::OutOfMemory => {
            "the statement needs more memory than the node allows; select fewer or smaller values".into()
        }
        rusqlite::Error::SqliteFailure(err, _) if err.code == C::DatabaseBusy || err.code == C::DatabaseLocked => {
            "the database is busy; retry".into()
        }
        rusqlite::Error::MultipleStatement => "send one statement at a time (or use batch)".into(),
        other => other.to_string(),
    }
}

/// Names the guest may not use: the host's namespace.
pub(super) fn is_host_table(name: &str) -> bool {
    name.to_ascii_lowercase().starts_with("_wharf")
}

/// The authorizer: what a guest's statement may do. `host` is set only while the
/// host runs its own statements (transactions of `batch`, checkpoints).
pub(super) fn authorize(ctx: &AuthContext<'_>, host: bool) -> Authorization {
    use AuthAction as A;
    if host {
        return Authorization::Allow;
    }
    // Only the main database: no temp schema tricks, no attached files.
    if ctx.database_name.is_some_and(|db| db != "main") {
        return Authorization::Deny;
    }
    let allowed = match ctx.action {
        A::Select | A::Recursive => true,
        // A transaction left open would outlive the request; `batch` is the way
        // to run statements together.
        A::Transaction { .. } | A::Savepoint { .. } => false,
        A::Read { table_name, .. } => !is_host_table(table_name),
        // (SQLite itself refuses direct writes to sqlite_schema; creating a table
        // writes it internally, so it must pass here.)
        A::Insert { table_name } | A::Update { table_name, .. } | A::Delete { table_name } => {
            !is_host_table(table_name)
        }
        A::CreateTable { table_name } | A::DropTable { table_name } | A::AlterTable { table_name, .. } => {
            !is_host_table(table_name)
        }
        A::CreateIndex { table_name, .. } | A::DropIndex { table_name, .. } => !is_host_table(table_name),
        A::CreateTrigger { table_name, .. } | A::DropTrigger { table_name, .. } => !is_host_table(table_name),
        A::CreateView { view_name } | A::DropView { view_name } => !is_host_table(view_name),
        A::Reindex { .. } | A::Analyze { .. } => true,
        A::Function { function_name } => {
            let f = function_name.to_ascii_lowercase();
            f != "load_extension" && f != "readfile" && f != "writefile" && f != "fts3_tokenizer"
        }
        A::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            if SCHEMA_PRAGMAS.contains(&name.as_str()) {
                !pragma_value.is_some_and(is_host_table)
            } else {
                // user_version is the guest's own data; foreign_keys may be read,
                // never changed (a setting would outlive the request).
                name == "user_version" || (name == "foreign_keys" && pragma_value.is_none())
            }
        }
        // ATTACH, DETACH, virtual tables, temp objects and anything unknown.
        _ => false,
    };
    if allowed {
        Authorization::Allow
    } else {
        Authorization::Deny
    }
}
