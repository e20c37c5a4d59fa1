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
}

/// How a table is partitioned, when it is by range on one column.
#[derive(Debug, Clone)]
pub struct RangePartitioning {
    pub partitions: Vec<RangePartition>,
    pub has_default: bool,
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
        let key_type = key_type.unwrap_or_default();
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
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid), c.relkind = 'p'
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class parent ON parent.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = parent.relnamespace
             WHERE n.nspname = current_schema() AND parent.relname = $1 AND NOT i.inhdetachpending
             ORDER BY 1",
        )
        .bind(table)
        .fetch_all(p)
        .await?;
        let mut partitions = Vec::new();
        for (name, bound, sub_partitioned) in rows {
            let is_default = bound == "DEFAULT";
            let upper = match is_default {
                true => None,
                false => upper_bound(p, &bound, &key_type).await?,
            };
            partitions.push(RangePartition {
                name,
                bound,
                upper,
                wholly_before: upper.is_some_and(|u| u <= cutoff),
                is_default,
                sub_partitioned,
            });
        }
        // Oldest first; MAXVALUE and the default partition last.
        partitions.sort_by_key(|x| (x.upper.is_none(), x.upper));
        let has_default = partitions.iter().any(|x| x.is_default);
        Ok(Ok(RangePartitioning {
            partitions,
            has_default,
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

    /// Where a partition stands: attached, half detached (a concurrent detach
    /// that was interrupted), detached, or gone.
    pub async fn partition_state(&self, parent: &str, partition: &str) -> Result<PartitionState> {
        let p = pool(self)?;
        let row: Option<(Option<bool>,)> = sqlx::query_as(
            "SELECT (SELECT i.inhdetachpending FROM pg_inherits i JOIN pg_class pc ON pc.oid = i.inhparent
                     WHERE i.inhrelid = c.oid AND pc.relname = $2)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relname = $1",
        )
        .bind(partition)
        .bind(parent)
        .fetch_optional(p)
        .await?;
        Ok(match row {
            None => PartitionState::Gone,
            Some((None,)) => PartitionState::Detached,
            Some((Some(true),)) => PartitionState::DetachPending,
            Some((Some(false),)) => PartitionState::Attached,
        })
    }

    /// Detaches `partition` from `parent`: concurrently (no lock that blocks
    /// the application's reads and writes) unless the table has a default
    /// partition, which PostgreSQL requires a plain detach for. No lock is
    /// waited for longer than `lock_wait` (a plain detach queued behind the
    /// application would hold up every query on the table): false when it was
    /// not granted and the partition is still attached.
    pub async fn detach_partition(
        &self,
        parent: &str,
        partition: &str,
        concurrently: bool,
        lock_wait: std::time::Duration,
    ) -> Result<bool> {
        let p = pool(self)?;
        let how = match self.partition_state(parent, partition).await? {
            PartitionState::Attached if concurrently => " CONCURRENTLY",
            PartitionState::Attached => "",
            PartitionState::DetachPending => " FINALIZE",
            PartitionState::Detached | PartitionState::Gone => return Ok(true),
        };
        let mut conn = p.acquire().await?;
        let conn: &mut sqlx::PgConnection = &mut conn;
        let ms = lock_wait.as_millis().max(1);
        sqlx::query(&format!("SET lock_timeout = {ms}"))
            .execute(&mut *conn)
            .await?;
        // DETACH … CONCURRENTLY runs outside a transaction block: a statement of its own.
        let text = format!(
            "ALTER TABLE {} DETACH PARTITION {}{how}",
            q(parent),
            q(partition)
        );
        let outcome = sqlx::query(&text).execute(&mut *conn).await;
        sqlx::query("RESET lock_timeout")
            .execute(&mut *conn)
            .await?;
        match outcome {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                match self.partition_state(parent, partition).await? {
                    PartitionState::Attached => Ok(false),
                    // Half detached: the retry finishes it (FINALIZE).
                    other => Err(Error::Failed(format!(
                        "detaching partition {partition} of {parent} waited longer than {ms} ms for a lock and stopped {other:?}; the run's retry finishes it"
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Attaches a detached partition back with its bound (the scan that
    /// validates it runs under the lock ATTACH takes).
    pub async fn attach_partition(&self, parent: &str, partition: &str, bound: &str) -> Result<()> {
        let p = pool(self)?;
        if !bound.starts_with("FOR VALUES ") {
            return Err(Error::Failed(format!(
                "partition {partition}: unexpected bound `{bound}`"
            )));
        }
        let text = format!(
            "ALTER TABLE {} ATTACH PARTITION {} {bound}",
            q(parent),
            q(partition)
        );
        sqlx::raw_sql(&text).execute(p).await?;
        Ok(())
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
        let mut tx = pool(self)?.begin().await?;
        let ms = lock_wait.as_millis().max(1);
        sqlx::query(&format!("SET LOCAL lock_timeout = {ms}"))
            .execute(&mut *tx)
            .await?;
        match sqlx::query(&format!("DROP TABLE {}", q(partition)))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Marks a detached partition with when it may be dropped.
    pub async fn mark_detached(&self, partition: &str, note: &str) -> Result<()> {
        let text = format!(
            "COMMENT ON TABLE {} IS {}",
            q(partition),
            quote_literal(note)
        );
        sqlx::raw_sql(&text).execute(pool(self)?).await?;
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
    Gone,
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
    let text = format!("SELECT CAST(CAST($1::text AS {key_type}) AS timestamptz)");
    Ok(Some(
        sqlx::query_scalar(&text)
            .bind(literal.replace("''", "'"))
            .fetch_one(p)
            .await?,
    ))
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
