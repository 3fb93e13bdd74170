//! The embedded store: one SQLite file in WAL mode with versioned migrations.
//!
//! One connection writes and one reads (WAL lets them run side by side); the
//! blocking calls run on tokio's blocking pool, but for key lookups, which run
//! on the calling task when the reader is free (`read_point`).
//! `synchronous=FULL` makes every commit durable. The agent side's writes
//! (acknowledgements, heartbeats, deliveries) are group-committed on the
//! same writer connection (`sqlite_group.rs`); only a batch of heartbeats
//! that change nothing but the time commits with `synchronous=NORMAL`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use ecs_policy::OsType;
use rusqlite::{Connection, OptionalExtension, Row, params};
use rusqlite_migration::{M, Migrations};

use super::page_starts::{PageOf, PageStarts, RowKey, Start};
use super::sqlite_group::GroupWriter;
use super::*;
use crate::domain::{self, Entity, PowerState, reasons, server as server_rules};

const MIGRATIONS: &[&str] = &[
    // 1: projects, keys, servers, resets, audit
    r#"
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    CREATE TABLE access_keys (
        ak TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        sk_sealed BLOB NOT NULL,
        role TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        os_type TEXT NOT NULL,
        status TEXT NOT NULL,
        agent_public_key BLOB,
        agent_credential_hash TEXT UNIQUE,
        machine_id TEXT,
        agent_version TEXT,
        agent_last_seen TEXT,
        boot_id TEXT,
        hostname TEXT,
        uptime_secs INTEGER,
        last_reset_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX servers_project_name ON servers(project_id, name);
    CREATE UNIQUE INDEX servers_project_machine ON servers(project_id, machine_id)
        WHERE machine_id IS NOT NULL;
    CREATE TABLE resets (
        request_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        apply_now INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX resets_project_created ON resets(project_id, created_at);
    CREATE TABLE reset_targets (
        request_id TEXT NOT NULL REFERENCES resets(request_id),
        server_id TEXT NOT NULL REFERENCES servers(id),
        position INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        sealed BLOB,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (request_id, server_id)
    );
    CREATE INDEX reset_targets_open ON reset_targets(server_id)
        WHERE state IN ('PENDING', 'DELIVERED');
    CREATE TABLE enroll_tokens (
        token_hash TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        expires_at TEXT NOT NULL,
        uses_left INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        request_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        servers TEXT NOT NULL,
        dry_run INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        source TEXT NOT NULL
    );
    "#,
    // 2: server details, power jobs
    r#"
    ALTER TABLE servers ADD COLUMN task_state TEXT;
    ALTER TABLE servers ADD COLUMN addresses TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE servers ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE servers ADD COLUMN power_driver INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX servers_project_created ON servers(project_id, created_at DESC, id DESC);
    CREATE INDEX servers_project_status ON servers(project_id, status, created_at DESC, id DESC);
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        kind TEXT NOT NULL,
        hard INTEGER NOT NULL,
        begin_time TEXT NOT NULL
    );
    CREATE TABLE sub_jobs (
        sub_job_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        server_id TEXT NOT NULL REFERENCES servers(id),
        position INTEGER NOT NULL,
        status TEXT NOT NULL,
        error_code TEXT,
        fail_reason TEXT,
        boot_id_at_start TEXT,
        begin_time TEXT NOT NULL,
        end_time TEXT
    );
    CREATE INDEX sub_jobs_job ON sub_jobs(job_id, position);
    CREATE INDEX sub_jobs_open ON sub_jobs(server_id, begin_time) WHERE status IN ('INIT', 'RUNNING');
    "#,
    // 3: the unfiltered server count of a project in O(1)
    r#"
    ALTER TABLE projects ADD COLUMN server_count INTEGER NOT NULL DEFAULT 0;
    UPDATE projects SET server_count = (SELECT COUNT(*) FROM servers WHERE servers.project_id = projects.id);
    CREATE TRIGGER servers_count_insert AFTER INSERT ON servers BEGIN
        UPDATE projects SET server_count = server_count + 1 WHERE id = NEW.project_id;
    END;
    CREATE TRIGGER servers_count_delete AFTER DELETE ON servers BEGIN
        UPDATE projects SET server_count = server_count - 1 WHERE id = OLD.project_id;
    END;
    "#,
    // 4: trust on the wire: per-server work sequence numbers, work-signing
    // keys, re-key tokens and challenges; a machine id no longer names one
    // server (a clone with another key becomes a new server).
    r#"
    ALTER TABLE servers ADD COLUMN work_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE reset_targets ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sub_jobs ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE enroll_tokens ADD COLUMN server_id TEXT REFERENCES servers(id);
    DROP INDEX servers_project_machine;
    CREATE INDEX servers_project_machine ON servers(project_id, machine_id) WHERE machine_id IS NOT NULL;
    CREATE TABLE work_keys (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        public_key TEXT NOT NULL UNIQUE,
        secret_sealed BLOB NOT NULL,
        endorsed_by TEXT,
        signature TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE rekey_challenges (
        challenge_id TEXT PRIMARY KEY,
        server_id TEXT NOT NULL REFERENCES servers(id),
        answer_hash TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    "#,
    // 5: identity (issue #10): domains (every project in one; existing and
    // new projects without another go to "default"), IAM users, their role
    // per project, tokens and temporary AK/SK (only hashes and sealed SKs).
    r#"
    CREATE TABLE domains (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    INSERT INTO domains (id, name, created_at)
        VALUES (lower(hex(randomblob(16))), 'default', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
    ALTER TABLE projects ADD COLUMN domain_id TEXT REFERENCES domains(id);
    UPDATE projects SET domain_id = (SELECT id FROM domains WHERE name = 'default');
    CREATE TRIGGER projects_default_domain AFTER INSERT ON projects WHEN NEW.domain_id IS NULL BEGIN
        UPDATE projects SET domain_id = (SELECT id FROM domains WHERE name = 'default') WHERE id = NEW.id;
    END;
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL REFERENCES domains(id),
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (domain_id, name)
    );
    CREATE TABLE user_roles (
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        role TEXT NOT NULL,
        PRIMARY KEY (user_id, project_id)
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        issued_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE temporary_credentials (
        ak TEXT PRIMARY KEY,
        sk_sealed BLOB NOT NULL,
        security_token_hash TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX temporary_credentials_user ON temporary_credentials(user_id);
    "#,
    // 6 (authz; 5 is identity's): IAM user groups and members (user ids are
    // opaque here), custom policies, grants (a system role or a custom policy
    // attached to a group in a project), access keys bound to a user, and a
    // version number every change of these bumps (triggers).
    r#"
    CREATE TABLE iam_groups (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (domain_id, name)
    );
    CREATE TABLE iam_group_members (
        group_id TEXT NOT NULL REFERENCES iam_groups(id) ON DELETE CASCADE,
        user_id TEXT NOT NULL,
        PRIMARY KEY (group_id, user_id)
    );
    CREATE INDEX iam_group_members_user ON iam_group_members(user_id, group_id);
    CREATE TABLE iam_policies (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        document TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (domain_id, name)
    );
    CREATE TABLE iam_group_grants (
        group_id TEXT NOT NULL REFERENCES iam_groups(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        grant_ref TEXT NOT NULL,
        PRIMARY KEY (group_id, project_id, grant_ref)
    );
    CREATE INDEX iam_group_grants_policy ON iam_group_grants(grant_ref);
    CREATE TABLE iam_key_users (
        ak TEXT PRIMARY KEY REFERENCES access_keys(ak) ON DELETE CASCADE,
        user_id TEXT NOT NULL
    );
    -- Bumped by every change above (also by `ecsd admin` in another process),
    -- so a replica knows when its compiled policies are stale.
    CREATE TABLE iam_version (n INTEGER NOT NULL);
    INSERT INTO iam_version (n) VALUES (0);
    CREATE TRIGGER iam_groups_insert_version AFTER INSERT ON iam_groups BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_groups_update_version AFTER UPDATE ON iam_groups BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_groups_delete_version AFTER DELETE ON iam_groups BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_members_insert_version AFTER INSERT ON iam_group_members BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_members_update_version AFTER UPDATE ON iam_group_members BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_members_delete_version AFTER DELETE ON iam_group_members BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_policies_insert_version AFTER INSERT ON iam_policies BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_policies_update_version AFTER UPDATE ON iam_policies BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_policies_delete_version AFTER DELETE ON iam_policies BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_grants_insert_version AFTER INSERT ON iam_group_grants BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_grants_update_version AFTER UPDATE ON iam_group_grants BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_group_grants_delete_version AFTER DELETE ON iam_group_grants BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_key_users_insert_version AFTER INSERT ON iam_key_users BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_key_users_update_version AFTER UPDATE ON iam_key_users BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    CREATE TRIGGER iam_key_users_delete_version AFTER DELETE ON iam_key_users BEGIN
        UPDATE iam_version SET n = n + 1;
    END;
    "#,
    // 7: lifecycle: access key status and lockout, audit traces.
    super::sqlite_lifecycle::MIGRATION,
    // 8: retention of finished resets and jobs.
    super::sqlite_lifecycle::RETENTION_MIGRATION,
    // 9: the `name` filter (a substring, as Huawei's) served by a trigram
    // index instead of a scan: an external-content FTS5 table over
    // servers.name, kept by triggers (rebuilt after a VACUUM, which may
    // renumber rowids).
    r#"
    CREATE VIRTUAL TABLE servers_name_fts USING fts5(
        name, content = 'servers', content_rowid = 'rowid', tokenize = 'trigram'
    );
    INSERT INTO servers_name_fts(servers_name_fts) VALUES ('rebuild');
    CREATE TRIGGER servers_name_fts_insert AFTER INSERT ON servers BEGIN
        INSERT INTO servers_name_fts(rowid, name) VALUES (new.rowid, new.name);
    END;
    CREATE TRIGGER servers_name_fts_delete AFTER DELETE ON servers BEGIN
        INSERT INTO servers_name_fts(servers_name_fts, rowid, name) VALUES ('delete', old.rowid, old.name);
    END;
    CREATE TRIGGER servers_name_fts_update AFTER UPDATE OF name ON servers BEGIN
        INSERT INTO servers_name_fts(servers_name_fts, rowid, name) VALUES ('delete', old.rowid, old.name);
        INSERT INTO servers_name_fts(rowid, name) VALUES (new.rowid, new.name);
    END;
    "#,
    // 10: the listing generation of a project, bumped whenever one of its
    // servers is created, deleted or changes a column the listing filters
    // or sorts by: page starts remembered under one generation serve
    // `offset` pages as keyset pages until it changes (page_starts.rs).
    r#"
    ALTER TABLE projects ADD COLUMN list_gen INTEGER NOT NULL DEFAULT 0;
    CREATE TRIGGER servers_list_gen_insert AFTER INSERT ON servers BEGIN
        UPDATE projects SET list_gen = list_gen + 1 WHERE id = NEW.project_id;
    END;
    CREATE TRIGGER servers_list_gen_delete AFTER DELETE ON servers BEGIN
        UPDATE projects SET list_gen = list_gen + 1 WHERE id = OLD.project_id;
    END;
    CREATE TRIGGER servers_list_gen_update
    AFTER UPDATE OF id, project_id, created_at, name, status, addresses, tags ON servers
    WHEN OLD.id IS NOT NEW.id OR OLD.project_id IS NOT NEW.project_id
        OR OLD.created_at IS NOT NEW.created_at OR OLD.name IS NOT NEW.name
        OR OLD.status IS NOT NEW.status OR OLD.addresses IS NOT NEW.addresses
        OR OLD.tags IS NOT NEW.tags
    BEGIN
        UPDATE projects SET list_gen = list_gen + 1 WHERE id IN (OLD.project_id, NEW.project_id);
    END;
    "#, // 11: escrow (issue 15): recipients, escrowed versions, retrievals,
    // rotation policies.
    super::sqlite_escrow::MIGRATION,
    // 12: a server's work sequence and last reset in a narrow table of their
    // own (issue 13): a batch of 1000 resets rewrote the 1000 wide server
    // rows, about 120 of the ~300 WAL pages its commit wrote and synced;
    // 1000 rows here fill about 20. `servers.work_seq` and
    // `servers.last_reset_id` are no longer read or written.
    r#"
    CREATE TABLE server_work (
        server_id TEXT PRIMARY KEY REFERENCES servers(id),
        work_seq INTEGER NOT NULL,
        last_reset_id TEXT
    ) WITHOUT ROWID;
    INSERT INTO server_work (server_id, work_seq, last_reset_id)
        SELECT id, work_seq, last_reset_id FROM servers
        WHERE work_seq > 0 OR last_reset_id IS NOT NULL;
    "#,
];

/// A backend error as the domain's: a failure of the disk (see
/// [`disk_failure`]) is `Unavailable` (503, retry later), anything else
/// `Storage` (500).
pub(super) fn backend(e: impl Into<domain::error::BoxError>) -> StoreError {
    let e = e.into();
    let e = match e.downcast::<rusqlite::Error>() {
        Ok(e) => return StoreError::from(*e),
        Err(e) => e,
    };
    match e.downcast::<std::io::Error>() {
        Ok(io) if io_disk_failure(&io) => StoreError::unavailable(io),
        Ok(io) => StoreError::storage(io),
        Err(e) => StoreError::Storage(e),
    }
}

/// SQLite's codes for "the disk, not the data": SQLITE_FULL (no space),
/// SQLITE_IOERR (a read or write failed), SQLITE_READONLY (a read-only file
/// or file system), SQLITE_CANTOPEN (the file or its -wal/-shm cannot be
/// opened). The transaction was rolled back; the connection stays usable.
pub(super) fn disk_failure(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(C::DiskFull | C::SystemIoFailure | C::ReadOnly | C::CannotOpen)
    )
}

fn io_disk_failure(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::StorageFull | K::ReadOnlyFilesystem | K::QuotaExceeded
    ) || e.raw_os_error() == Some(5) // EIO
}

/// SQLITE_NOTADB or SQLITE_CORRUPT: the file is not (or no longer) a
/// whole SQLite database.
pub(super) fn corrupt(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(C::NotADatabase | C::DatabaseCorrupt)
    )
}

/// The database file (or its file system) cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("the file or its file system is read-only")]
pub struct ReadOnlyDatabase;

/// Why the database at `path` could not be opened, for the operator: the
/// file, the cause and what to do, in one paragraph (`ecsd serve` and
/// `ecsd admin` print it and exit 1).
pub fn explain_open_error(path: &Path, e: &StoreError) -> String {
    let p = path.display();
    let mut cause = None;
    let mut readonly = false;
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        if let Some(r) = s.downcast_ref::<rusqlite::Error>() {
            cause = Some(r);
        }
        readonly |= s.is::<ReadOnlyDatabase>();
        next = s.source();
    }
    let detail = match e {
        StoreError::Storage(s) | StoreError::Unavailable(s) => s.to_string(),
        e => e.chain(),
    };
    use rusqlite::ErrorCode as C;
    let code = cause.and_then(rusqlite::Error::sqlite_error_code);
    if readonly || matches!(code, Some(C::ReadOnly | C::CannotOpen)) {
        format!(
            "cannot write the database {p} ({detail}). ecsd writes its database and creates \
             {p}-wal and {p}-shm beside it: make the file and its directory writable by the \
             user ecsd runs as (chown, chmod u+rw) on a file system mounted read-write, then \
             start ecsd again."
        )
    } else if matches!(code, Some(C::NotADatabase | C::DatabaseCorrupt)) {
        format!(
            "the database {p} is damaged or is not an SQLite database ({detail}). Do not delete \
             it: stop every ecsd using it, restore the last backup (docs/operations.md, \
             \"Backups\") and start ecsd again; to start with an empty database instead, move \
             {p} and any {p}-wal and {p}-shm aside."
        )
    } else if matches!(e, StoreError::Unavailable(_)) {
        format!(
            "cannot open the database {p} ({detail}): the disk is full or failing. Free space \
             on its file system (or check the disk and the kernel log), then start ecsd again."
        )
    } else {
        format!("cannot open the database {p}: {}", e.chain())
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if disk_failure(&e) {
            StoreError::unavailable(e)
        } else {
            StoreError::storage(e)
        }
    }
}

fn parse_status(s: &str) -> StoreResult<ServerStatus> {
    s.parse().map_err(backend)
}

fn parse_kind(s: &str) -> StoreResult<PowerKind> {
    PowerKind::parse(s).ok_or_else(|| backend(format!("bad job kind {s:?}")))
}

/// Writes a server's new status and task state.
/// A server's oldest power action not yet taken: (sub job, kind, hard, work
/// sequence, the server's status).
type QueuedPower = (String, String, bool, i64, String);

/// A server's oldest queued power action. Every agent poll asks this. The
/// `status IN ('INIT', 'RUNNING')` term repeats the partial index
/// `sub_jobs_open`'s condition word for word: SQLite uses a partial index
/// only when the query's WHERE contains its condition, and without it this
/// scanned every sub-job ever made (test `agent_path_queries_use_indexes`).
const NEXT_POWER: &str = "SELECT s.sub_job_id, j.kind, j.hard, s.seq, v.status FROM sub_jobs s \
     JOIN jobs j ON j.job_id = s.job_id JOIN servers v ON v.id = s.server_id \
     WHERE s.server_id = ?1 AND s.status IN ('INIT', 'RUNNING') AND s.status = 'INIT' \
     ORDER BY s.begin_time LIMIT 1";

/// A server's power actions under way (asked when its heartbeat shows it
/// back from a restart); the index condition repeated as in [`NEXT_POWER`].
const RUNNING_POWER: &str = "SELECT s.sub_job_id, j.kind, s.boot_id_at_start FROM sub_jobs s \
     JOIN jobs j ON j.job_id = s.job_id \
     WHERE s.server_id = ?1 AND s.status IN ('INIT', 'RUNNING') AND s.status = 'RUNNING'";

fn next_power(c: &Connection, server_id: &str) -> rusqlite::Result<Option<QueuedPower>> {
    c.prepare_cached(NEXT_POWER)?
        .query_row([server_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .optional()
}

/// A server's newest open reset target with its sealed password, and the
/// target's state.
struct OpenWork {
    work: Work,
    state: ResetState,
}

fn next_work(c: &Connection, server_id: &str) -> StoreResult<Option<OpenWork>> {
    let row = c
        .prepare_cached(
            "SELECT t.request_id, t.sealed, r.apply_now, t.state, t.seq FROM reset_targets t \
             JOIN resets r ON r.request_id = t.request_id \
             WHERE t.server_id = ?1 AND t.state IN ('PENDING', 'DELIVERED') AND t.sealed IS NOT NULL \
             ORDER BY r.created_at DESC, t.rowid DESC LIMIT 1",
        )?
        .query_row([server_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, bool>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .optional()?;
    let Some((request_id, sealed, apply_now, state, seq)) = row else {
        return Ok(None);
    };
    Ok(Some(OpenWork {
        work: Work {
            request_id,
            sealed,
            apply_now,
            seq: seq as u64,
        },
        state: state.parse().map_err(backend)?,
    }))
}

fn set_power_state(tx: &Connection, id: &str, st: PowerState, nows: &str) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE servers SET status = ?2, task_state = ?3, updated_at = ?4 WHERE id = ?1",
    )?
    .execute(params![
        id,
        st.status.as_str(),
        st.task_state.map(|t| t.as_str()),
        nows
    ])?;
    Ok(())
}

/// Writes how a sub-job ended.
fn end_sub_job(
    tx: &Connection,
    sub_job_id: &str,
    end: &domain::SubJobEnd,
    nows: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE sub_jobs SET status = ?2, error_code = ?3, fail_reason = ?4, end_time = ?5 \
         WHERE sub_job_id = ?1",
    )?
    .execute(params![
        sub_job_id,
        end.status.as_str(),
        end.error_code,
        end.fail_reason,
        nows
    ])?;
    Ok(())
}

/// Gives an enrolled server a new agent key and credential. Open resets were
/// sealed to the old key: they can never be opened now, so they fail.
fn rekey_server_tx(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    e: &Enrollment,
    nows: &str,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE servers SET agent_public_key = ?2, agent_credential_hash = ?3, hostname = ?4, \
         os_type = ?5, agent_version = ?6, machine_id = ?7, updated_at = ?8 WHERE id = ?1",
        params![
            id,
            e.public_key,
            e.credential_hash,
            e.hostname,
            e.os_type.as_str(),
            e.agent_version,
            e.machine_id,
            nows
        ],
    )?;
    tx.execute(
        "UPDATE reset_targets SET state = ?3, sealed = NULL, updated_at = ?2, reason = ?4 \
         WHERE server_id = ?1 AND state IN ('PENDING', 'DELIVERED')",
        params![id, nows, ResetState::Failed.as_str(), reasons::REKEYED],
    )?;
    Ok(())
}

/// The next work sequence number of server ?2, now carrying reset ?1 (the
/// contract's per-server sequence that only grows; migration 12).
const NEXT_RESET_SEQ: &str = "INSERT INTO server_work (server_id, work_seq, last_reset_id) \
     VALUES (?2, 1, ?1) ON CONFLICT (server_id) DO UPDATE \
     SET work_seq = work_seq + 1, last_reset_id = excluded.last_reset_id RETURNING work_seq";

/// The next work sequence number of server ?1, for a power action.
const NEXT_POWER_SEQ: &str = "INSERT INTO server_work (server_id, work_seq) VALUES (?1, 1) \
     ON CONFLICT (server_id) DO UPDATE SET work_seq = work_seq + 1 RETURNING work_seq";

/// Read connections: one per core, two to four.
fn reader_count() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4))
}

#[derive(Clone)]
pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    /// Read connections (WAL: they read in parallel, with the writer too):
    /// one per core, at least two, so that lookups of concurrent requests
    /// do not queue behind one connection.
    readers: Arc<[Mutex<Connection>]>,
    /// Where the next `read` that finds every reader busy waits.
    next_reader: Arc<std::sync::atomic::AtomicUsize>,
    /// Where `offset` pages start, while the listing stays the same.
    page_starts: Arc<PageStarts>,
    /// The agent side's writes, group-committed on `writer` (sqlite_group.rs).
    group: GroupWriter,
}

/// Pages written to the WAL before it is checkpointed (4 MiB at 4 KiB pages).
pub const WAL_AUTOCHECKPOINT: i64 = 1000;
/// Bytes the WAL file is truncated to after a checkpoint.
pub const JOURNAL_SIZE_LIMIT: i64 = 4 * 1024 * 1024;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The WAL is checkpointed every WAL_AUTOCHECKPOINT pages (SQLite's
    // default, set explicitly) and, after a checkpoint, truncated back to
    // JOURNAL_SIZE_LIMIT bytes: without the limit the file stays at its
    // high-water mark forever.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT)?;
    conn.pragma_update(None, "journal_size_limit", JOURNAL_SIZE_LIMIT)?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it to the
    /// latest schema version.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            // A directory ecsd creates is its own: 0700.
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir).map_err(backend)?;
        }
        if !path.exists() {
            // Created readable by its owner only (and so are its -wal and
            // -shm files, which SQLite creates with the database's mode).
            let mut o = std::fs::OpenOptions::new();
            o.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
            o.open(path).map_err(backend)?;
        }
        let mut writer = Connection::open(path)?;
        // Pages freed by the retention rounds go back to the file system
        // (`reclaim_pages`). Set only on a new (empty) database, the only
        // time it can be (setting it again on an existing one would write);
        // an older database keeps auto_vacuum NONE until `ecsd admin
        // vacuum` converts it once (docs/operations.md).
        let pages: i64 = writer.pragma_query_value(None, "page_count", |r| r.get(0))?;
        if pages == 0 {
            writer.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        writer.pragma_update(None, "journal_mode", "WAL")?;
        configure(&writer)?;
        // SQLite opens a file it may not write read-only, without an error;
        // ecsd must write, so it says so now rather than at the first reset.
        if writer.is_readonly(rusqlite::MAIN_DB)? {
            return Err(StoreError::unavailable(ReadOnlyDatabase));
        }
        Self::migrations()
            .to_latest(&mut writer)
            .map_err(|e| match e {
                rusqlite_migration::Error::RusqliteError { err, .. }
                    if disk_failure(&err) || corrupt(&err) =>
                {
                    StoreError::from(err)
                }
                e => backend(format!("migrating the schema: {e:?}")),
            })?;
        let auto_vacuum: i64 = writer.pragma_query_value(None, "auto_vacuum", |r| r.get(0))?;
        if auto_vacuum != 2 {
            tracing::warn!(
                db = %path.display(),
                "the database file does not shrink after pruning (auto_vacuum is off: it was made \
                 before ecsd set it); stop ecsd and run `ecsd admin vacuum` once"
            );
        }
        let readers = (0..reader_count())
            .map(|_| {
                let reader = Connection::open(path)?;
                configure(&reader)?;
                Ok(Mutex::new(reader))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let writer = Arc::new(Mutex::new(writer));
        let group = GroupWriter::start(writer.clone()).map_err(backend)?;
        Ok(SqliteStore {
            writer,
            readers: readers.into(),
            next_reader: Arc::default(),
            page_starts: Arc::new(PageStarts::default()),
            group,
        })
    }

    fn migrations() -> Migrations<'static> {
        Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
    }

    /// The schema version of an open database.
    pub fn schema_version(&self) -> StoreResult<usize> {
        let conn = self.writer.lock().expect("store lock");
        Ok(conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize)
    }

    /// What the group writer committed so far (tests, benchmarks).
    pub fn group_counts(&self) -> &super::sqlite_group::Counts {
        &self.group.counts
    }

    pub fn latest_schema_version() -> usize {
        MIGRATIONS.len()
    }

    pub(super) async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let conn = self.writer.clone();
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || f(&mut conn.lock().expect("store lock")))
            .await
            .map_err(backend)?;
        crate::metrics::store_call("write", started.elapsed());
        r
    }

    /// A lookup by key (microseconds of SQLite work on cached pages) run on
    /// the calling task when the reader connection is free; when it is
    /// busy, on a blocking thread as [`Self::read`]. Handing a lookup to a
    /// blocking thread costs two thread wake-ups (about four context
    /// switches): a reset's four lookups were most of its 21 context
    /// switches, each dearer after idleness (docs/benchmarks.md, issue 13).
    /// Only for bounded work: a listing still goes through `read`.
    pub(super) async fn read_point<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        if let Some(conn) = self.readers.iter().find_map(|r| r.try_lock().ok()) {
            let started = std::time::Instant::now();
            let r = f(&conn);
            drop(conn);
            crate::metrics::store_call("read", started.elapsed());
            return r;
        }
        self.read(f).await
    }

    pub(super) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (readers, next) = (self.readers.clone(), self.next_reader.clone());
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || {
            // A free reader if there is one; else wait for one, in turn.
            let conn = match readers.iter().find_map(|r| r.try_lock().ok()) {
                Some(c) => c,
                None => {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    readers[i % readers.len()].lock().expect("store lock")
                }
            };
            f(&conn)
        })
        .await
        .map_err(backend)?;
        crate::metrics::store_call("read", started.elapsed());
        r
    }

    /// The writer's half of taking a power action: looks again (a poll of
    /// the same agent may have taken it) and marks it RUNNING.
    async fn take_power_now(
        &self,
        id: String,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<PowerWork>> {
        self.group.write(None, move |tx| {
            let Some((sub, kind, hard, seq, status)) = next_power(tx, &id)? else {
                return Ok(None);
            };
            let kind = parse_kind(&kind)?;
            let nows = fmt_time(now);
            tx.execute(
                "UPDATE sub_jobs SET status = ?3, boot_id_at_start = (SELECT boot_id FROM servers WHERE id = ?2) \
                 WHERE sub_job_id = ?1",
                params![sub, id, JobStatus::Running.as_str()],
            )?;
            let st = server_rules::power_taken(parse_status(&status)?, kind, hard);
            set_power_state(tx, &id, st, &nows)?;
            Ok(Some(PowerWork { sub_job_id: sub, kind, hard, seq: seq as u64 }))
        })
        .await
    }

    /// Takes the open reset a reader's look (`seen`) found: none; a target
    /// already DELIVERED (an agent asking again after a restart), which
    /// needs no write; or a PENDING one, which the writer delivers.
    async fn deliver(
        &self,
        id: String,
        seen: Option<OpenWork>,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Work>> {
        match seen {
            None => Ok(None),
            Some(w) if domain::reset::delivered(w.state).is_none() => Ok(Some(w.work)),
            Some(_) => self.take_work_now(id, now).await,
        }
    }

    /// The writer's half of taking a reset: looks again and marks a
    /// PENDING target DELIVERED.
    async fn take_work_now(&self, id: String, now: DateTime<Utc>) -> StoreResult<Option<Work>> {
        self.group.write(None, move |tx| {
            let Some(OpenWork { work, state }) = next_work(tx, &id)? else {
                return Ok(None);
            };
            if let Some(next) = domain::reset::delivered(state) {
                tx.prepare_cached(
                    "UPDATE reset_targets SET state = ?4, updated_at = ?3 WHERE request_id = ?1 AND server_id = ?2",
                )?
                .execute(params![work.request_id, id, fmt_time(now), next.as_str()])?;
            }
            Ok(Some(work))
        })
        .await
    }
}

const SERVER_COLS: &str = "s.id, s.project_id, s.name, s.os_type, s.status, s.agent_public_key, \
    s.agent_version, s.agent_last_seen, s.boot_id, s.hostname, s.created_at, s.updated_at, \
    (SELECT w.last_reset_id FROM server_work w WHERE w.server_id = s.id), \
    (SELECT t.state FROM server_work w JOIN reset_targets t ON t.request_id = w.last_reset_id AND t.server_id = w.server_id \
     WHERE w.server_id = s.id), \
    s.task_state, s.addresses, s.tags, s.power_driver";

pub(super) fn opt_time(v: Option<String>) -> StoreResult<Option<DateTime<Utc>>> {
    v.as_deref().map(parse_time).transpose()
}

fn server_from_row(r: &Row<'_>) -> StoreResult<Server> {
    let os: String = r.get(3)?;
    let last_id: Option<String> = r.get(12)?;
    let last_state: Option<String> = r.get(13)?;
    Ok(Server {
        id: r.get(0)?,
        project_id: r.get(1)?,
        name: r.get(2)?,
        os_type: OsType::parse(&os).ok_or_else(|| backend(format!("bad os_type {os}")))?,
        status: parse_status(&r.get::<_, String>(4)?)?,
        agent_public_key: r.get(5)?,
        agent_version: r.get(6)?,
        agent_last_seen: opt_time(r.get(7)?)?,
        boot_id: r.get(8)?,
        hostname: r.get(9)?,
        created: parse_time(&r.get::<_, String>(10)?)?,
        updated: parse_time(&r.get::<_, String>(11)?)?,
        last_reset: match (
            last_id,
            last_state
                .as_deref()
                .and_then(|s| s.parse::<ResetState>().ok()),
        ) {
            (Some(id), Some(state)) => Some((id, state)),
            _ => None,
        },
        task_state: r.get(14)?,
        addresses: serde_json::from_str(&r.get::<_, String>(15)?).map_err(backend)?,
        tags: serde_json::from_str(&r.get::<_, String>(16)?).map_err(backend)?,
        power_driver: r.get(17)?,
    })
}

/// The FTS5 query for servers whose name contains `name`: one quoted
/// phrase of its trigrams (its `"` doubled); `None` below three characters,
/// which a trigram index cannot serve.
fn trigram_phrase(name: &str) -> Option<String> {
    (name.chars().count() >= 3).then(|| format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

pub(super) fn project_from_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

pub(super) fn to_project((id, name, created): (String, String, String)) -> StoreResult<Project> {
    Ok(Project {
        id,
        name,
        created: parse_time(&created)?,
    })
}

fn insert_audit(conn: &Connection, e: &AuditEntry) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO audit (at, request_id, project_id, actor, action, servers, dry_run, outcome, source, \
         user_id, user_name, error_code, http_status, rating) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        fmt_time(e.at),
        e.request_id,
        e.project_id,
        e.actor,
        e.action,
        serde_json::to_string(&e.servers).map_err(backend)?,
        e.dry_run,
        e.outcome,
        e.source,
        e.user_id,
        e.user_name,
        e.error_code,
        e.http_status,
        super::lifecycle::TraceRating::of(e.error_code.as_deref(), e.http_status).as_str()
    ])?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    async fn create_project(&self, name: &str) -> StoreResult<Project> {
        let project = Project {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_owned(),
            created: Utc::now(),
        };
        let p = project.clone();
        self.write(move |c| {
            c.execute(
                "INSERT INTO projects (id, name, created_at) VALUES (?1, ?2, ?3)",
                params![p.id, p.name, fmt_time(p.created)],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    StoreError::Conflict(format!("a project named {:?} exists", p.name))
                }
                e => backend(e),
            })?;
            Ok(())
        })
        .await?;
        Ok(project)
    }

    async fn project_by_name(&self, name: &str) -> StoreResult<Option<Project>> {
        let name = name.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, created_at FROM projects WHERE name = ?1",
                [name],
                project_from_row,
            )
            .optional()?
            .map(to_project)
            .transpose()
        })
        .await
    }

    async fn project(&self, id: &str) -> StoreResult<Option<Project>> {
        let id = id.to_owned();
        self.read(move |c| {
            c.query_row(
                "SELECT id, name, created_at FROM projects WHERE id = ?1",
                [id],
                project_from_row,
            )
            .optional()?
            .map(to_project)
            .transpose()
        })
        .await
    }

    async fn create_access_key(&self, key: AccessKey) -> StoreResult<()> {
        self.write(move |c| {
            c.execute(
                "INSERT INTO access_keys (ak, project_id, sk_sealed, role, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.ak, key.project_id, key.sk_sealed, key.role.as_str(), fmt_time(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    async fn register_server(&self, s: NewServer) -> StoreResult<Server> {
        let id = s.id.clone();
        let project = s.project_id.clone();
        self.write(move |c| {
            let now = fmt_time(Utc::now());
            c.execute(
                "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?7, ?5, ?6, ?6)",
                params![s.id, s.project_id, s.name, s.os_type.as_str(), s.agent_public_key, now,
                        ServerStatus::Active.as_str()],
            )?;
            Ok(())
        })
        .await?;
        self.server(&project, &id)
            .await?
            .ok_or_else(|| StoreError::server_not_found(&id))
    }

    async fn create_enroll_token(
        &self,
        project_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
        uses: u32,
    ) -> StoreResult<()> {
        let (p, h) = (project_id.to_owned(), token_hash.to_owned());
        self.write(move |c| {
            c.execute(
                "INSERT INTO enroll_tokens (token_hash, project_id, expires_at, uses_left, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![h, p, fmt_time(expires), uses, fmt_time(Utc::now())],
            )?;
            Ok(())
        })
        .await
    }

    async fn access_key(&self, ak: &str) -> StoreResult<Option<AccessKey>> {
        let ak = ak.to_owned();
        self.read_point(move |c| {
            let row = c
                .prepare_cached(
                    "SELECT ak, project_id, sk_sealed, role FROM access_keys WHERE ak = ?1",
                )?
                .query_row([ak], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?))
                })
                .optional()?;
            row.map(|(ak, project_id, sk_sealed, role)| {
                Ok(AccessKey {
                    ak,
                    project_id,
                    sk_sealed,
                    role: Role::parse(&role).ok_or_else(|| backend("bad role"))?,
                })
            })
            .transpose()
        })
        .await
    }

    async fn servers_by_ids(&self, ids: &[String]) -> StoreResult<Vec<Server>> {
        let few = ids.len() <= 16;
        let ids = ids.to_vec();
        let lookup = move |c: &Connection| {
            let mut out = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let sql = format!("SELECT {SERVER_COLS} FROM servers s WHERE s.id IN ({marks})");
                let mut stmt = c.prepare_cached(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(chunk))?;
                while let Some(r) = rows.next()? {
                    out.push(server_from_row(r)?);
                }
            }
            Ok(out)
        };
        // A few servers are a lookup; a thousand are not.
        if few {
            self.read_point(lookup).await
        } else {
            self.read(lookup).await
        }
    }

    async fn server(&self, project_id: &str, id: &str) -> StoreResult<Option<Server>> {
        let (p, id) = (project_id.to_owned(), id.to_owned());
        self.read_point(move |c| {
            let sql = format!(
                "SELECT {SERVER_COLS} FROM servers s WHERE s.id = ?1 AND s.project_id = ?2"
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(params![id, p])?;
            rows.next()?.map(server_from_row).transpose()
        })
        .await
    }

    async fn create_reset(&self, reset: NewReset) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let now = fmt_time(reset.created);
            tx.execute(
                "INSERT INTO resets (request_id, project_id, apply_now, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![reset.request_id, reset.project_id, reset.apply_now, now],
            )?;
            {
                let mut supersede = tx.prepare_cached(
                    "UPDATE reset_targets SET state = ?3, sealed = NULL, updated_at = ?2, reason = ?4 \
                     WHERE server_id = ?1 AND state IN ('PENDING', 'DELIVERED')",
                )?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO reset_targets (request_id, server_id, position, state, sealed, updated_at, seq) \
                     VALUES (?1, ?2, ?3, ?7, ?4, ?5, ?6)",
                )?;
                // The server's work sequence grows with every item stored for it.
                let mut point = tx.prepare_cached(NEXT_RESET_SEQ)?;
                for (pos, (server_id, sealed)) in reset.targets.iter().enumerate() {
                    supersede.execute(params![
                        server_id,
                        now,
                        ResetState::Superseded.as_str(),
                        reasons::SUPERSEDED
                    ])?;
                    let seq: i64 =
                        point.query_row(params![reset.request_id, server_id], |r| r.get(0))?;
                    insert.execute(params![
                        reset.request_id,
                        server_id,
                        pos as i64,
                        sealed,
                        now,
                        seq,
                        ResetState::Pending.as_str()
                    ])?;
                }
            }
            insert_audit(&tx, &reset.audit)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn reset_outcome(
        &self,
        project_id: &str,
        request_id: &str,
    ) -> StoreResult<Option<ResetOutcome>> {
        let (p, rid) = (project_id.to_owned(), request_id.to_owned());
        self.read(move |c| {
            let head = c
                .query_row(
                    "SELECT apply_now, created_at FROM resets WHERE request_id = ?1 AND project_id = ?2",
                    params![rid, p],
                    |r| Ok((r.get::<_, bool>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((apply_now, created)) = head else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT server_id, state, reason, updated_at FROM reset_targets WHERE request_id = ?1 ORDER BY position",
            )?;
            let mut rows = stmt.query([&rid])?;
            let mut targets = Vec::new();
            while let Some(r) = rows.next()? {
                let state: String = r.get(1)?;
                targets.push(TargetState {
                    server_id: r.get(0)?,
                    state: state.parse::<ResetState>().map_err(|_| backend("bad state"))?,
                    reason: r.get(2)?,
                    updated: parse_time(&r.get::<_, String>(3)?)?,
                });
            }
            Ok(Some(ResetOutcome {
                request_id: rid,
                project_id: p,
                apply_now,
                created: parse_time(&created)?,
                targets,
            }))
        })
        .await
    }

    async fn latest_reset_id(&self, project_id: &str) -> StoreResult<Option<String>> {
        let p = project_id.to_owned();
        self.read(move |c| {
            Ok(c.query_row(
                "SELECT request_id FROM resets WHERE project_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [p],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    async fn record_audit(&self, entry: AuditEntry) -> StoreResult<()> {
        self.write(move |c| insert_audit(c, &entry)).await
    }

    async fn enroll(
        &self,
        token_hash: &str,
        e: Enrollment,
        now: DateTime<Utc>,
        duplicate: DuplicateMachineId,
    ) -> StoreResult<EnrollResult> {
        let token_hash = token_hash.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            let nows = fmt_time(now);
            let token: Option<(String, Option<String>)> = tx
                .query_row(
                    "UPDATE enroll_tokens SET uses_left = uses_left - 1 \
                     WHERE token_hash = ?1 AND uses_left > 0 AND expires_at > ?2 RETURNING project_id, server_id",
                    params![token_hash, nows],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let Some((project_id, rekey_server)) = token else {
                return Ok(EnrollResult::BadToken);
            };
            let (server_id, re_enrolled) = match rekey_server {
                // A re-key token made by an admin for this one server.
                Some(id) => {
                    rekey_server_tx(&tx, &id, &e, &nows)?;
                    (id, true)
                }
                None => {
                    let existing: Option<String> = tx
                        .query_row(
                            "SELECT id FROM servers WHERE project_id = ?1 AND machine_id = ?2 LIMIT 1",
                            params![project_id, e.machine_id],
                            |r| r.get(0),
                        )
                        .optional()?;
                    if let (Some(server_id), DuplicateMachineId::Refuse) = (&existing, duplicate) {
                        // Nothing is written: the token keeps its use.
                        return Ok(EnrollResult::DuplicateMachine {
                            server_id: server_id.clone(),
                        });
                    }
                    let id = uuid::Uuid::new_v4().to_string();
                    tx.execute(
                        "INSERT INTO servers (id, project_id, name, os_type, status, agent_public_key, \
                         agent_credential_hash, machine_id, agent_version, hostname, created_at, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?10, ?5, ?6, ?7, ?8, ?3, ?9, ?9)",
                        params![id, project_id, e.hostname, e.os_type.as_str(), e.public_key,
                                e.credential_hash, e.machine_id, e.agent_version, nows,
                                ServerStatus::Active.as_str()],
                    )?;
                    (id, false)
                }
            };
            tx.commit()?;
            Ok(EnrollResult::Enrolled(Enrolled {
                server_id,
                project_id,
                re_enrolled,
            }))
        })
        .await
    }

    async fn rekey(
        &self,
        server_id: &str,
        e: Enrollment,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<Enrolled>> {
        let id = server_id.to_owned();
        self.write(move |c| {
            let tx = c.transaction()?;
            let project_id: Option<String> = tx
                .query_row("SELECT project_id FROM servers WHERE id = ?1", [&id], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(project_id) = project_id else {
                return Ok(None);
            };
            rekey_server_tx(&tx, &id, &e, &fmt_time(now))?;
            tx.commit()?;
            Ok(Some(Enrolled {
                server_id: id,
                project_id,
                re_enrolled: true,
            }))
        })
        .await
    }

    async fn create_rekey_token(
        &self,
        server_id: &str,
        token_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let (id, h) = (server_id.to_owned(), token_hash.to_owned());
        self.write(move |c| {
            let project: Option<String> = c
                .query_row("SELECT project_id FROM servers WHERE id = ?1", [&id], |r| r.get(0))
                .optional()?;
            let Some(project) = project else {
                return Ok(None);
            };
            c.execute(
                "INSERT INTO enroll_tokens (token_hash, project_id, expires_at, uses_left, server_id, created_at) \
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)",
                params![h, project, fmt_time(expires), id, fmt_time(Utc::now())],
            )?;
            Ok(Some(project))
        })
        .await
    }

    async fn create_rekey_challenge(
        &self,
        challenge_id: &str,
        server_id: &str,
        answer_hash: &str,
        expires: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (cid, sid, h) = (
            challenge_id.to_owned(),
            server_id.to_owned(),
            answer_hash.to_owned(),
        );
        self.write(move |c| {
            // Expired challenges go as new ones come.
            c.execute(
                "DELETE FROM rekey_challenges WHERE expires_at <= ?1",
                [fmt_time(Utc::now())],
            )?;
            c.execute(
                "INSERT INTO rekey_challenges (challenge_id, server_id, answer_hash, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![cid, sid, h, fmt_time(expires)],
            )?;
            // Unauthenticated callers can ask: keep at most 4 open per server.
            c.execute(
                "DELETE FROM rekey_challenges WHERE server_id = ?1 AND challenge_id NOT IN \
                 (SELECT challenge_id FROM rekey_challenges WHERE server_id = ?1 ORDER BY rowid DESC LIMIT 4)",
                [&sid],
            )?;
            Ok(())
        })
        .await
    }

    async fn take_rekey_challenge(
        &self,
        challenge_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<(String, String)>> {
        let cid = challenge_id.to_owned();
        self.write(move |c| {
            Ok(c.query_row(
                "DELETE FROM rekey_challenges WHERE challenge_id = ?1 AND expires_at > ?2 \
                 RETURNING server_id, answer_hash",
                params![cid, fmt_time(now)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
        })
        .await
    }

    async fn work_keys(&self) -> StoreResult<Vec<StoredWorkKey>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT public_key, secret_sealed, endorsed_by, signature, created_at FROM work_keys ORDER BY id",
            )?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(StoredWorkKey {
                    public_key: r.get(0)?,
                    secret_sealed: r.get(1)?,
                    endorsed_by: r.get(2)?,
                    signature: r.get(3)?,
                    created: parse_time(&r.get::<_, String>(4)?)?,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn add_work_key(&self, key: StoredWorkKey, first: bool) -> StoreResult<bool> {
        self.write(move |c| {
            let tx = c.transaction()?;
            if first {
                // Replicas starting together: only one first key.
                let n: i64 = tx.query_row("SELECT COUNT(*) FROM work_keys", [], |r| r.get(0))?;
                if n > 0 {
                    return Ok(false);
                }
            }
            tx.execute(
                "INSERT INTO work_keys (public_key, secret_sealed, endorsed_by, signature, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key.public_key, key.secret_sealed, key.endorsed_by, key.signature, fmt_time(key.created)],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn reset_accepted_at(&self, request_id: &str) -> StoreResult<Option<DateTime<Utc>>> {
        let rid = request_id.to_owned();
        self.read_point(move |c| {
            let t: Option<String> = c
                .prepare_cached("SELECT created_at FROM resets WHERE request_id = ?1")?
                .query_row([rid], |r| r.get(0))
                .optional()?;
            t.as_deref().map(parse_time).transpose()
        })
        .await
    }

    async fn agent_census(&self, stale_before: DateTime<Utc>) -> StoreResult<Vec<AgentCount>> {
        let cutoff = fmt_time(stale_before);
        self.read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT COALESCE(agent_version, 'unknown'), \
                        SUM(agent_last_seen IS NOT NULL AND agent_last_seen >= ?1), \
                        SUM(agent_last_seen IS NULL OR agent_last_seen < ?1) \
                 FROM servers WHERE agent_public_key IS NOT NULL OR agent_last_seen IS NOT NULL \
                 GROUP BY 1 ORDER BY 1",
            )?;
            let rows = stmt.query_map([cutoff], |r| {
                Ok(AgentCount {
                    version: r.get(0)?,
                    up: r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                    stale: r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn agent_server_id(&self, credential_hash: &str) -> StoreResult<Option<String>> {
        let h = credential_hash.to_owned();
        // Every agent call starts here: a lookup by a unique key, reading
        // the credential's index and the server's row only.
        self.read_point(move |c| {
            Ok(
                c.prepare_cached("SELECT id FROM servers WHERE agent_credential_hash = ?1")?
                    .query_row([h], |r| r.get(0))
                    .optional()?,
            )
        })
        .await
    }

    async fn heartbeat(
        &self,
        server_id: &str,
        hb: Heartbeat,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        let id = server_id.to_owned();
        let addresses = match &hb.address {
            Some(a) => serde_json::to_string(&[a]).map_err(backend)?,
            None => "[]".to_owned(),
        };
        // Before the batch: does this heartbeat change more than the time?
        let durable = {
            let (id, hb, addresses) = (id.clone(), hb.clone(), addresses.clone());
            Box::new(move |c: &Connection| {
                let row = c
                    .prepare_cached(
                        "SELECT status, boot_id, agent_version, addresses, power_driver FROM servers WHERE id = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row([&id], |r| {
                            Ok((
                                r.get::<_, String>(0)?,
                                r.get::<_, Option<String>>(1)?,
                                r.get::<_, Option<String>>(2)?,
                                r.get::<_, String>(3)?,
                                r.get::<_, bool>(4)?,
                            ))
                        })
                    });
                let Ok((status, boot, version, addrs, driver)) = row else {
                    return true;
                };
                let Ok(status) = parse_status(&status) else {
                    return true;
                };
                let same = version.as_deref() == Some(hb.agent_version.as_str())
                    && addrs == addresses
                    && driver == hb.power_driver;
                !server_rules::heartbeat_refreshes_only(status, boot.as_deref(), &hb.boot_id, same)
            }) as super::sqlite_group::Check
        };
        self.group.write(Some(durable), move |tx| {
            let nows = fmt_time(now);
            let (status, old_boot): (String, Option<String>) = tx
                .prepare_cached("SELECT status, boot_id FROM servers WHERE id = ?1")?
                .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let back = server_rules::heartbeat(parse_status(&status)?, old_boot.as_deref(), &hb.boot_id);
            tx.prepare_cached(
                "UPDATE servers SET agent_version = ?2, boot_id = ?3, uptime_secs = ?4, agent_last_seen = ?5, \
                 addresses = ?6, power_driver = ?7 WHERE id = ?1",
            )?
            .execute(params![id, hb.agent_version, hb.boot_id, hb.uptime_secs as i64, nows, addresses, hb.power_driver])?;
            if let Some(st) = back {
                set_power_state(tx, &id, st, &nows)?;
                let running: Vec<(String, String, Option<String>)> = {
                    let mut stmt = tx.prepare_cached(RUNNING_POWER)?;
                    stmt.query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()?
                };
                for (sub, kind, boot_at_start) in running {
                    if domain::job::completes_on_boot(parse_kind(&kind)?, boot_at_start.as_deref(), &hb.boot_id) {
                        end_sub_job(tx, &sub, &domain::SubJobEnd::success(), &nows)?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn list_servers(
        &self,
        project_id: &str,
        f: ListFilter,
        limit: u32,
        page: u32,
        marker: Option<String>,
    ) -> StoreResult<(Vec<Server>, u64)> {
        let project = project_id.to_owned();
        let page_starts = self.page_starts.clone();
        self.read(move |c| {
            // One snapshot: the count, the listing generation and the page.
            let c = c.unchecked_transaction()?;
            let mut clauses = vec!["s.project_id = ?".to_owned()];
            let mut args: Vec<rusqlite::types::Value> = vec![project.clone().into()];
            if let Some(ids) = &f.server_ids {
                let marks = vec!["?"; ids.len()].join(",");
                clauses.push(format!("s.id IN ({marks})"));
                args.extend(ids.iter().map(|i| i.clone().into()));
            } else {
                if let Some(n) = &f.name {
                    // Three characters or more: the trigram index finds the
                    // candidates (a superset: it folds case beyond ASCII),
                    // LIKE keeps the exact semantics. Shorter: a scan.
                    if let Some(phrase) = trigram_phrase(n) {
                        clauses.push(
                            "s.rowid IN (SELECT rowid FROM servers_name_fts WHERE servers_name_fts MATCH ?)"
                                .into(),
                        );
                        args.push(phrase.into());
                    }
                    clauses.push("s.name LIKE ? ESCAPE '\\'".into());
                    args.push(format!("%{}%", like_escape(n)).into());
                }
                if let Some(st) = &f.status {
                    match st.parse::<ServerStatus>() {
                        Ok(st) => {
                            clauses.push("s.status = ?".into());
                            args.push(st.as_str().to_owned().into());
                        }
                        // A status outside the contract matches no server.
                        Err(_) => clauses.push("0".into()),
                    }
                }
                if let Some(ip) = &f.ip {
                    clauses.push("s.addresses LIKE ? ESCAPE '\\'".into());
                    args.push(format!("%{}%", like_escape(ip)).into());
                }
                if let Some(ip) = &f.ip_eq {
                    clauses.push("s.addresses LIKE ? ESCAPE '\\'".into());
                    args.push(format!("%\"{}\"%", like_escape(ip)).into());
                }
                if let Some(t) = &f.tags {
                    clauses.push("s.tags LIKE ? ESCAPE '\\'".into());
                    args.push(format!("%\"{}\"%", like_escape(t)).into());
                }
                if let Some(t) = &f.not_tags {
                    clauses.push("s.tags NOT LIKE ? ESCAPE '\\'".into());
                    args.push(format!("%\"{}\"%", like_escape(t)).into());
                }
                if let Some(os) = &f.os_type {
                    match OsType::parse(os) {
                        Some(os) => {
                            clauses.push("s.os_type = ?".into());
                            args.push(os.as_str().to_owned().into());
                        }
                        None => clauses.push("0".into()),
                    }
                }
            }
            let filter_sql = clauses.join(" AND ");
            let (server_count, generation): (i64, i64) = c
                .prepare_cached("SELECT server_count, list_gen FROM projects WHERE id = ?1")?
                .query_row([&project], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?
                .unwrap_or((0, 0));
            let count: i64 = if clauses.len() == 1 {
                // No filter: the count kept by triggers.
                server_count
            } else {
                c.prepare_cached(&format!("SELECT COUNT(*) FROM servers s WHERE {filter_sql}"))?
                    .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))?
            };
            let mut page_clauses = clauses.clone();
            let mut page_args = args.clone();
            let mut offset = u64::from(page.max(1) - 1) * u64::from(limit);
            if let Some(m) = &marker {
                let created: Option<String> = c
                    .query_row("SELECT created_at FROM servers WHERE id = ?1 AND project_id = ?2", params![m, project], |r| r.get(0))
                    .optional()?;
                let created = created.ok_or_else(|| StoreError::NotFound {
                    entity: Entity::Marker,
                    id: m.clone(),
                })?;
                page_clauses.push("(s.created_at, s.id) < (?, ?)".into());
                page_args.push(created.into());
                page_args.push(m.clone().into());
                offset = 0;
            }
            let at = PageOf {
                project: &project,
                filter: &f,
                limit,
                page,
                generation,
            };
            if marker.is_none()
                && let Some(plan) = page_starts.plan(at)
            {
                // A page whose start (or a start before it) is known: keyset.
                let (op, key) = match plan.start {
                    Start::At(k) => ("<=", k),
                    Start::After(k) => ("<", k),
                };
                page_clauses.push(format!("(s.created_at, s.id) {op} (?, ?)"));
                page_args.push(key.created_at.into());
                page_args.push(key.id.into());
                offset = plan.skip;
            }
            page_args.push(i64::from(limit).into());
            page_args.push((offset as i64).into());
            let sql = format!(
                "SELECT {SERVER_COLS} FROM servers s WHERE {} ORDER BY s.created_at DESC, s.id DESC LIMIT ? OFFSET ?",
                page_clauses.join(" AND ")
            );
            let mut stmt = c.prepare_cached(&sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(page_args.iter()))?;
            let mut out = Vec::new();
            let mut keys = Vec::new();
            while let Some(r) = rows.next()? {
                let server = server_from_row(r)?;
                keys.push(RowKey {
                    created_at: r.get(10)?,
                    id: server.id.clone(),
                });
                out.push(server);
            }
            if marker.is_none() {
                let full = out.len() == limit as usize;
                let rows = keys.first().cloned().zip(keys.pop());
                page_starts.record(at, rows, full);
            }
            Ok((out, count as u64))
        })
        .await
    }

    async fn create_job(&self, job: NewJob) -> StoreResult<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut busy = tx.prepare_cached(
                    "SELECT 1 FROM sub_jobs WHERE server_id = ?1 AND status IN ('INIT', 'RUNNING') LIMIT 1",
                )?;
                let mut busy_ids = Vec::new();
                for (_, server, _) in &job.subs {
                    if busy.exists([server])? {
                        busy_ids.push(server.clone());
                    }
                }
                if !busy_ids.is_empty() {
                    return Err(StoreError::Busy { ids: busy_ids });
                }
            }
            let now = fmt_time(job.created);
            tx.execute(
                "INSERT INTO jobs (job_id, project_id, kind, hard, begin_time) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![job.job_id, job.project_id, job.kind.as_str(), job.hard, now],
            )?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO sub_jobs (sub_job_id, job_id, server_id, position, status, error_code, fail_reason, begin_time, end_time, seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                )?;
                let mut next_seq = tx.prepare_cached(NEXT_POWER_SEQ)?;
                for (pos, (sub, server, failed)) in job.subs.iter().enumerate() {
                    let (status, code, reason, end, seq) = match domain::job::created(job.kind, failed.as_deref()) {
                        Some(e) => (e.status, e.error_code, e.fail_reason, Some(now.clone()), 0),
                        None => (JobStatus::Init, None, None, None, next_seq.query_row([server], |r| r.get::<_, i64>(0))?),
                    };
                    insert.execute(params![sub, job.job_id, server, pos as i64, status.as_str(), code, reason, now, end, seq])?;
                }
            }
            insert_audit(&tx, &job.audit)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn job(&self, project_id: &str, job_id: &str) -> StoreResult<Option<Job>> {
        let (p, jid) = (project_id.to_owned(), job_id.to_owned());
        self.read(move |c| {
            let head = c
                .query_row(
                    "SELECT kind, begin_time FROM jobs WHERE job_id = ?1 AND project_id = ?2",
                    params![jid, p],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()?;
            let Some((kind, begin)) = head else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached(
                "SELECT sub_job_id, server_id, status, error_code, fail_reason, begin_time, end_time \
                 FROM sub_jobs WHERE job_id = ?1 ORDER BY position",
            )?;
            let mut rows = stmt.query([&jid])?;
            let mut subs = Vec::new();
            while let Some(r) = rows.next()? {
                subs.push(SubJob {
                    sub_job_id: r.get(0)?,
                    server_id: r.get(1)?,
                    status: r.get::<_, String>(2)?.parse().map_err(backend)?,
                    error_code: r.get(3)?,
                    fail_reason: r.get(4)?,
                    begin: parse_time(&r.get::<_, String>(5)?)?,
                    end: opt_time(r.get(6)?)?,
                });
            }
            Ok(Some(Job {
                job_id: jid,
                kind: parse_kind(&kind)?,
                begin: parse_time(&begin)?,
                subs,
            }))
        })
        .await
    }

    async fn expire_sub_jobs(
        &self,
        older_than: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> StoreResult<usize> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let nows = fmt_time(now);
            let cutoff = fmt_time(older_than);
            let expired: Vec<(String, String, String, String)> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT s.sub_job_id, s.server_id, j.kind, v.status FROM sub_jobs s \
                     JOIN jobs j ON j.job_id = s.job_id JOIN servers v ON v.id = s.server_id \
                     WHERE s.status IN ('INIT', 'RUNNING') AND s.begin_time < ?1",
                )?;
                stmt.query_map([&cutoff], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?
            };
            let n = expired.len();
            for (sub, server, kind, status) in expired {
                let (end, st) = server_rules::expired(parse_status(&status)?, parse_kind(&kind)?);
                end_sub_job(&tx, &sub, &end, &nows)?;
                // Servers stuck mid-action return to a plain state.
                set_power_state(&tx, &server, st, &nows)?;
            }
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn take_power(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<Option<PowerWork>> {
        let id = server_id.to_owned();
        // Almost every poll finds no power action: asked on the reader
        // first, so that an empty poll costs no turn of the writer (a thread
        // hand-off and a place in a commit). The writer asks again.
        let peek = id.clone();
        if self
            .read_point(move |c| Ok(next_power(c, &peek)?.is_none()))
            .await?
        {
            return Ok(None);
        }
        self.take_power_now(id, now).await
    }

    async fn take_next(
        &self,
        server_id: &str,
        now: DateTime<Utc>,
        power_only: bool,
    ) -> StoreResult<Option<super::NextWork>> {
        use super::NextWork;
        let id = server_id.to_owned();
        // One read for both questions (an empty poll, the common case,
        // costs one read transaction); a write only when there is
        // something to take.
        let peek = id.clone();
        let (power, seen) = self
            .read_point(move |c| {
                if next_power(c, &peek)?.is_some() {
                    return Ok((true, None));
                }
                Ok((
                    false,
                    if power_only {
                        None
                    } else {
                        next_work(c, &peek)?
                    },
                ))
            })
            .await?;
        if power {
            if let Some(p) = self.take_power_now(id.clone(), now).await? {
                return Ok(Some(NextWork::Power(p)));
            }
            // Taken meanwhile by another poll of the same agent.
            if power_only {
                return Ok(None);
            }
            return Ok(self.take_work(server_id, now).await?.map(NextWork::Reset));
        }
        Ok(self.deliver(id, seen, now).await?.map(NextWork::Reset))
    }

    async fn power_ack(
        &self,
        server_id: &str,
        sub_job_id: &str,
        ok: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (id, sub, reason) = (
            server_id.to_owned(),
            sub_job_id.to_owned(),
            reason.map(str::to_owned),
        );
        self.group
            .write(None, move |tx| {
                let found: Option<(String, String)> = tx
                .query_row(
                    "SELECT j.kind, v.status FROM sub_jobs s JOIN jobs j ON j.job_id = s.job_id \
                     JOIN servers v ON v.id = s.server_id \
                     WHERE s.sub_job_id = ?1 AND s.server_id = ?2 AND s.status = 'RUNNING'",
                    params![sub, id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
                let Some((kind, status)) = found else {
                    return Ok(false);
                };
                let nows = fmt_time(now);
                let effect = server_rules::power_acked(
                    parse_status(&status)?,
                    parse_kind(&kind)?,
                    ok,
                    reason.as_deref(),
                );
                if let Some(end) = &effect.sub_job {
                    end_sub_job(tx, &sub, end, &nows)?;
                }
                if let Some(st) = effect.server {
                    set_power_state(tx, &id, st, &nows)?;
                }
                // reboot and start complete when the server reports a new boot.
                Ok(true)
            })
            .await
    }

    async fn take_work(&self, server_id: &str, now: DateTime<Utc>) -> StoreResult<Option<Work>> {
        let id = server_id.to_owned();
        // Read first: nothing to take, or a target already DELIVERED (an
        // agent asking again after a restart), needs no write — only a
        // PENDING target's delivery does, and the writer then reads again.
        let peek = id.clone();
        let seen = self.read_point(move |c| next_work(c, &peek)).await?;
        self.deliver(id, seen, now).await
    }

    async fn ack(
        &self,
        server_id: &str,
        request_id: &str,
        applied: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let (id, rid, reason) = (
            server_id.to_owned(),
            request_id.to_owned(),
            reason.map(str::to_owned),
        );
        self.group.write(None, move |c| {
            let state = domain::reset::acknowledged(applied).as_str();
            let n = c
                .prepare_cached(
                    "UPDATE reset_targets SET state = ?3, reason = ?4, sealed = NULL, updated_at = ?5 \
                     WHERE request_id = ?1 AND server_id = ?2 AND state IN ('PENDING', 'DELIVERED')",
                )?
                .execute(params![rid, id, state, reason, fmt_time(now)])?;
            Ok(n == 1)
        })
        .await
    }
}

/// The store conformance suite on SQLite: one fresh database per check.
#[cfg(test)]
mod conformance {
    use super::SqliteStore;

    fn fresh() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).expect("open");
        (dir, store)
    }

    crate::store_conformance_tests!(fresh);

    #[tokio::test]
    async fn run_all_on_one_store() {
        let (_dir, store) = fresh();
        crate::store::conformance::run_all(&store).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn audit_entry(project: &str) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            request_id: "req".into(),
            project_id: project.into(),
            actor: "test".into(),
            action: "batch-reset-password".into(),
            servers: vec![],
            dry_run: false,
            outcome: "accepted".into(),
            source: "127.0.0.1".into(),
            user_id: None,
            user_name: None,
            error_code: None,
            http_status: None,
        }
    }
    /// The questions every agent poll and every returning server's
    /// heartbeat ask are answered from an index, not by reading every
    /// sub-job ever made: their cost must not grow with history.
    #[tokio::test]
    async fn agent_path_queries_use_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).unwrap();
        let plans = store
            .read_point(|c| {
                let plan = |sql: &str| -> rusqlite::Result<Vec<String>> {
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let rows = stmt.query_map(["s-1"], |r| r.get::<_, String>(3))?;
                    rows.collect()
                };
                Ok([NEXT_POWER, RUNNING_POWER]
                    .iter()
                    .map(|sql| plan(sql))
                    .collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await
            .unwrap();
        for plan in plans {
            assert!(
                plan.iter()
                    .any(|row| row.contains("USING INDEX sub_jobs_open")),
                "{plan:?}"
            );
            assert!(
                !plan.iter().any(|row| row.starts_with("SCAN")),
                "a scan in {plan:?}"
            );
        }
    }

    /// A poll that changes nothing — no power action queued, or a reset
    /// already DELIVERED asked for again (an agent's start-up check) — is
    /// answered from the reader without a turn of the group writer; only a
    /// PENDING target's delivery writes. The answers are the writer's.
    #[tokio::test]
    async fn polls_that_change_nothing_do_not_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).unwrap();
        let p = store.create_project("p").await.unwrap();
        let s = store
            .register_server(NewServer {
                id: "s-1".into(),
                project_id: p.id.clone(),
                name: "n1".into(),
                os_type: OsType::Linux,
                agent_public_key: Some(vec![7; 32]),
            })
            .await
            .unwrap();
        let writes = || store.group_counts().ops.load(Ordering::Relaxed);
        let before = writes();
        assert!(store.take_work(&s.id, Utc::now()).await.unwrap().is_none());
        assert!(store.take_power(&s.id, Utc::now()).await.unwrap().is_none());
        assert_eq!(writes(), before, "empty polls wrote");

        store
            .create_reset(NewReset {
                request_id: "r1".into(),
                project_id: p.id.clone(),
                apply_now: false,
                created: Utc::now(),
                targets: vec![(s.id.clone(), vec![1, 2, 3])],
                audit: audit_entry(&p.id),
            })
            .await
            .unwrap();
        let first = store.take_work(&s.id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(writes(), before + 1, "the delivery is written");
        let state = |store: &SqliteStore| {
            store
                .writer
                .lock()
                .unwrap()
                .query_row(
                    "SELECT state FROM reset_targets WHERE request_id = 'r1'",
                    [],
                    |r| r.get::<_, String>(0),
                )
                .unwrap()
        };
        assert_eq!(state(&store), "DELIVERED");
        let again = store.take_work(&s.id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(writes(), before + 1, "asking again wrote");
        assert_eq!(
            (again.request_id, again.sealed, again.seq, again.apply_now),
            (first.request_id, first.sealed, first.seq, first.apply_now)
        );
        assert!(store.take_power(&s.id, Utc::now()).await.unwrap().is_none());
        assert_eq!(writes(), before + 1);

        assert!(
            store
                .ack(&s.id, "r1", true, None, Utc::now())
                .await
                .unwrap()
        );
        assert_eq!(state(&store), "APPLIED");
        assert!(store.take_work(&s.id, Utc::now()).await.unwrap().is_none());
        assert_eq!(writes(), before + 2, "only the acknowledgement wrote");
    }

    /// Acknowledgements that arrive together share a transaction (far fewer
    /// commits than acknowledgements); each caller is answered only once its
    /// row is committed (another connection sees it at that moment); one
    /// failing write in the batch fails alone; and everything is in the
    /// file when it is opened again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_acknowledgements_are_group_committed() {
        const N: usize = 200;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecsd.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let p = store.create_project("p").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..N {
            let s = store
                .register_server(NewServer {
                    id: format!("s-{i:03}"),
                    project_id: p.id.clone(),
                    name: format!("n{i}"),
                    os_type: OsType::Linux,
                    agent_public_key: Some(vec![7; 32]),
                })
                .await
                .unwrap();
            ids.push(s.id);
        }
        store
            .create_reset(NewReset {
                request_id: "r1".into(),
                project_id: p.id.clone(),
                apply_now: true,
                created: Utc::now(),
                targets: ids.iter().map(|id| (id.clone(), vec![1, 2, 3])).collect(),
                audit: audit_entry(&p.id),
            })
            .await
            .unwrap();
        let before = store.group_counts().commits.load(Ordering::Relaxed);

        // Hold the writer (on a thread of its own) while the
        // acknowledgements queue, so that they arrive "together" however
        // fast this machine's fsync is.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (locked, is_locked) = std::sync::mpsc::channel();
        let writer = store.writer.clone();
        let holder = std::thread::spawn(move || {
            let _held = writer.lock().unwrap();
            locked.send(()).unwrap();
            released.recv().unwrap();
        });
        is_locked.recv().unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids.clone() {
            let (store, path) = (store.clone(), path.clone());
            tasks.spawn(async move {
                let recorded = store
                    .ack(&id, "r1", true, None, Utc::now())
                    .await
                    .expect("ack");
                // Answered: the row must be committed already.
                let other = Connection::open(&path).unwrap();
                let state: String = other
                    .query_row(
                        "SELECT state FROM reset_targets WHERE request_id = 'r1' AND server_id = ?1",
                        [&id],
                        |r| r.get(0),
                    )
                    .unwrap();
                (recorded, state)
            });
        }
        let unknown = {
            let store = store.clone();
            tokio::spawn(async move {
                let hb = Heartbeat {
                    agent_version: "1".into(),
                    boot_id: "b".into(),
                    uptime_secs: 1,
                    address: None,
                    power_driver: false,
                };
                store.heartbeat("no-such-server", hb, Utc::now()).await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        release.send(()).unwrap();
        holder.join().unwrap();
        while let Some(r) = tasks.join_next().await {
            let (recorded, state) = r.unwrap();
            assert!(recorded);
            assert_eq!(state, "APPLIED");
        }
        assert!(unknown.await.unwrap().is_err(), "no such server");
        let commits = store.group_counts().commits.load(Ordering::Relaxed) - before;
        assert!(commits <= 4, "{N} acknowledgements took {commits} commits");

        drop(store);
        let again = Connection::open(&path).unwrap();
        let applied: i64 = again
            .query_row(
                "SELECT COUNT(*) FROM reset_targets WHERE request_id = 'r1' AND state = 'APPLIED'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(applied, N as i64);
    }

    /// A write that panics fails alone: its caller gets an error, the
    /// group writer goes on with the next writes.
    #[tokio::test]
    async fn a_panicking_group_write_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).unwrap();
        let r = store
            .group
            .write(None, |_: &Connection| -> StoreResult<()> {
                panic!("a bug in a store write")
            })
            .await;
        assert!(r.is_err());
        store.create_project("p").await.unwrap();
        let n: i64 = store
            .group
            .write(None, |c: &Connection| {
                Ok(c.query_row("SELECT COUNT(*) FROM projects", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(n, 1);
    }

    /// A heartbeat that changes only the time is committed without an fsync
    /// (a light commit) and is still read back at once; one that changes the
    /// boot is committed durably.
    #[tokio::test]
    async fn time_only_heartbeats_are_light_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("ecsd.sqlite")).unwrap();
        let p = store.create_project("p").await.unwrap();
        let s = store
            .register_server(NewServer {
                id: "s".into(),
                project_id: p.id.clone(),
                name: "n".into(),
                os_type: OsType::Linux,
                agent_public_key: Some(vec![7; 32]),
            })
            .await
            .unwrap();
        let hb = |boot: &str| Heartbeat {
            agent_version: "1.0".into(),
            boot_id: boot.into(),
            uptime_secs: 10,
            address: Some("10.0.0.1".into()),
            power_driver: false,
        };
        let counts = store.group_counts();
        let light = || counts.light_commits.load(Ordering::Relaxed);
        let t1 = Utc::now();
        store.heartbeat(&s.id, hb("b1"), t1).await.unwrap();
        assert_eq!(light(), 0, "the first heartbeat changes the server");
        let t2 = t1 + chrono::Duration::seconds(60);
        store.heartbeat(&s.id, hb("b1"), t2).await.unwrap();
        assert_eq!(light(), 1, "the same boot again only refreshes the time");
        let seen = store.server(&p.id, &s.id).await.unwrap().unwrap();
        assert_eq!(seen.agent_last_seen.map(fmt_time), Some(fmt_time(t2)));
        store.heartbeat(&s.id, hb("b2"), t2).await.unwrap();
        assert_eq!(light(), 1, "a new boot is durable");
        let synchronous: i64 = store
            .writer
            .lock()
            .unwrap()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(synchronous, 2, "FULL again after a light commit");
    }

    /// The name filter is answered from the trigram index (the plan reads
    /// `servers_name_fts`), and the index follows deletions and a VACUUM.
    /// A store in a fresh file with one project "p" of `n` servers named
    /// `node-000`, `node-001`, …: (its directory, the file, the store, the
    /// project, the server ids in order).
    async fn store_with_nodes(
        n: usize,
    ) -> (
        tempfile::TempDir,
        std::path::PathBuf,
        SqliteStore,
        Project,
        Vec<String>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ecsd.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        let p = store.create_project("p").await.unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let s = store
                .register_server(NewServer {
                    id: uuid::Uuid::new_v4().to_string(),
                    project_id: p.id.clone(),
                    name: format!("node-{i:03}"),
                    os_type: ecs_policy::OsType::Linux,
                    agent_public_key: None,
                })
                .await
                .unwrap();
            ids.push(s.id);
        }
        (dir, path, store, p, ids)
    }

    /// Offset pages after a remembered start are keyset reads; any change a
    /// listing can see (a new, deleted, renamed, re-tagged server or a
    /// status change) voids the remembered starts, and what only refreshes
    /// a server (its agent's last-seen time) does not.
    #[tokio::test]
    async fn offset_pages_follow_the_listing_generation() {
        use crate::store::LifecycleStore;
        let (_dir, _path, store, p, ids) = store_with_nodes(30).await;
        let generation = || {
            let c = store.writer.lock().unwrap();
            c.query_row(
                "SELECT list_gen FROM projects WHERE id = ?1",
                [&p.id],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
        };
        let f = ListFilter::default();
        // Page 2 of 10.
        let at = |project, filter, generation| crate::store::page_starts::PageOf {
            project,
            filter,
            limit: 10,
            page: 2,
            generation,
        };
        let g0 = generation();
        assert_eq!(g0, 30, "one bump per server created");
        store
            .list_servers(&p.id, f.clone(), 10, 1, None)
            .await
            .unwrap();
        assert!(
            store.page_starts.plan(at(&p.id, &f, g0)).is_some(),
            "page 1 told where page 2 starts"
        );

        let exec = |sql: &str, id: &str| {
            store.writer.lock().unwrap().execute(sql, [id]).unwrap();
        };
        exec(
            "UPDATE servers SET agent_last_seen = '2030-01-01T00:00:00Z', updated_at = '2030-01-01T00:00:00Z' WHERE id = ?1",
            &ids[3],
        );
        exec("UPDATE servers SET status = status WHERE id = ?1", &ids[3]);
        assert_eq!(generation(), g0, "nothing a listing shows changed");
        let mut seen = g0;
        for sql in [
            "UPDATE servers SET status = 'SHUTOFF' WHERE id = ?1",
            "UPDATE servers SET name = 'renamed' WHERE id = ?1",
            "UPDATE servers SET tags = '[\"k=v\"]' WHERE id = ?1",
            "UPDATE servers SET addresses = '[\"10.9.9.9\"]' WHERE id = ?1",
        ] {
            exec(sql, &ids[4]);
            let g = generation();
            assert!(g > seen, "{sql} bumps the generation");
            seen = g;
        }
        store.deregister_server(&ids[5]).await.unwrap();
        assert!(generation() > seen, "a deletion bumps it");
        assert!(
            store
                .page_starts
                .plan(at(&p.id, &f, generation()))
                .is_none()
        );

        // Page 2, read after the change, is the listing's slice again.
        let (all, _) = store
            .list_servers(&p.id, f.clone(), 100, 1, None)
            .await
            .unwrap();
        let (page2, _) = store
            .list_servers(&p.id, f.clone(), 10, 2, None)
            .await
            .unwrap();
        let want: Vec<_> = all[10..20].iter().map(|s| &s.id).collect();
        assert_eq!(page2.iter().map(|s| &s.id).collect::<Vec<_>>(), want);
    }

    #[tokio::test]
    async fn the_name_filter_uses_the_trigram_index_and_it_survives_deletes_and_vacuum() {
        use crate::store::LifecycleStore;
        let (_dir, path, store, p, ids) = store_with_nodes(50).await;
        let find = |pattern: &'static str| {
            let store = &store;
            let pid = p.id.clone();
            async move {
                let f = ListFilter {
                    name: Some(pattern.into()),
                    ..Default::default()
                };
                let (v, n) = store.list_servers(&pid, f, 100, 1, None).await.unwrap();
                let mut names: Vec<String> = v.into_iter().map(|s| s.name).collect();
                names.sort();
                (names, n)
            }
        };
        assert_eq!(
            find("e-01").await.0,
            [
                "node-010", "node-011", "node-012", "node-013", "node-014", "node-015", "node-016",
                "node-017", "node-018", "node-019"
            ]
        );
        // Deleting servers (from the front: the VACUUM below may renumber
        // the rows behind them) keeps the index in step.
        for id in &ids[..15] {
            store.deregister_server(id).await.unwrap();
        }
        assert_eq!(
            find("e-01").await,
            (
                vec![
                    "node-015".to_owned(),
                    "node-016".into(),
                    "node-017".into(),
                    "node-018".into(),
                    "node-019".into()
                ],
                5
            )
        );
        store.vacuum().await.unwrap();
        assert_eq!(find("e-01").await.1, 5);
        assert_eq!(find("ode-04").await.1, 10);
        let c = rusqlite::Connection::open(&path).unwrap();
        // FTS5's own check of the index against the servers table (rank 1:
        // compare with the content); an error if they differ.
        c.execute(
            "INSERT INTO servers_name_fts(servers_name_fts, rank) VALUES ('integrity-check', 1)",
            [],
        )
        .unwrap();
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT s.id FROM servers s WHERE s.project_id = ?1 \
                 AND s.rowid IN (SELECT rowid FROM servers_name_fts WHERE servers_name_fts MATCH ?2) \
                 AND s.name LIKE ?3 ESCAPE '\\' ORDER BY s.created_at DESC, s.id DESC LIMIT 100",
            )
            .unwrap()
            .query_map(params![p.id, "\"e-01\"", "%e-01%"], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|l| l.contains("servers_name_fts VIRTUAL TABLE INDEX")),
            "{plan:?}"
        );
    }

    /// The open reset states as the SQL spells them.
    const OPEN_RESETS_SQL: &str = "('PENDING', 'DELIVERED')";
    /// The open sub-job states as the SQL spells them.
    const OPEN_SUB_JOBS_SQL: &str = "('INIT', 'RUNNING')";

    fn sql_list(names: impl Iterator<Item = &'static str>) -> String {
        let quoted: Vec<String> = names.map(|n| format!("'{n}'")).collect();
        format!("({})", quoted.join(", "))
    }

    #[test]
    fn the_open_states_in_sql_are_the_domains() {
        let resets = ResetState::ALL
            .iter()
            .filter(|s| domain::reset::is_open(**s))
            .map(|s| s.as_str());
        assert_eq!(OPEN_RESETS_SQL, sql_list(resets));
        let subs = JobStatus::ALL
            .iter()
            .rev()
            .filter(|s| domain::job::is_open(**s))
            .map(|s| s.as_str());
        assert_eq!(OPEN_SUB_JOBS_SQL, sql_list(subs));
        // Queries spell the open states out (so SQLite uses the partial
        // indexes `reset_targets_open` and `sub_jobs_open`): each must be the domain's.
        let src = include_str!("sqlite.rs");
        for (needle, open) in [
            ("state IN (", OPEN_RESETS_SQL),
            ("status IN (", OPEN_SUB_JOBS_SQL),
        ] {
            let mut n = 0;
            for (i, _) in src.match_indices(needle) {
                let rest = &src[i + needle.len() - 1..];
                if rest.starts_with("(\"") || rest.starts_with("({") {
                    continue; // this test's own text
                }
                assert!(rest.starts_with(open), "{}", &rest[..40.min(rest.len())]);
                n += 1;
            }
            assert!(n >= 2, "{needle}");
        }
    }

    /// Migration 12 carries each server's work sequence and last reset
    /// from its row to `server_work`; the sequence then goes on growing
    /// from where it was (an agent refuses work not newer than it applied).
    #[test]
    fn migration_12_carries_work_sequences_over_and_they_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        {
            let mut c = Connection::open(&path).unwrap();
            SqliteStore::migrations().to_version(&mut c, 11).unwrap();
            c.execute_batch(
                "INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', 't');
                 INSERT INTO servers (id, project_id, name, os_type, status, created_at, updated_at, work_seq, last_reset_id)
                     VALUES ('s1', 'p', 'a', 'Linux', 'ACTIVE', 't', 't', 7, 'r1'),
                            ('s2', 'p', 'b', 'Linux', 'ACTIVE', 't', 't', 0, NULL);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let c = store.writer.lock().unwrap();
        let rows: Vec<(String, i64, Option<String>)> = c
            .prepare(
                "SELECT server_id, work_seq, last_reset_id FROM server_work ORDER BY server_id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, vec![("s1".to_owned(), 7, Some("r1".to_owned()))]);
        let next = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> i64 {
            c.query_row(sql, p, |r| r.get(0)).unwrap()
        };
        assert_eq!(next(NEXT_RESET_SEQ, &[&"r2", &"s1"]), 8);
        assert_eq!(next(NEXT_POWER_SEQ, &[&"s1"]), 9);
        assert_eq!(next(NEXT_POWER_SEQ, &[&"s2"]), 1);
        assert_eq!(next(NEXT_RESET_SEQ, &[&"r3", &"s2"]), 2);
        let last: Option<String> = c
            .query_row(
                "SELECT last_reset_id FROM server_work WHERE server_id = 's1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(last.as_deref(), Some("r2"));
    }

    #[test]
    fn migrations_are_valid_and_reopening_is_idempotent() {
        SqliteStore::migrations()
            .validate()
            .expect("migrations are valid");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.schema_version().unwrap(),
            SqliteStore::latest_schema_version()
        );
        drop(store);
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(
            again.schema_version().unwrap(),
            SqliteStore::latest_schema_version()
        );
        let mode: String = again
            .writer
            .lock()
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
