//! The PostgreSQL schema: versioned migrations, applied once under an
//! advisory lock (replicas starting together migrate once) and recorded in
//! `schema_migrations`.
//!
//! Migration 1 is the whole schema of SQLite's migrations 1–8 at once (a
//! PostgreSQL database starts empty, there is no history to replay). Later
//! changes append a migration here, like `sqlite.rs`'s list. Times are
//! stored as SQLite stores them, RFC 3339 text with milliseconds and `Z`
//! ([`super::fmt_time`]), so both backends order and compare them the same
//! way; sealed secrets are `BYTEA`.

/// The migrations, in order; version n is `MIGRATIONS[n - 1]`.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's migrations 1-8.
    r#"
    CREATE TABLE domains (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL
    );
    INSERT INTO domains (id, name, created_at)
        VALUES (replace(gen_random_uuid()::text, '-', ''), 'default',
                to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    CREATE TABLE projects (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        -- the unfiltered server count of the project in O(1) (triggers)
        server_count BIGINT NOT NULL DEFAULT 0,
        domain_id TEXT REFERENCES domains(id)
    );
    CREATE FUNCTION ecsd_projects_default_domain() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.domain_id IS NULL THEN
            NEW.domain_id := (SELECT id FROM domains WHERE name = 'default');
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER projects_default_domain BEFORE INSERT ON projects
        FOR EACH ROW EXECUTE FUNCTION ecsd_projects_default_domain();
    CREATE TABLE access_keys (
        ak TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        sk_sealed BYTEA NOT NULL,
        role TEXT NOT NULL,
        created_at TEXT NOT NULL,
        enabled BOOLEAN NOT NULL DEFAULT TRUE,
        auth_failures BIGINT NOT NULL DEFAULT 0,
        locked_until TEXT
    );
    CREATE TABLE servers (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        name TEXT NOT NULL,
        os_type TEXT NOT NULL,
        status TEXT NOT NULL,
        agent_public_key BYTEA,
        agent_credential_hash TEXT UNIQUE,
        machine_id TEXT,
        agent_version TEXT,
        agent_last_seen TEXT,
        boot_id TEXT,
        hostname TEXT,
        uptime_secs BIGINT,
        last_reset_id TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        task_state TEXT,
        addresses TEXT NOT NULL DEFAULT '[]',
        tags TEXT NOT NULL DEFAULT '[]',
        power_driver BOOLEAN NOT NULL DEFAULT FALSE,
        -- the server's work sequence: grows with every item stored for it
        work_seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX servers_project_name ON servers(project_id, name);
    CREATE INDEX servers_project_created ON servers(project_id, created_at DESC, id DESC);
    CREATE INDEX servers_project_status ON servers(project_id, status, created_at DESC, id DESC);
    CREATE INDEX servers_project_machine ON servers(project_id, machine_id) WHERE machine_id IS NOT NULL;
    CREATE FUNCTION ecsd_servers_count() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE projects SET server_count = server_count + 1 WHERE id = NEW.project_id;
        ELSE
            UPDATE projects SET server_count = server_count - 1 WHERE id = OLD.project_id;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER servers_count AFTER INSERT OR DELETE ON servers
        FOR EACH ROW EXECUTE FUNCTION ecsd_servers_count();
    CREATE TABLE resets (
        request_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        apply_now BOOLEAN NOT NULL,
        created_at TEXT NOT NULL,
        -- insertion order (SQLite's rowid): breaks ties of created_at
        row_no BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX resets_project_created ON resets(project_id, created_at);
    CREATE INDEX resets_created ON resets(created_at);
    CREATE TABLE reset_targets (
        request_id TEXT NOT NULL REFERENCES resets(request_id),
        server_id TEXT NOT NULL REFERENCES servers(id),
        position BIGINT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        sealed BYTEA,
        updated_at TEXT NOT NULL,
        seq BIGINT NOT NULL DEFAULT 0,
        row_no BIGINT GENERATED ALWAYS AS IDENTITY,
        PRIMARY KEY (request_id, server_id)
    );
    CREATE INDEX reset_targets_open ON reset_targets(server_id)
        WHERE state IN ('PENDING', 'DELIVERED');
    CREATE TABLE enroll_tokens (
        token_hash TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        expires_at TEXT NOT NULL,
        uses_left BIGINT NOT NULL,
        created_at TEXT NOT NULL,
        server_id TEXT REFERENCES servers(id)
    );
    CREATE TABLE audit (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at TEXT NOT NULL,
        request_id TEXT NOT NULL,
        project_id TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        servers TEXT NOT NULL,
        dry_run BOOLEAN NOT NULL,
        outcome TEXT NOT NULL,
        source TEXT NOT NULL,
        user_id TEXT,
        user_name TEXT,
        error_code TEXT,
        http_status INTEGER,
        rating TEXT NOT NULL DEFAULT 'normal'
    );
    CREATE INDEX audit_project_id ON audit(project_id, id DESC);
    CREATE INDEX audit_at ON audit(at);
    CREATE FUNCTION ecsd_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the audit trail is append-only';
    END $$;
    CREATE TRIGGER audit_append_only BEFORE UPDATE ON audit
        FOR EACH ROW EXECUTE FUNCTION ecsd_audit_append_only();
    CREATE TABLE jobs (
        job_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL REFERENCES projects(id),
        kind TEXT NOT NULL,
        hard BOOLEAN NOT NULL,
        begin_time TEXT NOT NULL
    );
    CREATE INDEX jobs_begin ON jobs(begin_time);
    CREATE TABLE sub_jobs (
        sub_job_id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(job_id),
        server_id TEXT NOT NULL REFERENCES servers(id),
        position BIGINT NOT NULL,
        status TEXT NOT NULL,
        error_code TEXT,
        fail_reason TEXT,
        boot_id_at_start TEXT,
        begin_time TEXT NOT NULL,
        end_time TEXT,
        seq BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX sub_jobs_job ON sub_jobs(job_id, position);
    CREATE INDEX sub_jobs_open ON sub_jobs(server_id, begin_time) WHERE status IN ('INIT', 'RUNNING');
    CREATE TABLE work_keys (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        public_key TEXT NOT NULL UNIQUE,
        secret_sealed BYTEA NOT NULL,
        endorsed_by TEXT,
        signature TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE rekey_challenges (
        challenge_id TEXT PRIMARY KEY,
        server_id TEXT NOT NULL REFERENCES servers(id),
        answer_hash TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        row_no BIGINT GENERATED ALWAYS AS IDENTITY
    );
    CREATE INDEX rekey_challenges_server ON rekey_challenges(server_id, row_no);
    CREATE TABLE users (
        id TEXT PRIMARY KEY,
        domain_id TEXT NOT NULL REFERENCES domains(id),
        name TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        enabled BOOLEAN NOT NULL,
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
        revoked BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX tokens_user ON tokens(user_id);
    CREATE TABLE temporary_credentials (
        ak TEXT PRIMARY KEY,
        sk_sealed BYTEA NOT NULL,
        security_token_hash TEXT NOT NULL,
        user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        project_id TEXT NOT NULL REFERENCES projects(id),
        expires_at TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX temporary_credentials_user ON temporary_credentials(user_id);
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
    -- Bumped by every change of the five tables above (by any replica or
    -- `ecsd admin`), so a replica knows when its compiled policies are stale.
    CREATE TABLE iam_version (n BIGINT NOT NULL);
    INSERT INTO iam_version (n) VALUES (0);
    CREATE FUNCTION ecsd_iam_version_bump() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE iam_version SET n = n + 1;
        RETURN NULL;
    END $$;
    CREATE TRIGGER iam_groups_version AFTER INSERT OR UPDATE OR DELETE ON iam_groups
        FOR EACH ROW EXECUTE FUNCTION ecsd_iam_version_bump();
    CREATE TRIGGER iam_group_members_version AFTER INSERT OR UPDATE OR DELETE ON iam_group_members
        FOR EACH ROW EXECUTE FUNCTION ecsd_iam_version_bump();
    CREATE TRIGGER iam_policies_version AFTER INSERT OR UPDATE OR DELETE ON iam_policies
        FOR EACH ROW EXECUTE FUNCTION ecsd_iam_version_bump();
    CREATE TRIGGER iam_group_grants_version AFTER INSERT OR UPDATE OR DELETE ON iam_group_grants
        FOR EACH ROW EXECUTE FUNCTION ecsd_iam_version_bump();
    CREATE TRIGGER iam_key_users_version AFTER INSERT OR UPDATE OR DELETE ON iam_key_users
        FOR EACH ROW EXECUTE FUNCTION ecsd_iam_version_bump();
    "#,
    // 2: the `name` filter (`LIKE '%...%'`) served by a pg_trgm GIN index,
    // when the extension is installed or this role may install it (in
    // `public`, once per database); else the filter keeps scanning.
    r#"
    DO $$
    DECLARE ext_schema text;
    BEGIN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public;
        EXCEPTION WHEN OTHERS THEN
            RAISE NOTICE 'pg_trgm is not available (%): the name filter scans', SQLERRM;
        END;
        SELECT n.nspname INTO ext_schema
            FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
            WHERE e.extname = 'pg_trgm';
        IF ext_schema IS NOT NULL THEN
            EXECUTE format(
                'CREATE INDEX servers_name_trgm ON servers USING gin (name %I.gin_trgm_ops)',
                ext_schema);
        END IF;
    END $$;
    "#,
    // 3: the listing generation of a project (as SQLite's migration 10):
    // bumped whenever one of its servers is created, deleted or changes a
    // column the listing filters or sorts by, so that `offset` pages are
    // served as keyset pages while it stays the same (page_starts.rs).
    r#"
    ALTER TABLE projects ADD COLUMN list_gen BIGINT NOT NULL DEFAULT 0;
    CREATE FUNCTION ecsd_servers_list_gen() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            UPDATE projects SET list_gen = list_gen + 1 WHERE id = NEW.project_id;
        ELSIF TG_OP = 'DELETE' THEN
            UPDATE projects SET list_gen = list_gen + 1 WHERE id = OLD.project_id;
        ELSIF (OLD.id, OLD.project_id, OLD.created_at, OLD.name, OLD.status, OLD.addresses, OLD.tags)
              IS DISTINCT FROM
              (NEW.id, NEW.project_id, NEW.created_at, NEW.name, NEW.status, NEW.addresses, NEW.tags) THEN
            UPDATE projects SET list_gen = list_gen + 1 WHERE id IN (OLD.project_id, NEW.project_id);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER servers_list_gen AFTER INSERT OR DELETE OR UPDATE ON servers
        FOR EACH ROW EXECUTE FUNCTION ecsd_servers_list_gen();
    "#,
    // 4: escrow (issue 15): SQLite's migration 11 (sqlite_escrow.rs).
    r#"
    CREATE TABLE escrow_recipients (
        project_id TEXT NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        recipient TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (project_id, id),
        UNIQUE (project_id, recipient)
    );
    CREATE TABLE escrow_versions (
        server_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        project_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        blob BYTEA NOT NULL,
        final_state TEXT,
        PRIMARY KEY (server_id, version)
    );
    CREATE INDEX escrow_versions_request ON escrow_versions(request_id);
    CREATE INDEX escrow_versions_project ON escrow_versions(project_id, server_id);
    CREATE TABLE escrow_retrievals (
        server_id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        retrieved_at TEXT NOT NULL
    );
    CREATE TABLE rotation_policies (
        id TEXT PRIMARY KEY,
        project_id TEXT NOT NULL,
        name TEXT NOT NULL,
        spec TEXT NOT NULL,
        created_at TEXT NOT NULL,
        last_run TEXT,
        UNIQUE (project_id, name)
    );
    "#,
];

/// Applies the pending migrations on `client`, holding a session advisory
/// lock per schema so that concurrent starters wait and then find nothing
/// left to do. Returns the schema version.
pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<usize, MigrateError> {
    // One key per (database, schema): tests migrate many schemas at once.
    const LOCK: &str = "SELECT pg_advisory_lock(hashtext('ecsd schema migrations'), \
                        hashtext(coalesce(current_schema(), '')))";
    const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('ecsd schema migrations'), \
                          hashtext(coalesce(current_schema(), '')))";
    let schema: Option<String> = client
        .query_one("SELECT current_schema()", &[])
        .await?
        .get(0);
    if schema.is_none() {
        return Err(MigrateError::NoSchema);
    }
    client.execute(LOCK, &[]).await?;
    let result = apply(client).await;
    // The lock also ends with the session; unlock anyway (the connection may
    // be kept by a caller).
    let unlocked = client.execute(UNLOCK, &[]).await;
    let v = result?;
    unlocked?;
    Ok(v)
}

async fn apply(client: &mut tokio_postgres::Client) -> Result<usize, MigrateError> {
    // Under the lock: no other starter creates it meanwhile (and no
    // "already exists" notice in the log).
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE schema_migrations (\
                    version BIGINT PRIMARY KEY, \
                    applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
    }
    let current: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    let current = current as usize;
    if current > MIGRATIONS.len() {
        return Err(MigrateError::Newer {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = (i + 1) as i64;
        let tx = client.transaction().await?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| MigrateError::Step(version, e))?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
    }
    Ok(MIGRATIONS.len())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(
        "no schema to create tables in: the search_path names no existing schema \
         (create it, or fix options=-csearch_path=... in the URL)"
    )]
    NoSchema,
    #[error(
        "the database's schema is at version {found}, newer than this ecsd knows ({known}): \
         run a newer ecsd"
    )]
    Newer { found: usize, known: usize },
    #[error("migration {0} failed")]
    Step(i64, #[source] tokio_postgres::Error),
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
}
