//! Range partitions on PostgreSQL: which partitions of a table lie wholly
//! before a cutoff (by their bounds, which PostgreSQL enforces), and the
//! steps that remove one whole: count it, detach it (concurrently where the
//! table allows), put it back, drop it. Tables are named as the data map
//! names them, in the connection's current schema.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{quote_ident as q, AppDb, Scope};
use crate::error::{Error, Result};

/// One partition of a range-partitioned table.
#[derive(Debug, Clone)]
pub struct RangePartition {
    pub name: String,
    /// `FOR VALUES FROM (…) TO (…)`, as PostgreSQL prints it (to attach it back).
    pub bound: String,
    /// Its upper bound (exclusive), as an instant; `None`: MAXVALUE or default.
    pub upper: Option<DateTime<Utc>>,
    /// Its upper bound is at or before the cutoff asked about: it can hold no later row.
    pub wholly_before: bool,
    pub is_default: bool,
    /// It is partitioned itself.
    pub sub_partitioned: bool,
    /// Why it cannot be detached and dropped by Lethe, when it cannot: a
    /// foreign table, another schema, another owner, a detach left pending.
    pub unfit: Option<String>,
}

/// How a table is partitioned, when it is by range on one column.
#[derive(Debug, Clone)]
pub struct RangePartitioning {
    pub partitions: Vec<RangePartition>,
    pub has_default: bool,
    /// Why no partition of this table is removed whole, when none is: Lethe's
    /// role does not own it, a foreign key references it, or the application
    /// has a DELETE trigger on it (a dropped partition fires none).
    pub unfit: Option<String>,
}

/// Why a table's partitions are not removed whole, when it is partitioned at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotByRange {
    NotPartitioned,
    /// Partitioned otherwise: another strategy, key column or an expression.
    OtherKey(String),
}

/// The key column's types whose bounds compare with a cutoff as the rows do.
const TIME_TYPES: [&str; 3] = [
    "timestamp with time zone",
    "timestamp without time zone",
    "date",
];

fn pool(db: &AppDb) -> Result<&PgPool> {
    match db {
        AppDb::Postgres(p) => Ok(p),
        AppDb::Sqlite(_) => Err(Error::Failed("partitions exist on PostgreSQL only".into())),
    }
}

impl AppDb {
    /// `table`'s partitions, oldest first, with whether each lies wholly
    /// before `cutoff`, when it is range-partitioned on `column` alone (a time type).
    pub async fn range_partitions(
        &self,
        table: &str,
        column: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<std::result::Result<RangePartitioning, NotByRange>> {
        let AppDb::Postgres(p) = self else {
            return Ok(Err(NotByRange::NotPartitioned));
        };
        let key_type = match range_key(p, table, column).await? {
            Ok(t) => t,
            Err(e) => return Ok(Err(e)),
        };
        let mut partitions = children(p, table, &key_type, cutoff).await?;
        // Oldest first; MAXVALUE and the default partition last.
        partitions.sort_by_key(|x| (x.upper.is_none(), x.upper));
        let has_default = partitions.iter().any(|x| x.is_default);
        Ok(Ok(RangePartitioning {
            partitions,
            has_default,
            unfit: table_unfit(p, table).await?,
        }))
    }

    /// Rows of `s` in each partition of its table, by org: `(partition, org, rows)`.
    pub async fn count_by_partition_and_org(
        &self,
        s: &Scope,
    ) -> Result<Vec<(String, Option<String>, i64)>> {
        let p = pool(self)?;
        let mut sql = self.sql();
        let org = s.org.as_deref().map_or("NULL".to_string(), q);
        let w = sql.where_clause(s);
        let text = format!(
            "SELECT t::regclass::text, o::text, n FROM
               (SELECT tableoid AS t, {org} AS o, count(*) AS n FROM {} WHERE {w} GROUP BY 1, 2) g ORDER BY 1, 2",
            q(&s.table)
        );
        let rows: Vec<(String, Option<String>, i64)> =
            sqlx::query_as_with(&text, super::scope::pg_args(sql.binds)?)
                .fetch_all(p)
                .await?;
        // regclass prints a name quoted when it needs quotes: give it back bare.
        Ok(rows
            .into_iter()
            .map(|(t, o, n)| (unquote(&t), o, n))
            .collect())
    }

    /// Every row of one table (a partition, or one detached), by org.
    pub async fn rows_by_org(
        &self,
        table: &str,
        org: Option<&str>,
    ) -> Result<Vec<(Option<String>, i64)>> {
        let p = pool(self)?;
        let org = org.map_or("NULL".to_string(), q);
        let text = format!(
            "SELECT o::text, n FROM (SELECT {org} AS o, count(*) AS n FROM ONLY {} GROUP BY 1) g ORDER BY 1",
            q(table)
        );
        Ok(sqlx::query_as(&text).fetch_all(p).await?)
    }

    /// Rows of `table` whose org or subject is one of these (held, or under an override).
    pub async fn rows_of(
        &self,
        table: &str,
        org: Option<(&str, &[String])>,
        subject: Option<(&str, &[String])>,
    ) -> Result<i64> {
        let p = pool(self)?;
        let mut parts = Vec::new();
        let mut binds: Vec<Vec<String>> = Vec::new();
        for (col, values) in [org, subject].into_iter().flatten() {
            if !values.is_empty() {
                binds.push(values.to_vec());
                parts.push(format!("{}::text = ANY(${}::text[])", q(col), binds.len()));
            }
        }
        if parts.is_empty() {
            return Ok(0);
        }
        let text = format!(
            "SELECT count(*) FROM ONLY {} WHERE {}",
            q(table),
            parts.join(" OR ")
        );
        let mut query = sqlx::query_scalar(&text);
        for b in binds {
            query = query.bind(b);
        }
        Ok(query.fetch_one(p).await?)
    }

    /// Where a partition stands: attached to `parent`, half detached (a
    /// concurrent detach that was interrupted), detached, attached elsewhere, or gone.
    pub async fn partition_state(&self, parent: &str, partition: &str) -> Result<PartitionState> {
        let p = pool(self)?;
        let row: Option<(Option<String>, Option<bool>)> = sqlx::query_as(
            "SELECT pc.relname::text, i.inhdetachpending
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
             LEFT JOIN pg_class pc ON pc.oid = i.inhparent
             WHERE n.nspname = current_schema() AND c.relname = $1",
        )
        .bind(partition)
        .fetch_optional(p)
        .await?;
        Ok(match row {
            None => PartitionState::Gone,
            Some((None, _)) => PartitionState::Detached,
            Some((Some(of), _)) if of != parent => PartitionState::Elsewhere,
            Some((_, Some(true))) => PartitionState::DetachPending,
            Some(_) => PartitionState::Attached,
        })
    }

    /// Detaches `partition` from `parent`. Concurrently where the table has
    /// no default partition: that takes no lock the application's reads and
    /// writes wait for, and waits (without a limit, which would leave it half
    /// detached) for transactions that still use the partition. Otherwise a
    /// plain detach, which locks the whole table: it waits at most `lock_wait`
    /// for the application's locks, else `Locked`. Only a partition still
    /// attached to `parent` is taken.
    pub async fn detach_partition(
        &self,
        parent: &str,
        partition: &str,
        concurrently: bool,
        lock_wait: std::time::Duration,
    ) -> Result<Detach> {
        let p = pool(self)?;
        let how = match self.partition_state(parent, partition).await? {
            PartitionState::Attached if concurrently => " CONCURRENTLY",
            PartitionState::Attached => "",
            _ => return Ok(Detach::NotAttached),
        };
        let text = format!(
            "ALTER TABLE {} DETACH PARTITION {}{how}",
            q(parent),
            q(partition)
        );
        if concurrently {
            // CONCURRENTLY runs outside a transaction block: a statement of its own.
            sqlx::query(&text).execute(p).await?;
            return Ok(Detach::Done);
        }
        match with_lock_wait(p, &text, lock_wait).await? {
            true => Ok(Detach::Done),
            false => Ok(Detach::Locked),
        }
    }

    /// Attaches a detached partition back with its bound; an error says how
    /// to do it by hand when PostgreSQL refuses (a row for its range went to
    /// the default partition meanwhile) or the application's locks stay.
    pub async fn attach_partition(
        &self,
        parent: &str,
        partition: &str,
        bound: &str,
        lock_wait: std::time::Duration,
    ) -> Result<()> {
        let p = pool(self)?;
        let text = format!(
            "ALTER TABLE {} ATTACH PARTITION {} {bound}",
            q(parent),
            q(partition)
        );
        let failed = |why: String| {
            Error::Failed(format!(
                "partition {partition} must stay but could not be attached back to {parent} ({why}); \
                 it is detached and kept, not dropped. Attach it by hand: {text}"
            ))
        };
        if !bound.starts_with("FOR VALUES ") {
            return Err(failed(format!("unexpected bound `{bound}`")));
        }
        match with_lock_wait(p, &text, lock_wait).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(failed("the application's locks were not released".into())),
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// Drops a detached partition, waiting at most `lock_wait` for the
    /// application's locks on it: false when they were not released (it is
    /// still there, detached). Refused while it is attached.
    pub async fn drop_detached(
        &self,
        parent: &str,
        partition: &str,
        lock_wait: std::time::Duration,
    ) -> Result<bool> {
        match self.partition_state(parent, partition).await? {
            PartitionState::Detached => {}
            PartitionState::Gone => return Ok(true),
            other => {
                return Err(Error::Failed(format!(
                    "partition {partition} of {parent} is {other:?}, not detached: not dropped"
                )))
            }
        }
        with_lock_wait(
            pool(self)?,
            &format!("DROP TABLE {}", q(partition)),
            lock_wait,
        )
        .await
    }

    /// Marks a detached partition with when it may be dropped.
    pub async fn mark_detached(&self, partition: &str, note: &str) -> Result<()> {
        let text = format!(
            "COMMENT ON TABLE {} IS {}",
            q(partition),
            quote_literal(note)
        );
        sqlx::query(&text).execute(pool(self)?).await?;
        Ok(())
    }

    /// Tables in the current schema whose comment starts with `prefix`: `(table, comment)`.
    pub async fn marked_tables(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let AppDb::Postgres(p) = self else {
            return Ok(vec![]);
        };
        Ok(sqlx::query_as(
            "SELECT c.relname::text, d.description FROM pg_description d
             JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass AND d.objsubid = 0
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND starts_with(d.description, $1) ORDER BY 1",
        )
        .bind(prefix)
        .fetch_all(p)
        .await?)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionState {
    Attached,
    DetachPending,
    Detached,
    /// A partition of another table now.
    Elsewhere,
    Gone,
}

/// What a detach did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    Done,
    /// The application's locks were not released in time: still attached.
    Locked,
    /// It was not attached to the table (someone else detached or moved it).
    NotAttached,
}

/// Runs one statement in a transaction that waits at most `wait` for locks:
/// false (rolled back) when it waited longer.
async fn with_lock_wait(p: &PgPool, statement: &str, wait: std::time::Duration) -> Result<bool> {
    let mut tx = p.begin().await?;
    let ms = wait.as_millis().max(1);
    sqlx::query(&format!("SET LOCAL lock_timeout = {ms}"))
        .execute(&mut *tx)
        .await?;
    match sqlx::query(statement).execute(&mut *tx).await {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Why no partition of `table` may be removed whole, if one applies.
async fn table_unfit(p: &PgPool, table: &str) -> Result<Option<String>> {
    let (owned, referenced, triggers): (bool, bool, bool) = sqlx::query_as(
        "SELECT pg_has_role(current_user, c.relowner, 'USAGE'),
                EXISTS (SELECT 1 FROM pg_constraint k WHERE k.contype = 'f' AND k.confrelid = c.oid),
                EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal
                        AND t.tgtype & 8 <> 0 AND t.tgfoid <> ALL (SELECT oid FROM pg_proc WHERE proname = $2))
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = current_schema() AND c.relname = $1",
    )
    .bind(table)
    .bind(super::guard::PG_FUNCTION)
    .fetch_one(p)
    .await?;
    Ok(match () {
        _ if !owned => Some("Lethe's role does not own it (DETACH and DROP need the owner)".into()),
        _ if referenced => {
            Some("a foreign key references it (a DELETE cascades; a DROP would not)".into())
        }
        _ if triggers => {
            Some("the application has a DELETE trigger on it (a DROP fires none)".into())
        }
        _ => None,
    })
}

/// `timestamp(3) with time zone` → `timestamp with time zone`.
fn strip_precision(t: &str) -> String {
    match (t.find('('), t.find(')')) {
        (Some(a), Some(b)) if a < b => format!("{}{}", &t[..a], &t[b + 1..]),
        _ => t.to_string(),
    }
}

/// The type of `table`'s partition key when it is a range on `column` alone, of a time type.
async fn range_key(
    p: &PgPool,
    table: &str,
    column: &str,
) -> Result<std::result::Result<String, NotByRange>> {
    let key: Option<(String, i16, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT pt.partstrat::text, pt.partnatts, a.attname::text, format_type(a.atttypid, a.atttypmod)
         FROM pg_partitioned_table pt JOIN pg_class c ON c.oid = pt.partrelid
         JOIN pg_namespace n ON n.oid = c.relnamespace
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = pt.partattrs[0]
         WHERE n.nspname = current_schema() AND c.relname = $1",
    )
    .bind(table)
    .fetch_optional(p)
    .await?;
    let Some((strategy, keys, key_column, key_type)) = key else {
        return Ok(Err(NotByRange::NotPartitioned));
    };
    // `timestamp(3) with time zone` compares as `timestamp with time zone`.
    let key_type = strip_precision(&key_type.unwrap_or_default());
    if strategy != "r"
        || keys != 1
        || key_column.as_deref() != Some(column)
        || !TIME_TYPES.contains(&key_type.as_str())
    {
        return Ok(Err(NotByRange::OtherKey(format!(
            "partitioned by {} on {} ({}), not by range on `{column}` alone",
            match strategy.as_str() {
                "r" => "range",
                "l" => "list",
                _ => "hash",
            },
            key_column.unwrap_or_else(|| "an expression".into()),
            if key_type.is_empty() {
                "no column type"
            } else {
                key_type.as_str()
            }
        ))));
    }
    Ok(Ok(key_type))
}

/// `table`'s partitions with their bounds, and why any is unfit to drop.
async fn children(
    p: &PgPool,
    table: &str,
    key_type: &str,
    cutoff: DateTime<Utc>,
) -> Result<Vec<RangePartition>> {
    let rows: Vec<(String, String, String, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid), c.relkind::text,
                cn.nspname = current_schema(), pg_has_role(current_user, c.relowner, 'USAGE'),
                i.inhdetachpending
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_namespace cn ON cn.oid = c.relnamespace
         JOIN pg_class parent ON parent.oid = i.inhparent
         JOIN pg_namespace n ON n.oid = parent.relnamespace
         WHERE n.nspname = current_schema() AND parent.relname = $1",
    )
    .bind(table)
    .fetch_all(p)
    .await?;
    let mut partitions = Vec::new();
    for (name, bound, kind, here, owned, pending) in rows {
        let is_default = bound == "DEFAULT";
        let upper = match is_default {
            true => None,
            false => upper_bound(p, &bound, key_type).await?,
        };
        let unfit = match () {
            _ if pending => Some(format!(
                "a detach of it was left pending; finish it: ALTER TABLE {} DETACH PARTITION {} FINALIZE",
                q(table), q(&name)
            )),
            _ if !here => Some("it is in another schema".into()),
            _ if !owned => Some("Lethe's role does not own it".into()),
            _ if !matches!(kind.as_str(), "r" | "p") => Some("it is not a plain table".into()),
            _ => None,
        };
        partitions.push(RangePartition {
            name,
            bound,
            upper,
            wholly_before: upper.is_some_and(|u| u <= cutoff),
            is_default,
            sub_partitioned: kind == "p",
            unfit,
        });
    }
    Ok(partitions)
}

/// A range bound's upper end as an instant, read by PostgreSQL in the key
/// column's own type as its comparisons read it; `None` for MAXVALUE.
async fn upper_bound(p: &PgPool, bound: &str, key_type: &str) -> Result<Option<DateTime<Utc>>> {
    let Some(upper) = bound
        .split(" TO (")
        .nth(1)
        .and_then(|s| s.strip_suffix(')'))
    else {
        return Ok(None);
    };
    let Some(literal) = upper.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) else {
        return Ok(None); // MAXVALUE, or a form not met with a time key
    };
    // The type is one of TIME_TYPES; the literal is bound, not spliced.
    // 'infinity' is a bound too, as unbounded as MAXVALUE.
    let text = format!(
        "SELECT CASE WHEN isfinite(v) THEN v::timestamptz END FROM (SELECT CAST($1::text AS {key_type}) AS v) b"
    );
    Ok(sqlx::query_scalar(&text)
        .bind(literal.replace("''", "'"))
        .fetch_one(p)
        .await?)
}

fn unquote(name: &str) -> String {
    match name.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => name.to_string(),
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
