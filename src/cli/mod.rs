//! clap definitions; each subcommand parses, calls `commands::*`, prints.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(name = "lethe", version, about = "Data-lifecycle and data-subject-request worker", long_about = None)]
pub struct Cli {
    /// Config file (default: $LETHE_CONFIG, else ./lethe.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LETHE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a starter lethe.toml and jobs/ using embedded backends.
    Init {
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Build a sample multi-tenant app database and run every job kind once.
    Demo {
        #[arg(long, default_value = "lethe-demo")]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Apply the worker schema.
    Migrate,
    /// Validate config, job catalog and connectivity.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Scheduler + workers + HTTP until SIGTERM, then drain.
    Serve {
        /// Schedule only these jobs (repeatable); the others fire on other replicas.
        /// Workers still take any run already queued.
        #[arg(long = "only", value_name = "JOB", conflicts_with = "no_schedule")]
        only: Vec<String>,
        /// Schedule nothing: only take runs already queued (`lethe run --detach`, other replicas' fires).
        #[arg(long)]
        no_schedule: bool,
    },
    /// Run one job now, through the queue, and wait for it.
    Run {
        /// Job name from jobs/ (or a job kind).
        job: String,
        #[arg(long)]
        dry_run: bool,
        /// Override a parameter: K=V (V parsed as TOML, else a string).
        #[arg(long = "param", value_name = "K=V")]
        params: Vec<String>,
        /// Only queue the run; a `lethe serve` replica takes it. Prints the run id.
        #[arg(long)]
        detach: bool,
        #[arg(long)]
        json: bool,
    },
    /// The job catalog and run history.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// The tamper-evident audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Retention per data class and per-org overrides.
    Retention {
        #[command(subcommand)]
        command: RetentionCommand,
    },
    /// Data subject requests: export and erasure.
    Dsr {
        #[command(subcommand)]
        command: DsrCommand,
    },
    /// Files in the application's object stores.
    Objects {
        #[command(subcommand)]
        command: ObjectsCommand,
    },
    /// Per-org data keys under KMS keys: status and rotation.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Personal-data breaches and their notification deadlines.
    Breach {
        #[command(subcommand)]
        command: BreachCommand,
    },
    /// Encrypted backups in object storage: list, verify by restore, restore.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// PostgreSQL's write-ahead log, archived continuously: archive_command and restore_command.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// An organisation's requests about all of its data: deletion after a cooling-off period.
    Org {
        #[command(subcommand)]
        command: OrgCommand,
    },
    /// Legal holds: held orgs or subjects are never purged or erased.
    Hold {
        #[command(subcommand)]
        command: HoldCommand,
    },
    /// The application's own tables: the guard of its append-only logs.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// The append-only guard of a data map table marked `append_only = true`.
    Guard {
        #[command(subcommand)]
        command: GuardCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum GuardCommand {
    /// Print the trigger SQL that makes TABLE append-only (UPDATE and TRUNCATE
    /// refused, DELETE only by Lethe's retention); --apply runs it in one
    /// transaction (idempotent: it replaces what it installs).
    Install {
        #[arg(long)]
        table: String,
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RetentionCommand {
    /// Keep one org's data of a class longer or shorter than the data map says.
    Set {
        #[arg(long)]
        class: String,
        #[arg(long)]
        org: String,
        /// e.g. 30d, 12w, 6mo, 2y
        #[arg(long)]
        period: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Data classes with their rules, and the overrides in force.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an override.
    Unset {
        #[arg(long)]
        class: String,
        #[arg(long)]
        org: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DsrCommand {
    /// Record a request; erasure of a sole owner is refused (exit 3).
    Submit {
        #[arg(long, value_parser = ["export", "erasure", "rectification"])]
        kind: String,
        /// The subject's email.
        #[arg(long)]
        subject: String,
        /// gdpr, uk_gdpr, ccpa (cpra), uu_pdp, or default.
        #[arg(long)]
        jurisdiction: Option<String>,
        /// Only this org's workspace: the org, as controller, asks (the
        /// sole-owner rule then applies within it).
        #[arg(long)]
        org: Option<String>,
        /// The subject's identity is still to be checked: the request waits
        /// (received) for `dsr verify`, or expires after dsr.verify_within.
        #[arg(long)]
        unverified: bool,
        /// A rectification's correction, repeated for each column: a mapped,
        /// non-key column of a table with one row per subject.
        #[arg(long = "set", value_name = "TABLE.COLUMN=VALUE")]
        set: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Record how an unverified request's identity was checked.
    Verify {
        id: i64,
        /// How: a short label, e.g. id_document, email_link, account_login.
        #[arg(long)]
        method: String,
        /// Who checked.
        #[arg(long)]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// Requests, newest first, with SLA state.
    List {
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// One request.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// Extend a deadline, within what the jurisdiction allows.
    Extend {
        id: i64,
        /// 1 to 3650; the jurisdiction's limit applies on top.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Why, as told to the subject.
        #[arg(long)]
        reason: String,
        /// When the subject was told of the extension (RFC 3339; default now).
        /// Must be before the deadline in force.
        #[arg(long)]
        notified_at: Option<String>,
    },
    /// The SLA report (with --send, mailed to the DPO through the outbox).
    Report {
        #[arg(long)]
        send: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ObjectsCommand {
    /// Objects in a store that no row of the data map references.
    Orphans {
        /// The store's name, as in `[object_stores.NAME]`.
        #[arg(long)]
        store: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Per org: active DEK version, age, next rotation, shredded.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate now (all orgs, or one): new DEKs when due, re-wrap, KEK rotation, crypto-shredding.
    Rotate {
        #[arg(long)]
        org: Option<String>,
        /// A new data key version now, whatever its age (after a suspected exposure).
        #[arg(long)]
        new_dek: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BreachCommand {
    /// Record a breach; deadlines per party follow from the jurisdictions.
    Open {
        #[arg(long)]
        title: String,
        /// When it was detected / became known (RFC 3339).
        #[arg(long)]
        detected_at: String,
        /// gdpr (default), uk_gdpr, uu_pdp; repeatable.
        #[arg(long = "jurisdiction")]
        jurisdictions: Vec<String>,
        /// Affected org ids; repeatable.
        #[arg(long = "org")]
        orgs: Vec<String>,
        /// How many data subjects are affected.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..=100_000_000_000))]
        subjects: i64,
        #[arg(long)]
        json: bool,
    },
    /// Breaches with each party's deadline and whether it was told.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Record that a party was told; its reminders stop.
    Notify {
        id: i64,
        #[arg(long, value_parser = ["authority", "controller", "subjects"])]
        party: String,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum WalCommand {
    /// Archive one WAL file: archive_command = 'lethe wal push %p'. Idempotent;
    /// other bytes under an archived name fail (exit 3).
    Push {
        /// The file PostgreSQL passes as %p.
        path: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Restore one WAL file: restore_command = 'lethe wal fetch %f %p'. Exit 1:
    /// not in the archive; exit 126 on any other failure, which stops recovery
    /// (PostgreSQL would take any other code for "no more WAL" and open early).
    Fetch {
        /// The file name PostgreSQL passes as %f.
        name: String,
        /// Where to write it: %p.
        dest: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// The catalog, newest first.
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Download, decrypt, decompress, check the hash, restore into a scratch database, compare row counts.
    Verify {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Restore a dump into an empty PostgreSQL database or a new SQLite file
    /// (--to), or a base backup into a data directory (--to-dir), to a moment.
    #[command(group(clap::ArgGroup::new("into").required(true).args(["to", "to_dir"])))]
    Restore {
        /// The backup; with --to-dir, default: the newest base backup that ended before the target.
        id: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// A new or empty folder: the restored PostgreSQL data directory, recovered and stopped.
        #[arg(long)]
        to_dir: Option<std::path::PathBuf>,
        /// Recover up to this moment (RFC 3339); default: the end of the WAL archive.
        #[arg(long, requires = "to_dir", conflicts_with = "to_lsn")]
        to_time: Option<String>,
        /// Recover up to this WAL position (like 0/3000028).
        #[arg(long, requires = "to_dir")]
        to_lsn: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum OrgCommand {
    /// Request deletion of every org-scoped row (of --class, else all classes), run by `org.purge` after --after.
    Delete {
        #[arg(long)]
        org: String,
        /// Only these data classes (repeatable); default: every class.
        #[arg(long = "class")]
        classes: Vec<String>,
        #[arg(long)]
        reason: String,
        /// The cooling-off period before `org.purge` may run it (e.g. 7d, 0s); at most 90d.
        #[arg(long, default_value = "7d")]
        after: String,
        /// Who at the org asked (an email), named in the certificate.
        #[arg(long)]
        contact: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Export every org-scoped row (of --class, else all classes): JSON Lines a table and a manifest, zstd + age, uploaded, link mailed.
    Export {
        #[arg(long)]
        org: String,
        #[arg(long = "class")]
        classes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a scheduled deletion.
    Cancel {
        id: i64,
        #[arg(long)]
        json: bool,
    },
    /// The org's requests, and which backups still hold its data until when.
    Status {
        #[arg(long)]
        org: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum HoldCommand {
    /// Place a legal hold on an org or a subject.
    Add {
        #[arg(long, conflicts_with = "subject")]
        org: Option<String>,
        /// The subject's email.
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Active holds (with --all, released ones too).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Release a hold.
    Release {
        id: i64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Jobs in the catalog with their next fire and last run.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Recent runs, newest first.
    History {
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Write the chain as JSONL (with --signed, a trailing HMAC block keyed by AUDIT_SIGNING_KEY).
    Export {
        #[arg(long)]
        signed: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an export's chain and signature (names the first broken line), or
    /// with --live the store's own chain against every anchor. Exit 0 when
    /// intact (an unsigned or unanchored chain says so), 1 when broken or, with
    /// --require-signature, not authenticated.
    Verify {
        /// An export (`audit export`); omitted with --live.
        #[arg(required_unless_present = "live", conflicts_with = "live")]
        file: Option<PathBuf>,
        /// Verify the store's chain in place, against every anchor in [audit] anchor_url.
        #[arg(long)]
        live: bool,
        /// Also check FILE against every anchor in [audit] anchor_url.
        #[arg(long, requires = "file")]
        anchors: bool,
        /// Check that FILE continues the older export OLD (same events up to OLD's end).
        #[arg(
            long,
            value_name = "OLD",
            requires = "file",
            conflicts_with = "anchors"
        )]
        extends: Option<PathBuf>,
        /// Fail (exit 1) unless signatures (the file's, or the anchors') are checked and valid.
        #[arg(long)]
        require_signature: bool,
        #[arg(long)]
        json: bool,
    },
    /// A Merkle proof (RFC 9162) against the anchors: that event SEQ is in an
    /// anchored tree, or with --consistency OLD NEW that the tree anchored at
    /// OLD is a prefix of the one anchored at NEW. --json for an auditor.
    Prove {
        /// The event's sequence number.
        #[arg(
            required_unless_present = "consistency",
            conflicts_with = "consistency"
        )]
        seq: Option<i64>,
        /// The anchor to prove against, named by the seq it anchors (default: the newest).
        #[arg(long, value_name = "N")]
        anchor: Option<i64>,
        /// Two anchored seqs, older first.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], conflicts_with = "anchor")]
        consistency: Option<Vec<i64>>,
        #[arg(long)]
        json: bool,
    },
}
