#![allow(clippy::unwrap_used)]

use super::instance::*;
use super::values::*;
use crate::instancedb::SqlValue;

#[test]
fn parameters_outside_strings_comments_and_bodies_become_dollars() {
    assert_eq!(placeholders("SELECT ?1, ?2 WHERE a = ?1").unwrap(), "SELECT $1, $2 WHERE a = $1");
    assert_eq!(placeholders("SELECT ?, ?").unwrap(), "SELECT $1, $2");
    assert_eq!(placeholders("SELECT '?1', \"?2\", ?3 -- ?4\n").unwrap(), "SELECT '?1', \"?2\", $3 -- ?4\n");
    assert_eq!(placeholders("SELECT 'it''s ?', E'\\' ?', ?1").unwrap(), "SELECT 'it''s ?', E'\\' ?', $1");
    assert_eq!(
        placeholders("SELECT $x$ ? $x$, /* ? /* ? */ ? */ ?2").unwrap(),
        "SELECT $x$ ? $x$, /* ? /* ? */ ? */ $2"
    );
    assert_eq!(placeholders("SELECT $1, ?").unwrap(), "SELECT $1, $2");
    assert!(placeholders("SELECT ?0").is_err());
}

#[test]
fn session_and_privilege_statements_are_refused_by_their_first_word() {
    for refused in [
        "SET ROLE x",
        " /* c */ reset role",
        "begin",
        "GRANT SELECT ON t TO PUBLIC",
        "alter role me set x = 1",
        "NOTIFY wharf_changes",
        "DO $$ BEGIN END $$",
        "copy t to stdout",
        "-- c\nLISTEN x",
        "(PREPARE p AS SELECT 1)",
    ] {
        assert!(check(refused).is_err(), "{refused}");
    }
    assert!(!check("select 1").unwrap().frees);
    assert!(!check("WITH x AS (DELETE FROM t RETURNING *) INSERT INTO u SELECT * FROM x").unwrap().frees);
    assert!(check("DELETE FROM t").unwrap().frees);
}

#[test]
fn numerics_dates_and_times_read_as_postgres_prints_them() {
    // 12345.678 = digits [1, 2345, 6780], weight 1, scale 3.
    let raw: Vec<u8> = [3u16, 1, 0, 3, 1, 2345, 6780].iter().flat_map(|w| w.to_be_bytes()).collect();
    assert!(matches!(numeric(&raw).unwrap(), SqlValue::Text(s) if s == "12345.678"));
    let raw: Vec<u8> = [1u16, 0, 0x4000, 0, 42].iter().flat_map(|w| w.to_be_bytes()).collect();
    assert!(matches!(numeric(&raw).unwrap(), SqlValue::Integer(-42)));
    let raw: Vec<u8> = [1u16, 0xFFFF, 0, 4, 50].iter().flat_map(|w| w.to_be_bytes()).collect();
    assert!(matches!(numeric(&raw).unwrap(), SqlValue::Text(s) if s == "0.0050"));
    assert_eq!(date(0), "2000-01-01");
    assert_eq!(date(9_829), "2026-11-29");
    assert_eq!(date(-1), "1999-12-31");
    assert_eq!(timestamp(86_400_000_000 + 3_723_500_000), "2000-01-02 01:02:03.5");
}
