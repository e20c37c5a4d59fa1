//! Property test: whatever form an SQLite application stores its timestamps
//! in (unix seconds or milliseconds, julian days, ISO text with a space, a
//! `T`, `Z`, fractions or `±HH:MM` offsets, bare dates), a purge by age
//! deletes exactly the rows strictly older than the cutoff, and never a row
//! whose timestamp is NULL. Random timestamps cluster around the cutoff.

use std::str::FromStr;

use chrono::{DateTime, Duration, FixedOffset, TimeZone, Utc};
use lethe::appdb::{AppDb, Deleted, Scope, Selector, TimeForm};
use proptest::prelude::*;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

#[derive(Debug, Clone, Copy)]
enum Stored {
    Seconds,
    Millis,
    Julian,
    /// `YYYY-MM-DD HH:MM:SS[.fff]`, some rows a bare date.
    Space,
    /// `YYYY-MM-DDTHH:MM:SS[.fff][Z]`, some rows a bare date.
    T,
    /// `…±HH:MM`, mixed with `Z`.
    Offset,
}

impl Stored {
    fn expected(self) -> TimeForm {
        match self {
            Stored::Seconds => TimeForm::UnixSeconds,
            Stored::Millis => TimeForm::UnixMillis,
            Stored::Julian => TimeForm::JulianDay,
            Stored::Space => TimeForm::TextSpace,
            Stored::T => TimeForm::TextT,
            Stored::Offset => TimeForm::TextIso,
        }
    }

    fn declared(self) -> &'static str {
        match self {
            Stored::Seconds | Stored::Millis => "INTEGER",
            Stored::Julian => "REAL",
            _ => "TEXT",
        }
    }
}

/// One row: its instant (`None`: NULL) and how it is written.
#[derive(Debug, Clone)]
struct Row {
    at: Option<DateTime<Utc>>,
    /// Bare date (text forms; the instant is then that midnight).
    date_only: bool,
    frac: bool,
    zulu: bool,
    offset_min: i32,
}

fn frac_text(t: DateTime<Utc>, frac: bool) -> String {
    if frac {
        format!(".{:03}", t.timestamp_subsec_millis())
    } else {
        String::new()
    }
}

/// The SQL literal that stores `row` in `form`.
fn literal(form: Stored, row: &Row) -> String {
    let Some(t) = row.at else {
        return "NULL".into();
    };
    let date = t.format("%Y-%m-%d").to_string();
    match form {
        Stored::Seconds => t.timestamp().to_string(),
        Stored::Millis => t.timestamp_millis().to_string(),
        Stored::Julian => format!(
            "{:?}",
            (t.timestamp_millis() + 210_866_760_000_000) as f64 / 86_400_000.0
        ),
        Stored::Space | Stored::T if row.date_only => format!("'{date}'"),
        Stored::Space => format!(
            "'{}{}'",
            t.format("%Y-%m-%d %H:%M:%S"),
            frac_text(t, row.frac)
        ),
        Stored::T => format!(
            "'{}{}{}'",
            t.format("%Y-%m-%dT%H:%M:%S"),
            frac_text(t, row.frac),
            if row.zulu { "Z" } else { "" }
        ),
        Stored::Offset => {
            if row.zulu {
                return format!(
                    "'{}{}Z'",
                    t.format("%Y-%m-%dT%H:%M:%S"),
                    frac_text(t, row.frac)
                );
            }
            let off = FixedOffset::east_opt(row.offset_min * 60).unwrap();
            let local = t.with_timezone(&off);
            format!(
                "'{}{}{}'",
                local.format("%Y-%m-%dT%H:%M:%S"),
                frac_text(t, row.frac),
                local.format("%:z")
            )
        }
    }
}

/// Truncates the instant to what the stored form can hold.
fn representable(form: Stored, row: &mut Row) {
    let Some(t) = row.at else { return };
    let ms = t.timestamp_millis();
    let keep_ms = match form {
        Stored::Seconds => ms - ms.rem_euclid(1000),
        Stored::Space | Stored::T if row.date_only => ms - ms.rem_euclid(86_400_000),
        Stored::Space | Stored::T | Stored::Offset if !row.frac => ms - ms.rem_euclid(1000),
        _ => ms,
    };
    row.at = Utc.timestamp_millis_opt(keep_ms).single();
}

fn stored() -> impl Strategy<Value = Stored> {
    prop_oneof![
        Just(Stored::Seconds),
        Just(Stored::Millis),
        Just(Stored::Julian),
        Just(Stored::Space),
        Just(Stored::T),
        Just(Stored::Offset),
    ]
}

/// Offsets from the cutoff in ms: mostly within two seconds, some exact, some days away.
fn delta_ms() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => -2_000i64..2_000,
        1 => Just(0i64),
        1 => (-3i64..=3).prop_map(|s| s * 1000),
        2 => -3 * 86_400_000i64..3 * 86_400_000,
    ]
}

fn row() -> impl Strategy<Value = (Option<i64>, bool, bool, bool, i32)> {
    (
        prop::option::weighted(0.9, delta_ms()),
        prop::bool::weighted(0.15),
        any::<bool>(),
        any::<bool>(),
        -14 * 60i32..=14 * 60,
    )
}

fn cutoff() -> impl Strategy<Value = DateTime<Utc>> {
    // 2001..2033, whole seconds as the purge uses; a fifth of them exactly midnight.
    (1_000_000_000i64..2_000_000_000, prop::bool::weighted(0.2)).prop_map(|(s, midnight)| {
        let s = if midnight {
            s - s.rem_euclid(86_400)
        } else {
            s
        };
        Utc.timestamp_opt(s, 0).unwrap()
    })
}

async fn purge_case(form: Stored, cutoff: DateTime<Utc>, rows: &[Row]) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let url = format!("sqlite://{}", dir.path().join("app.db").display());
    let pool = SqlitePoolOptions::new()
        .connect_with(
            SqliteConnectOptions::from_str(&url)
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(&format!(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts {}); CREATE INDEX events_ts ON events (ts);",
        form.declared()
    ))
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    for (i, r) in rows.iter().enumerate() {
        sqlx::raw_sql(&format!(
            "INSERT INTO events (id, ts) VALUES ({i}, {})",
            literal(form, r)
        ))
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    }
    let db = AppDb::connect(&url).await.map_err(|e| e.to_string())?;
    let detected = db
        .time_form("events", "ts", cutoff)
        .await
        .map_err(|e| e.to_string())?;
    let values: Vec<&Row> = rows.iter().filter(|r| r.at.is_some()).collect();
    let want_form = match form {
        _ if values.is_empty() => TimeForm::Empty,
        // Offsets only where some row has one; all-`Z` text is the `T` form.
        Stored::Offset if values.iter().all(|r| r.zulu) => TimeForm::TextT,
        _ => form.expected(),
    };
    // A text column of bare dates only reads as the space form; both compare alike.
    let bare = values.iter().all(|r| r.date_only);
    if !(detected.form == want_form
        || (bare && matches!(form, Stored::T) && detected.form == TimeForm::TextSpace))
    {
        return Err(format!("detected {:?}, stored {form:?}", detected.form));
    }
    let scope = Scope {
        table: "events".into(),
        org: None,
        subject: None,
        selectors: vec![Selector::Before {
            column: "ts".into(),
            cutoff,
            form: detected.form,
        }],
        only_orgs: None,
        exclude_orgs: vec![],
        exclude_subjects: vec![],
        append_only: false,
        range: None,
    };
    let planned = db.count(&scope).await.map_err(|e| e.to_string())?;
    match db.delete_batch(&scope, 10_000, u64::MAX).await {
        Ok(Deleted::Rows(n)) if n as i64 == planned => {}
        other => return Err(format!("delete: {other:?}, planned {planned}")),
    }
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM events ORDER BY id")
        .fetch_all(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let want: Vec<i64> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.at.is_none_or(|t| t >= cutoff))
        .map(|(i, _)| i as i64)
        .collect();
    if left != want {
        let wrong: Vec<String> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| left.contains(&(*i as i64)) != want.contains(&(*i as i64)))
            .map(|(_, r)| literal(form, r))
            .collect();
        return Err(format!(
            "cutoff {cutoff}: wrongly kept or deleted {wrong:?}"
        ));
    }
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Exactly the rows strictly older than the cutoff go, in every storage form.
    #[test]
    fn a_purge_takes_exactly_the_rows_older_than_the_cutoff(
        form in stored(),
        cutoff in cutoff(),
        raw in prop::collection::vec(row(), 0..40),
    ) {
        let rows: Vec<Row> = raw
            .into_iter()
            .map(|(d, date_only, frac, zulu, offset_min)| {
                let mut r = Row {
                    at: d.map(|ms| cutoff + Duration::milliseconds(ms)),
                    date_only,
                    frac,
                    zulu,
                    offset_min,
                };
                representable(form, &mut r);
                r
            })
            .collect();
        let rt = runtime();
        let result = rt.block_on(purge_case(form, cutoff, &rows));
        prop_assert!(result.is_ok(), "{form:?}: {}", result.unwrap_err());
    }
}
