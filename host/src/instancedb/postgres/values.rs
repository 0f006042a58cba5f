//! Values in and out of PostgreSQL: each parameter bound as the type the server
//! inferred for it, each column read as PostgreSQL prints it.

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};

use crate::instancedb::types::{SqlValue, MAX_VALUE_BYTES};

/// Bind each value as the type the server inferred for its parameter.
pub(super) fn bind(stmt: &tokio_postgres::Statement, params: &[SqlValue]) -> Result<Vec<Param>, String> {
    let expected = stmt.params();
    if params.len() != expected.len() {
        return Err(format!("the statement has {} parameters but {} values were given", expected.len(), params.len()));
    }
    let mut out = Vec::with_capacity(params.len());
    for (i, (value, ty)) in params.iter().zip(expected).enumerate() {
        out.push(Param::new(value, ty).map_err(|e| format!("parameter ?{}: {e}", i + 1))?);
    }
    Ok(out)
}

/// One parameter, encoded for its type: numbers, booleans and bytes in binary,
/// anything else as text for the server to parse (dates, numerics, JSON, …).
#[derive(Debug)]
pub(super) enum Param {
    Null,
    Binary(Vec<u8>),
    Text(String),
}

impl Param {
    fn new(value: &SqlValue, ty: &Type) -> Result<Self, String> {
        let t = ty.clone();
        Ok(match value {
            SqlValue::Null => Param::Null,
            SqlValue::Integer(n) => {
                let n = *n;
                let range = || format!("{n} does not fit the parameter's type {ty}");
                match t {
                    Type::INT8 => Param::Binary(n.to_be_bytes().to_vec()),
                    Type::INT4 => Param::Binary(i32::try_from(n).map_err(|_| range())?.to_be_bytes().to_vec()),
                    Type::INT2 => Param::Binary(i16::try_from(n).map_err(|_| range())?.to_be_bytes().to_vec()),
                    Type::FLOAT8 => Param::Binary((n as f64).to_be_bytes().to_vec()),
                    Type::FLOAT4 => Param::Binary((n as f32).to_be_bytes().to_vec()),
                    Type::BOOL => Param::Binary(vec![u8::from(n != 0)]),
                    Type::BYTEA => return Err(format!("an integer cannot be bound as {ty}; pass a blob")),
                    _ => Param::Text(n.to_string()),
                }
            }
            SqlValue::Real(r) => match t {
                Type::FLOAT8 => Param::Binary(r.to_be_bytes().to_vec()),
                Type::FLOAT4 => Param::Binary((*r as f32).to_be_bytes().to_vec()),
                Type::INT2 | Type::INT4 | Type::INT8 | Type::BOOL | Type::BYTEA => {
                    return Err(format!("a real cannot be bound as {ty}; pass an integer, or cast"))
                }
                _ if r.is_finite() => Param::Text(r.to_string()),
                _ => Param::Text(if r.is_nan() {
                    "NaN".into()
                } else if *r > 0.0 {
                    "Infinity".into()
                } else {
                    "-Infinity".into()
                }),
            },
            SqlValue::Text(s) => match t {
                Type::BYTEA => Param::Binary(s.as_bytes().to_vec()),
                _ => Param::Text(s.clone()),
            },
            SqlValue::Blob(b) => match t {
                Type::BYTEA => Param::Binary(b.clone()),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Param::Text(
                    String::from_utf8(b.clone()).map_err(|_| format!("a blob bound as {ty} must be UTF-8"))?,
                ),
                _ => return Err(format!("a blob cannot be bound as {ty}; pass text or an integer")),
            },
        })
    }
}

impl ToSql for Param {
    fn to_sql(&self, _: &Type, out: &mut bytes::BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Param::Null => return Ok(IsNull::Yes),
            Param::Binary(b) => out.extend_from_slice(b),
            Param::Text(s) => out.extend_from_slice(s.as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> tokio_postgres::types::Format {
        match self {
            Param::Text(_) => tokio_postgres::types::Format::Text,
            _ => tokio_postgres::types::Format::Binary,
        }
    }

    tokio_postgres::types::to_sql_checked!();
}

/// One result value, converted from the column's type.
pub(super) struct Cell(pub(super) SqlValue);

impl<'a> FromSql<'a> for Cell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(decode(ty, raw)?))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Cell(SqlValue::Null))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

pub(super) fn decode(ty: &Type, raw: &[u8]) -> Result<SqlValue, String> {
    if raw.len() > MAX_VALUE_BYTES {
        return Err(format!("a value is larger than {} MiB", MAX_VALUE_BYTES >> 20));
    }
    let int = |n: usize| -> Result<i64, String> {
        let bytes = raw.get(..n).filter(|_| raw.len() == n).ok_or("a malformed value")?;
        Ok(match n {
            2 => i16::from_be_bytes([bytes[0], bytes[1]]) as i64,
            4 => i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64,
            _ => i64::from_be_bytes(bytes.try_into().map_err(|_| "a malformed value")?),
        })
    };
    let text = || String::from_utf8(raw.to_vec()).map_err(|_| "text that is not UTF-8".to_string());
    Ok(match *ty {
        Type::VOID => SqlValue::Null,
        Type::BOOL => SqlValue::Integer(i64::from(raw.first().is_some_and(|b| *b != 0))),
        Type::INT2 => SqlValue::Integer(int(2)?),
        Type::INT4 => SqlValue::Integer(int(4)?),
        Type::INT8 => SqlValue::Integer(int(8)?),
        Type::OID => SqlValue::Integer(int(4)? as u32 as i64),
        Type::FLOAT4 => SqlValue::Real(f32::from_be_bytes(raw.try_into().map_err(|_| "a malformed value")?) as f64),
        Type::FLOAT8 => SqlValue::Real(f64::from_be_bytes(raw.try_into().map_err(|_| "a malformed value")?)),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON | Type::XML => {
            SqlValue::Text(text()?)
        }
        Type::JSONB => {
            SqlValue::Text(String::from_utf8(raw.get(1..).unwrap_or_default().to_vec()).map_err(|e| e.to_string())?)
        }
        Type::BYTEA => SqlValue::Blob(raw.to_vec()),
        Type::NUMERIC => numeric(raw)?,
        Type::UUID => {
            let h = hex::encode(raw);
            if h.len() != 32 {
                return Err("a malformed uuid".into());
            }
            SqlValue::Text(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        Type::DATE => SqlValue::Text(date(int(4)?)),
        Type::TIMESTAMP => SqlValue::Text(timestamp(int(8)?)),
        Type::TIMESTAMPTZ => SqlValue::Text(format!("{}+00", timestamp(int(8)?))),
        Type::TIME => SqlValue::Text(time_of_day(int(8)?)),
        _ => {
            return Err(format!(
                "Wharf returns integers, reals, text, blobs, numerics, booleans, dates, times, uuids and JSON; \
                 cast this {ty} column (e.g. `column::text`)"
            ))
        }
    })
}

/// PostgreSQL's binary numeric: an integer when it has no fraction and fits,
/// else its exact decimal text.
pub(super) fn numeric(raw: &[u8]) -> Result<SqlValue, String> {
    let word = |i: usize| -> Result<u16, String> {
        raw.get(i * 2..i * 2 + 2).map(|b| u16::from_be_bytes([b[0], b[1]])).ok_or_else(|| "a malformed numeric".into())
    };
    let (count, weight, sign, scale) = (word(0)? as usize, word(1)? as i16 as i64, word(2)?, word(3)? as usize);
    match sign {
        0xC000 => return Ok(SqlValue::Text("NaN".into())),
        0xD000 => return Ok(SqlValue::Text("Infinity".into())),
        0xF000 => return Ok(SqlValue::Text("-Infinity".into())),
        _ => {}
    }
    let digits: Vec<u16> = (0..count).map(|i| word(4 + i)).collect::<Result<_, _>>()?;
    let digit = |i: i64| if i >= 0 { digits.get(i as usize).copied().unwrap_or(0) } else { 0 };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for i in 0..=weight {
            if i == 0 {
                s.push_str(&digit(i).to_string());
            } else {
                s.push_str(&format!("{:04}", digit(i)));
            }
        }
    }
    if scale > 0 {
        let mut fraction = String::new();
        let mut group = 1;
        while fraction.len() < scale {
            fraction.push_str(&format!("{:04}", digit(weight + group)));
            group += 1;
        }
        fraction.truncate(scale);
        s.push('.');
        s.push_str(&fraction);
    } else if let Ok(n) = s.parse::<i64>() {
        return Ok(SqlValue::Integer(n));
    }
    Ok(SqlValue::Text(s))
}

/// Days since 2000-01-01 as `YYYY-MM-DD` (proleptic Gregorian).
pub(super) fn date(days: i64) -> String {
    // Days since 0000-03-01 (719,468 before 1970-01-01), then civil-from-days.
    let z = days + 730_425;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS[.ffffff]`.
pub(super) fn timestamp(micros: i64) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => {
            let day = 86_400_000_000i64;
            format!("{} {}", date(micros.div_euclid(day)), time_of_day(micros.rem_euclid(day)))
        }
    }
}

pub(super) fn time_of_day(micros: i64) -> String {
    let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
    let base = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if frac == 0 {
        base
    } else {
        format!("{base}.{}", format!("{frac:06}").trim_end_matches('0'))
    }
}
