//! Billing time: the node's clock (which tests and the demo may move forward, so
//! a month passes in seconds), UTC calendar arithmetic, and billing periods
//! (calendar months, UTC).

use std::fmt;

use serde::Deserialize as _;
use std::sync::atomic::{AtomicI64, Ordering};

/// The time billing sees: the system's, plus an offset an operator may move
/// forward when the node was started with `--settable-clock`. It drives
/// subscriptions, end dates, usage hours, spending limits and invoices; leases,
/// sessions and job schedules keep real time.
#[derive(Debug, Default)]
pub struct Clock {
    offset: AtomicI64,
    settable: bool,
}

/// Why the clock was not moved.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    #[error("this node's clock is real time; start it with --settable-clock to simulate time (tests, demos)")]
    NotSettable,
    #[error("the clock only moves forward: it is {now} and {asked} is earlier")]
    Backwards { now: String, asked: String },
    #[error(
        "{asked} is more than {} years ahead of real time (at most {limit}); a time is Unix seconds or a UTC date \
         such as 2027-01-10T08:00Z, not milliseconds",
        MAX_AHEAD_SECS / YEAR_SECS
    )]
    TooFar { asked: String, limit: String },
}

/// Seconds in a (Julian) year.
const YEAR_SECS: i64 = 31_557_600;
/// How far ahead of real time the clock may be moved: a month simulated in a
/// test or a demo is seconds away, and a slip of units (milliseconds sent as
/// seconds) is tens of thousands of years away and could never be undone.
pub const MAX_AHEAD_SECS: i64 = 10 * YEAR_SECS;

impl Clock {
    /// Real time, not settable.
    pub fn real() -> Self {
        Self::default()
    }

    /// Real time until an operator moves it.
    pub fn settable() -> Self {
        Self { offset: AtomicI64::new(0), settable: true }
    }

    pub fn is_settable(&self) -> bool {
        self.settable
    }

    /// Seconds since the Unix epoch.
    pub fn now(&self) -> i64 {
        crate::store::now() + self.offset.load(Ordering::Relaxed)
    }

    /// Move the clock to `at` (never back). Returns the new time.
    pub fn set(&self, at: i64) -> Result<i64, ClockError> {
        if !self.settable {
            return Err(ClockError::NotSettable);
        }
        let now = self.now();
        if at < now {
            return Err(ClockError::Backwards { now: format_utc(now), asked: format_utc(at) });
        }
        let limit = crate::store::now() + MAX_AHEAD_SECS;
        if at > limit {
            let asked = if at < 253_402_300_800 { format_utc(at) } else { format!("{at} (Unix seconds)") };
            return Err(ClockError::TooFar { asked, limit: format_utc(limit) });
        }
        self.offset.fetch_add(at - now, Ordering::Relaxed);
        Ok(self.now())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `2027-01-10T08:00:00Z`.
pub fn format_utc(ts: i64) -> String {
    let (y, m, d) = civil_from_days(ts.div_euclid(86_400));
    let secs = ts.rem_euclid(86_400);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs / 60 % 60, secs % 60)
}

/// A time as the API and CLI accept it: Unix seconds, `2027-01-10`, or
/// `2027-01-10T08:00[:00]Z` (UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<i64>() {
        return Some(secs);
    }
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').or_else(|| time.strip_suffix("+00:00"))?)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: u32 = parts.next()?.parse().ok()?;
    let day: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) || !(1970..=9999).contains(&year) {
        return None;
    }
    let mut secs = 0;
    if let Some(time) = time {
        let fields: Vec<&str> = time.split(':').collect();
        if !(2..=3).contains(&fields.len()) {
            return None;
        }
        let field = |i: usize, max: i64| -> Option<i64> {
            let value: i64 = fields.get(i).map_or(Some(0), |f| f.parse().ok())?;
            (0..max).contains(&value).then_some(value)
        };
        secs = field(0, 24)? * 3600 + field(1, 60)? * 60 + field(2, 60)?;
    }
    Some(days_from_civil(year, month, day) * 86_400 + secs)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let next = if month == 12 { days_from_civil(year + 1, 1, 1) } else { days_from_civil(year, month + 1, 1) };
    (next - days_from_civil(year, month, 1)) as u32
}

/// A billing period: one calendar month, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i64,
    pub month: u32,
}

impl Period {
    /// The period holding `ts`.
    pub fn containing(ts: i64) -> Self {
        let (year, month, _) = civil_from_days(ts.div_euclid(86_400));
        Self { year, month }
    }

    /// `2027-01`.
    pub fn parse(text: &str) -> Option<Self> {
        let (year, month) = text.trim().split_once('-')?;
        let (year, month) = (year.parse().ok()?, month.parse().ok()?);
        ((1970..=9999).contains(&year) && (1..=12).contains(&month) && text.trim().len() == 7)
            .then_some(Self { year, month })
    }

    /// First second of the period.
    pub fn start(self) -> i64 {
        days_from_civil(self.year, self.month, 1) * 86_400
    }

    /// First second after the period.
    pub fn end(self) -> i64 {
        self.next().start()
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self { year: self.year + 1, month: 1 }
        } else {
            Self { year: self.year, month: self.month + 1 }
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// The API description of an optional time: Unix seconds, an ISO 8601 UTC
/// date/time (`2027-01-10T08:00Z`), or `null`.
pub fn time_or_null_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Integer))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .description(Some("Unix seconds, an ISO 8601 UTC date/time, or null for none"))
            .build(),
    )
}

/// The API description of an optional number, given as a number or a
/// numeral (`12.5` or `"12.5"`), or `null`.
pub fn number_or_text_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// A time given as Unix seconds or an ISO 8601 UTC date/time.
pub fn time_value(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => parse_time(s),
        _ => None,
    }
}

/// Deserialize a time that may be absent (`None`), cleared with `null`
/// (`Some(None)`) or given as Unix seconds or a date (`Some(Some(t))`).
pub fn time_change<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(Some(None)),
        Some(v) => time_value(&v).map(|t| Some(Some(t))).ok_or_else(|| {
            D::Error::custom("a time is Unix seconds or a UTC date such as 2027-01-10 or 2027-01-10T08:00Z")
        }),
    }
}

/// Deserialize an optional time (Unix seconds or a date).
pub fn time_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    time_change(d).map(Option::flatten)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        for days in [-1, 0, 59, 365, 10_957, 11_016, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(format_utc(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(parse_time("2027-01-01"), Some(1_798_761_600));
        assert_eq!(parse_time("2027-01-01T01:02:03Z"), Some(1_798_761_600 + 3723));
        assert_eq!(parse_time("2027-01-01T01:02Z"), Some(1_798_761_600 + 3720));
        assert_eq!(parse_time("2027-02-29"), None);
        assert_eq!(parse_time("2028-02-29"), Some(days_from_civil(2028, 2, 29) * 86_400));
        assert_eq!(parse_time("2027-13-01"), None);
        assert_eq!(parse_time("2027-01-01T24:00Z"), None);
        assert_eq!(parse_time("soon"), None);
    }

    #[test]
    fn periods_are_calendar_months() {
        let jan = Period::parse("2027-01").unwrap();
        assert_eq!(jan.end() - jan.start(), 31 * 86_400);
        assert_eq!(Period::parse("2028-02").unwrap().end() - Period::parse("2028-02").unwrap().start(), 29 * 86_400);
        assert_eq!(Period::containing(jan.end() - 1), jan);
        assert_eq!(Period::containing(jan.end()).to_string(), "2027-02");
        assert_eq!(Period::parse("2027-12").unwrap().next().to_string(), "2028-01");
        assert!(Period::parse("2027-1").is_none() && Period::parse("2027-00").is_none());
    }

    #[test]
    fn the_clock_moves_forward_only_when_settable() {
        assert!(matches!(Clock::real().set(i64::MAX / 2), Err(ClockError::NotSettable)));
        let clock = Clock::settable();
        let later = clock.now() + 86_400 * 40;
        assert_eq!(clock.set(later).unwrap(), later);
        assert!(clock.now() >= later);
        assert!(matches!(clock.set(later - 10), Err(ClockError::Backwards { .. })));
        // Nine years ahead is a simulation; milliseconds taken for seconds are not.
        let nine_years = crate::store::now() + 9 * YEAR_SECS;
        assert_eq!(clock.set(nine_years).unwrap(), nine_years);
        assert!(matches!(clock.set(nine_years * 1000), Err(ClockError::TooFar { .. })));
        assert!(matches!(clock.set(i64::MAX), Err(ClockError::TooFar { .. })));
        assert!(clock.now() < nine_years + 60);
    }
}
