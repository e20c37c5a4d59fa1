//! How a timestamp column stores time, so that a cutoff is compared in the
//! column's own form. SQLite has no time type: applications store unix
//! seconds or milliseconds (INTEGER), julian days (REAL) or ISO-8601 text in
//! several shapes, and comparing the wrong form is silently wrong (an INTEGER
//! is less than any TEXT, so every row looks expired). PostgreSQL compares
//! its time types natively (sessions are in UTC: see `AppDb::connect`).
//!
//! Detection reads the declared type, the oldest and newest value (numbers
//! sort before text, text before blobs, so both ends reveal mixed storage),
//! a sample of rows, and the shape of every value a cutoff could select.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Days, SubsecRound, Utc};
use serde::{Deserialize, Serialize};

use super::scope::{Bind, Sql};
use super::{quote_ident as q, AppDb};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeForm {
    /// PostgreSQL `timestamptz`, `timestamp` (read as UTC) or `date`.
    Native,
    /// No value at all yet: a cutoff selects nothing.
    Empty,
    /// INTEGER (or REAL) seconds since 1970-01-01 UTC.
    UnixSeconds,
    /// INTEGER milliseconds since 1970-01-01 UTC.
    UnixMillis,
    /// REAL julian day number, as SQLite's `julianday()` writes it.
    JulianDay,
    /// Text `YYYY-MM-DD HH:MM:SS[.fff]` (or a bare date): compared as text, by index.
    TextSpace,
    /// Text `YYYY-MM-DDTHH:MM:SS[.fff][Z]` (or a bare date): compared as text, by index.
    TextT,
    /// ISO-8601 text with `±HH:MM` offsets, minutes without seconds or mixed
    /// separators: normalised per row, after an index prefilter.
    TextIso,
}

impl fmt::Display for TimeForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TimeForm::Native => "native timestamp",
            TimeForm::Empty => "no values yet",
            TimeForm::UnixSeconds => "unix seconds",
            TimeForm::UnixMillis => "unix milliseconds",
            TimeForm::JulianDay => "julian day",
            TimeForm::TextSpace => "text 'YYYY-MM-DD HH:MM:SS'",
            TimeForm::TextT => "text 'YYYY-MM-DDTHH:MM:SS[Z]'",
            TimeForm::TextIso => "ISO-8601 text with offsets or mixed shapes (normalised per row)",
        })
    }
}

/// What detection found for one column.
#[derive(Debug, Clone, Serialize)]
pub struct DetectedForm {
    pub form: TimeForm,
    /// The column's declared type as the database reports it.
    pub declared: String,
}

/// Julian day of the unix epoch, in milliseconds (SQLite's `iJD` scale).
const JD_EPOCH_MS: i64 = 210_866_760_000_000;

/// `column < cutoff` in the column's form; NULL never compares true.
/// Text and numeric forms use whole seconds rounded down, so a cutoff with a
/// fraction can only keep a row of that last second, never delete a newer one.
pub(super) fn older_than(
    sql: &mut Sql,
    column: &str,
    cutoff: DateTime<Utc>,
    form: TimeForm,
) -> String {
    let c = q(column);
    let whole = cutoff.trunc_subsecs(0);
    let bind = match form {
        TimeForm::Empty => return "1 = 0".into(),
        TimeForm::Native => Bind::Time(cutoff),
        TimeForm::UnixSeconds => Bind::Int(whole.timestamp()),
        TimeForm::UnixMillis => Bind::Int(cutoff.timestamp_millis()),
        // Computed as SQLite's julianday() does, so equal instants compare equal.
        TimeForm::JulianDay => {
            Bind::Real((cutoff.timestamp_millis() + JD_EPOCH_MS) as f64 / 86_400_000.0)
        }
        TimeForm::TextSpace => Bind::Text(text_cutoff(whole, ' ')),
        TimeForm::TextT => Bind::Text(text_cutoff(whole, 'T')),
        TimeForm::TextIso => {
            // Offsets are under a day, so every older row has a date before cutoff + 2 days.
            let bound = sql.placeholder(Bind::Text(prefilter_date(whole)));
            let ph = sql.placeholder(Bind::Int(whole.timestamp()));
            return format!("({c} < {bound} AND CAST(strftime('%s', {c}) AS INTEGER) < {ph})");
        }
    };
    let ph = sql.placeholder(bind);
    format!("{c} < {ph}")
}

/// The cutoff as text that orders exactly against stored values of the form
/// `DATE[<sep>HH:MM:SS[.fff][Z]]`: a value of the cutoff's own second is longer
/// than the 19-character prefix, so it sorts after it (kept, not older); a bare
/// date sorts before its own midnight unless the cutoff is that midnight.
fn text_cutoff(whole: DateTime<Utc>, sep: char) -> String {
    if whole.format("%H:%M:%S").to_string() == "00:00:00" {
        whole.format("%Y-%m-%d").to_string()
    } else {
        whole.format(&format!("%Y-%m-%d{sep}%H:%M:%S")).to_string()
    }
}

fn prefilter_date(whole: DateTime<Utc>) -> String {
    whole
        .checked_add_days(Days::new(2))
        .unwrap_or(whole)
        .format("%Y-%m-%d")
        .to_string()
}

/// One text value's shape, from its digits replaced by `9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shape {
    /// `None`: a bare date.
    sep: Option<char>,
    seconds: bool,
    zone: Zone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zone {
    None,
    Z,
    Offset,
}

fn parse_shape(s: &str) -> Option<Shape> {
    let rest = s.strip_prefix("9999-99-99")?;
    if rest.is_empty() {
        return Some(Shape {
            sep: None,
            seconds: true,
            zone: Zone::None,
        });
    }
    let sep = rest.chars().next().filter(|c| *c == ' ' || *c == 'T')?;
    let rest = rest[1..].strip_prefix("99:99")?;
    let (seconds, rest) = match rest.strip_prefix(":99") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let rest = match rest.strip_prefix('.') {
        Some(r) if seconds => {
            let digits = r.len() - r.trim_start_matches('9').len();
            if digits == 0 {
                return None;
            }
            &r[digits..]
        }
        Some(_) => return None,
        None => rest,
    };
    let zone = match rest {
        "" => Zone::None,
        "Z" => Zone::Z,
        "+99:99" | "-99:99" => Zone::Offset,
        _ => return None,
    };
    Some(Shape {
        sep: Some(sep),
        seconds,
        zone,
    })
}

/// The form that compares every one of these shapes exactly.
fn text_form(shapes: &[Shape]) -> TimeForm {
    let seps: Vec<char> = shapes.iter().filter_map(|s| s.sep).collect();
    let uniform = |c: char| seps.iter().all(|s| *s == c);
    let plain = shapes.iter().all(|s| s.seconds && s.zone != Zone::Offset);
    if plain && uniform(' ') && shapes.iter().all(|s| s.zone == Zone::None) {
        TimeForm::TextSpace
    } else if plain && uniform('T') {
        TimeForm::TextT
    } else {
        TimeForm::TextIso
    }
}

/// Digits to `9`, so that values group by shape without reading them in Rust.
fn shape_sql(col: &str) -> String {
    let mut e = format!("CAST({} AS TEXT)", q(col));
    for d in '0'..='8' {
        e = format!("replace({e}, '{d}', '9')");
    }
    e
}

const HOW_TO_FIX: &str = "Lethe reads unix seconds or milliseconds (INTEGER), julian days (REAL) \
     or ISO-8601 text ('YYYY-MM-DD HH:MM:SS', 'YYYY-MM-DDTHH:MM:SS[.fff][Z|±HH:MM]'); \
     convert the column to one of these (rows with NULL are never purged by age)";

impl AppDb {
    /// How `table.column` stores time; `Error::Usage` naming the column, what
    /// was found and how to fix it when the values cannot be read as one form.
    /// `cutoff` is the latest cutoff that will be compared: every value that
    /// could be selected is checked, not only a sample.
    pub async fn time_form(
        &self,
        table: &str,
        column: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<DetectedForm> {
        match self {
            AppDb::Postgres(p) => {
                let declared: Option<String> = sqlx::query_scalar(
                    "SELECT data_type::text FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2",
                )
                .bind(table)
                .bind(column)
                .fetch_optional(p)
                .await?;
                let declared = declared.unwrap_or_default();
                match declared.as_str() {
                    "timestamp with time zone" | "timestamp without time zone" | "date" => {
                        Ok(DetectedForm {
                            form: TimeForm::Native,
                            declared,
                        })
                    }
                    other => Err(Error::Usage(format!(
                        "timestamp column `{table}`.`{column}` has type `{other}`; PostgreSQL \
                         columns compared with a cutoff must be timestamptz, timestamp (read as UTC) or date"
                    ))),
                }
            }
            AppDb::Sqlite(_) => self.sqlite_time_form(table, column, cutoff).await,
        }
    }

    async fn sqlite_time_form(
        &self,
        table: &str,
        column: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<DetectedForm> {
        let AppDb::Sqlite(p) = self else {
            return Err(Error::Failed("SQLite only".into()));
        };
        let declared: String =
            sqlx::query_scalar("SELECT type FROM pragma_table_info($1) WHERE name = $2")
                .bind(table)
                .bind(column)
                .fetch_optional(p)
                .await?
                .filter(|t: &String| !t.is_empty())
                .unwrap_or_else(|| "no type".into());
        let (t, c) = (q(table), q(column));
        let end = |dir: &str| {
            format!("SELECT typeof({c}), CAST({c} AS REAL) FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} {dir} LIMIT 1")
        };
        let min: Option<(String, f64)> = sqlx::query_as(&end("ASC")).fetch_optional(p).await?;
        let max: Option<(String, f64)> = sqlx::query_as(&end("DESC")).fetch_optional(p).await?;
        let what = |found: String| {
            Error::Usage(format!(
                "cannot tell how `{table}`.`{column}` (declared `{declared}`) stores time: {found}. {HOW_TO_FIX}"
            ))
        };
        let numeric = |k: &str| k == "integer" || k == "real";
        let form = match (min, max) {
            (None, _) | (_, None) => TimeForm::Empty,
            (Some((lk, lo)), Some((hk, hi))) if numeric(&lk) && numeric(&hk) => {
                numeric_form(lo, hi, |a, b| self.count_between(table, column, a, b))
                    .await?
                    .map_err(what)?
            }
            (Some((lk, _)), Some((hk, _))) if lk == "text" && hk == "text" => self
                .text_shapes(table, column, cutoff)
                .await
                .map_err(|e| match e {
                    Error::Usage(found) => what(found),
                    other => other,
                })?,
            (Some((lk, _)), Some((hk, _))) => {
                return Err(what(format!(
                    "it holds values of different storage classes (oldest is {lk}, newest is {hk})"
                )))
            }
        };
        Ok(DetectedForm { form, declared })
    }

    /// Numeric values in `[lo, hi)`.
    async fn count_between(&self, table: &str, column: &str, lo: f64, hi: f64) -> Result<i64> {
        let AppDb::Sqlite(p) = self else {
            return Ok(0);
        };
        let c = q(column);
        let text = format!(
            "SELECT count(*) FROM {} WHERE {c} >= $1 AND {c} < $2",
            q(table)
        );
        Ok(sqlx::query_scalar(&text)
            .bind(lo)
            .bind(hi)
            .fetch_one(p)
            .await?)
    }

    /// The text form that fits every value: the oldest, the newest, a sample,
    /// and all values old enough for `cutoff` to select.
    async fn text_shapes(
        &self,
        table: &str,
        column: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<TimeForm> {
        let AppDb::Sqlite(p) = self else {
            return Ok(TimeForm::Native);
        };
        let (t, c, shape) = (q(table), q(column), shape_sql(column));
        let bound = prefilter_date(cutoff.trunc_subsecs(0));
        let text = format!(
            "SELECT s, count(*) FROM (
               SELECT {shape} AS s FROM {t} WHERE {c} < $1
               UNION ALL SELECT * FROM (SELECT {shape} FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} LIMIT 1)
               UNION ALL SELECT * FROM (SELECT {shape} FROM {t} WHERE {c} IS NOT NULL ORDER BY {c} DESC LIMIT 1)
               UNION ALL SELECT * FROM (SELECT {shape} FROM {t} WHERE {c} IS NOT NULL LIMIT 200)
             ) GROUP BY s ORDER BY 2 DESC"
        );
        let found: Vec<(String, i64)> = sqlx::query_as(&text).bind(bound).fetch_all(p).await?;
        let mut shapes = Vec::new();
        let mut bad = BTreeMap::new();
        for (s, n) in found {
            match parse_shape(&s) {
                Some(sh) => shapes.push(sh),
                None => {
                    bad.insert(s, n);
                }
            }
        }
        if let Some((s, n)) = bad.into_iter().next() {
            // The shape (digits as 9), never the value itself.
            let shape = if s.is_empty() {
                "empty text ''".to_string()
            } else {
                format!("shaped `{s}`, digits shown as 9")
            };
            return Err(Error::Usage(format!(
                "it holds text that is not an ISO-8601 timestamp (at least {n} value(s) {shape})"
            )));
        }
        Ok(text_form(&shapes))
    }
}

/// Unix seconds, milliseconds or julian days from the value range; `Err` says what was found.
async fn numeric_form<F, Fut>(lo: f64, hi: f64, count: F) -> Result<Result<TimeForm, String>>
where
    F: Fn(f64, f64) -> Fut,
    Fut: std::future::Future<Output = Result<i64>>,
{
    // Bands (by the newest value): julian days 1e6..1e7 (years -1975..22666), seconds
    // 1e8..1e11 (1973..5138), milliseconds 1e11..1e14. Values below 1e6 read as early
    // 1970 in any of them (e.g. a 0 sentinel); a value between bands is ambiguous.
    if lo < 0.0 {
        return Ok(Err(format!("it holds negative numbers (smallest {lo})")));
    }
    let (form, ambiguous) = if (1e6..1e7).contains(&hi) {
        (TimeForm::JulianDay, None)
    } else if (1e8..1e11).contains(&hi) {
        (TimeForm::UnixSeconds, Some((1e6, 1e8)))
    } else if (1e11..1e14).contains(&hi) {
        (TimeForm::UnixMillis, Some((1e6, 1e11)))
    } else {
        return Ok(Err(format!(
            "its newest value {hi} is neither unix seconds (1e8..1e11), unix milliseconds (1e11..1e14) nor a julian day (1e6..1e7)"
        )));
    };
    if let Some((a, b)) = ambiguous {
        let n = count(a, b).await?;
        if n > 0 {
            return Ok(Err(format!(
                "its newest value {hi} reads as {form}, but {n} value(s) lie between {a} and {b}, which would be another unit"
            )));
        }
    }
    Ok(Ok(form))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn shapes_parse_the_iso_forms_and_nothing_else() {
        let ok = [
            ("9999-99-99", None, Zone::None),
            ("9999-99-99 99:99:99", Some(' '), Zone::None),
            ("9999-99-99 99:99:99.999", Some(' '), Zone::None),
            ("9999-99-99T99:99:99Z", Some('T'), Zone::Z),
            ("9999-99-99T99:99:99.999999Z", Some('T'), Zone::Z),
            ("9999-99-99T99:99:99+99:99", Some('T'), Zone::Offset),
            ("9999-99-99 99:99-99:99", Some(' '), Zone::Offset),
        ];
        for (s, sep, zone) in ok {
            let sh = parse_shape(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!((sh.sep, sh.zone), (sep, zone), "{s}");
        }
        for s in [
            "9999999999",
            "99/99/9999",
            "9999-99-99X99:99:99",
            "9999-99-99 99:99:99.",
            "9999-99-99 99:99:99+9999",
            "9999-99-99 99:99.99",
            "",
        ] {
            assert!(parse_shape(s).is_none(), "{s}");
        }
    }

    #[test]
    fn uniform_text_compares_as_text_and_the_rest_is_normalised() {
        let sh = |s: &str| parse_shape(s).unwrap();
        let space = sh("9999-99-99 99:99:99");
        let date = sh("9999-99-99");
        let t = sh("9999-99-99T99:99:99.999");
        let tz = sh("9999-99-99T99:99:99Z");
        let off = sh("9999-99-99T99:99:99+99:99");
        let minutes = sh("9999-99-99 99:99");
        let space_z = sh("9999-99-99 99:99:99Z");
        assert_eq!(text_form(&[space, date]), TimeForm::TextSpace);
        assert_eq!(text_form(&[date]), TimeForm::TextSpace);
        assert_eq!(text_form(&[t, tz, date]), TimeForm::TextT);
        for mixed in [vec![space, t], vec![tz, off], vec![minutes], vec![space_z]] {
            assert_eq!(text_form(&mixed), TimeForm::TextIso, "{mixed:?}");
        }
    }

    #[test]
    fn text_cutoffs_are_whole_seconds_or_a_bare_midnight() {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 10, 0, 0).unwrap();
        assert_eq!(text_cutoff(t, 'T'), "2026-01-01T10:00:00");
        assert_eq!(text_cutoff(t, ' '), "2026-01-01 10:00:00");
        let midnight = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(text_cutoff(midnight, ' '), "2026-01-01");
        assert_eq!(prefilter_date(t), "2026-01-03");
    }

    #[test]
    fn julian_cutoff_matches_sqlite_for_the_epoch() {
        let epoch = Utc.timestamp_opt(0, 0).unwrap();
        let jd = (epoch.timestamp_millis() + JD_EPOCH_MS) as f64 / 86_400_000.0;
        assert_eq!(jd, 2_440_587.5);
    }
}
