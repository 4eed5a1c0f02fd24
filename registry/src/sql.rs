//! The registry on SQLite or PostgreSQL, through sqlx's `Any` driver: one schema and one set of
//! queries (numbered `$N` parameters, which both databases accept), with the differences kept
//! to connection setup and PostgreSQL's change notification.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row, Transaction};
use tokio::sync::watch;

use crate::{
    CounterRow, EvaluationRecord, Event, Heartbeat, KeyRecord, MAX_DESCRIPTION_BYTES, MAX_METRICS,
    MAX_WEIGHTS, Model, ModelRecord, NewKey, NewModel, NewScores, NewVersion, NodeRecord,
    NodeVersion, PlacementRow, RegistryError, Rewards, RolloutRecord, RolloutWrite, Score,
    Snapshot, Store, Version, VersionState, valid_name,
};

/// The PostgreSQL channel that carries new revisions between gateway processes.
const CHANNEL: &str = "switchyard_registry";

/// The PostgreSQL advisory lock whose holder drives rollouts.
const ROLLOUT_LEADER_LOCK: i64 = 0x5357_5952_4f4c_4c53; // "SWYROLLS"

/// A gateway's counters untouched this long belong to a gateway long gone (live gateways
/// rewrite theirs every minute).
const STALE_COUNTERS_MS: i64 = 24 * 3_600_000;

/// A leader's session idle this long is ended by the server, and its lock with it: a leader
/// whose host froze or lost the network gives way (it asks every 500 ms while it leads).
const LEADER_IDLE_SESSION: &str = "SET idle_session_timeout = '10s'";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    options: AnyConnectOptions,
    /// PostgreSQL: the connection that holds (or tries for) the rollout leader's lock, and
    /// whether it holds it.
    leader: tokio::sync::Mutex<Option<(sqlx::AnyConnection, bool)>>,
    revision: watch::Sender<i64>,
    listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for SqlStore {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.take() {
            listener.abort();
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn not_found_model(name: &str) -> RegistryError {
    RegistryError::NotFound(format!("unknown model '{name}'"))
}

/// A registry URL fit for a log or an error: the password of its user part and of a
/// `password=` query parameter replaced by `***`.
pub fn redacted(url: &str) -> String {
    let mut shown = url.to_owned();
    if let Some(scheme_end) = shown.find("://") {
        let rest = &shown[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            let start = scheme_end + 3 + colon + 1;
            shown.replace_range(start..scheme_end + 3 + at, "***");
        }
    }
    if let Some(query) = shown.find('?') {
        let (base, params) = shown.split_at(query + 1);
        let params: Vec<String> = params
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        shown = format!("{base}{}", params.join("&"));
    }
    shown
}

/// A JSON document kept per model, beside its versions.
#[derive(Clone, Copy)]
enum ModelDocument {
    Limits,
    Capture,
}

impl ModelDocument {
    /// Its table, what it is called (in errors and its event's payload), and its event.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ModelDocument::Limits => ("model_limits", "limits", "model.limits"),
            ModelDocument::Capture => ("model_capture", "capture", "model.capture"),
        }
    }
}

impl SqlStore {
    /// Opens (and creates, for SQLite) the registry at `url` — `sqlite://PATH` or
    /// `postgres://...` — and brings its schema up to date.
    pub async fn open(url: &str) -> Result<SqlStore, RegistryError> {
        sqlx::any::install_default_drivers();
        // What the errors say of the URL: never its password.
        let shown = redacted(url);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(RegistryError::Invalid(format!(
                "registry URL '{shown}' is neither sqlite://PATH nor postgres://..."
            )));
        };
        let connect_url = match backend {
            Backend::Sqlite => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = path.split('?').next().unwrap_or(path);
                if let Some(parent) = std::path::Path::new(path)
                    .parent()
                    .filter(|parent| !parent.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        RegistryError::Storage(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                format!("sqlite://{path}?mode=rwc")
            }
            Backend::Postgres => url.to_owned(),
        };
        let options: AnyConnectOptions = connect_url
            .parse()
            .map_err(|e| RegistryError::Invalid(format!("bad registry URL '{shown}': {e}")))?;
        let pool = AnyPoolOptions::new()
            // SQLite takes one writer at a time; one connection keeps writes in order without
            // busy retries. PostgreSQL serialises writers on the revision row.
            .max_connections(if backend == Backend::Sqlite { 1 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA synchronous = FULL").await?;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        connection.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .map_err(|e| {
                RegistryError::Storage(format!("cannot open the registry at {shown}: {e}"))
            })?;
        MIGRATOR.run(&pool).await?;
        let current: i64 = sqlx::query("SELECT revision FROM registry_state WHERE id = 1")
            .fetch_one(&pool)
            .await?
            .try_get("revision")?;
        let (revision, _) = watch::channel(current);
        let listener = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(spawn_listener(
                url.to_owned(),
                pool.clone(),
                revision.clone(),
            )),
        };
        Ok(SqlStore {
            pool,
            backend,
            options,
            leader: tokio::sync::Mutex::new(None),
            revision,
            listener,
        })
    }

    /// Selects the database's time in milliseconds since the epoch, as `now_ms`.
    fn now_ms_query(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => {
                "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS now_ms"
            }
            Backend::Postgres => {
                "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) AS now_ms"
            }
        }
    }

    /// Starts a write: the transaction, and the revision it will commit (the revision row is
    /// locked until then, so writes from every process line up).
    async fn begin_write(&self) -> Result<(Transaction<'static, sqlx::Any>, i64), RegistryError> {
        let mut tx = self.pool.begin().await?;
        let revision: i64 = sqlx::query(
            "UPDATE registry_state SET revision = revision + 1 WHERE id = 1 RETURNING revision",
        )
        .fetch_one(&mut *tx)
        .await?
        .try_get("revision")?;
        Ok((tx, revision))
    }

    /// Records the event and commits; readers learn the new revision.
    async fn finish_write(
        &self,
        mut tx: Transaction<'static, sqlx::Any>,
        revision: i64,
        actor: &str,
        action: &str,
        model: &str,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        sqlx::query(
            "INSERT INTO events (revision, actor, action, model, payload, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(revision)
        .bind(actor)
        .bind(action)
        .bind(model)
        .bind(payload.to_string())
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if self.backend == Backend::Postgres {
            // Delivered to every listener when the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(revision.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.revision.send_if_modified(|current| {
            let newer = revision > *current;
            if newer {
                *current = revision;
            }
            newer
        });
        tracing::info!(revision, actor, action, model, "registry change");
        Ok(revision)
    }

    /// Sets (or, with `None`, removes) one of a model's documents: a JSON object kept whole,
    /// which the gateway defines and checks.
    async fn set_model_document(
        &self,
        document: ModelDocument,
        actor: &str,
        model: &str,
        spec: Option<serde_json::Value>,
    ) -> Result<i64, RegistryError> {
        let (table, what, action) = document.names();
        if spec.as_ref().is_some_and(|spec| !spec.is_object()) {
            return Err(RegistryError::Invalid(format!(
                "a model's {what} must be a JSON object"
            )));
        }
        let (mut tx, revision) = self.begin_write().await?;
        Self::require_model(&mut tx, model).await?;
        sqlx::query(&format!("DELETE FROM {table} WHERE model = $1"))
            .bind(model)
            .execute(&mut *tx)
            .await?;
        if let Some(spec) = &spec {
            sqlx::query(&format!(
                "INSERT INTO {table} (model, spec) VALUES ($1, $2)"
            ))
            .bind(model)
            .bind(spec.to_string())
            .execute(&mut *tx)
            .await?;
        }
        let payload = serde_json::json!({ what: spec });
        self.finish_write(tx, revision, actor, action, model, payload)
            .await
    }

    async fn model_documents(
        &self,
        document: ModelDocument,
    ) -> Result<BTreeMap<String, serde_json::Value>, RegistryError> {
        let (table, ..) = document.names();
        let rows = sqlx::query(&format!("SELECT model, spec FROM {table} ORDER BY model"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("model")?, json_column(row, "spec")?)))
            .collect()
    }

    async fn require_model(
        tx: &mut Transaction<'static, sqlx::Any>,
        model: &str,
    ) -> Result<(), RegistryError> {
        let found = sqlx::query("SELECT name FROM models WHERE name = $1")
            .bind(model)
            .fetch_optional(&mut **tx)
            .await?;
        found.map(|_| ()).ok_or_else(|| not_found_model(model))
    }

    async fn read_version(
        executor: impl Executor<'_, Database = sqlx::Any>,
        model: &str,
        label: &str,
    ) -> Result<Version, RegistryError> {
        let row = sqlx::query(
            "SELECT model, label, runtime, artifact, config, metadata, state, state_reason, created_ms \
             FROM versions WHERE model = $1 AND label = $2",
        )
        .bind(model)
        .bind(label)
        .fetch_optional(executor)
        .await?;
        match row {
            Some(row) => version_from_row(&row),
            None => Err(RegistryError::NotFound(format!(
                "model '{model}' has no version '{label}'"
            ))),
        }
    }

    /// A version that a traffic weight or an alias may name: it exists and is not failed or
    /// being removed. Naming any other is the request's fault (Invalid).
    async fn require_live_version(
        tx: &mut Transaction<'static, sqlx::Any>,
        model: &str,
        label: &str,
        purpose: &str,
    ) -> Result<(), RegistryError> {
        let version = SqlStore::read_version(&mut **tx, model, label)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(message) => RegistryError::Invalid(message),
                other => other,
            })?;
        if !version.state.is_live() {
            return Err(RegistryError::Invalid(format!(
                "version '{label}' of model '{model}' is {} and cannot {purpose}",
                version.state
            )));
        }
        Ok(())
    }

    async fn read_record(
        tx: &mut Transaction<'static, sqlx::Any>,
        model: Model,
    ) -> Result<ModelRecord, RegistryError> {
        let mut versions: Vec<Version> = sqlx::query(
            "SELECT model, label, runtime, artifact, config, metadata, state, state_reason, created_ms \
             FROM versions WHERE model = $1",
        )
        .bind(&model.name)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(version_from_row)
        .collect::<Result<_, _>>()?;
        versions.sort_by(|a, b| compare_labels(&a.label, &b.label));
        let mut traffic = BTreeMap::new();
        for row in sqlx::query("SELECT version, weight FROM traffic WHERE model = $1")
            .bind(&model.name)
            .fetch_all(&mut **tx)
            .await?
        {
            let weight: i64 = row.try_get("weight")?;
            traffic.insert(row.try_get("version")?, weight.max(0) as u64);
        }
        let mut aliases = BTreeMap::new();
        for row in sqlx::query("SELECT alias, version FROM aliases WHERE model = $1")
            .bind(&model.name)
            .fetch_all(&mut **tx)
            .await?
        {
            aliases.insert(row.try_get("alias")?, row.try_get("version")?);
        }
        let policy: String = sqlx::query("SELECT policy FROM models WHERE name = $1")
            .bind(&model.name)
            .fetch_one(&mut **tx)
            .await?
            .try_get("policy")?;
        let policy = serde_json::from_str(&policy)
            .map_err(|e| RegistryError::Invalid(format!("stored policy: {e}")))?;
        let mut latest_scores: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
        // Ascending revisions: the last row of a (version, metric) is its latest score.
        for row in sqlx::query(
            "SELECT version, metric, value FROM scores WHERE model = $1 ORDER BY revision",
        )
        .bind(&model.name)
        .fetch_all(&mut **tx)
        .await?
        {
            latest_scores
                .entry(row.try_get("version")?)
                .or_default()
                .insert(row.try_get("metric")?, row.try_get("value")?);
        }
        let mut rewards = BTreeMap::new();
        for row in sqlx::query("SELECT version, successes, failures FROM rewards WHERE model = $1")
            .bind(&model.name)
            .fetch_all(&mut **tx)
            .await?
        {
            rewards.insert(
                row.try_get("version")?,
                Rewards {
                    successes: row.try_get("successes")?,
                    failures: row.try_get("failures")?,
                },
            );
        }
        Ok(ModelRecord {
            model,
            versions,
            traffic,
            aliases,
            policy,
            latest_scores,
            rewards,
        })
    }

    async fn read_models(
        executor: impl Executor<'_, Database = sqlx::Any>,
    ) -> Result<Vec<Model>, RegistryError> {
        sqlx::query("SELECT name, description, created_ms FROM models ORDER BY name")
            .fetch_all(executor)
            .await?
            .iter()
            .map(|row| {
                Ok(Model {
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    created_ms: row.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// A read transaction that sees one state of the whole registry.
    /// Replaces a model's weights; every weighted version must be live.
    async fn replace_traffic(
        tx: &mut Transaction<'static, sqlx::Any>,
        model: &str,
        weights: &BTreeMap<String, u64>,
    ) -> Result<(), RegistryError> {
        for label in weights.keys() {
            SqlStore::require_live_version(tx, model, label, "take traffic").await?;
        }
        sqlx::query("DELETE FROM traffic WHERE model = $1")
            .bind(model)
            .execute(&mut **tx)
            .await?;
        for (label, weight) in weights {
            sqlx::query("INSERT INTO traffic (model, version, weight) VALUES ($1, $2, $3)")
                .bind(model)
                .bind(label)
                .bind(*weight as i64)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn put_alias(
        tx: &mut Transaction<'static, sqlx::Any>,
        model: &str,
        alias: &str,
        label: &str,
    ) -> Result<(), RegistryError> {
        if !valid_name(alias) {
            return Err(RegistryError::Invalid(format!(
                "'{alias}' is not a valid alias"
            )));
        }
        if SqlStore::read_version(&mut **tx, model, alias)
            .await
            .is_ok()
        {
            return Err(RegistryError::Invalid(format!(
                "'{alias}' is a version label of model '{model}'; an alias needs another name"
            )));
        }
        SqlStore::require_live_version(tx, model, label, "be aliased").await?;
        sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(alias)
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO aliases (model, alias, version) VALUES ($1, $2, $3)")
            .bind(model)
            .bind(alias)
            .bind(label)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn begin_read(&self) -> Result<Transaction<'static, sqlx::Any>, RegistryError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }
}

/// Follows other processes' writes on PostgreSQL: LISTEN for new revisions, and read the
/// one-row revision now and then in case a notification was lost while reconnecting.
fn spawn_listener(
    url: String,
    pool: AnyPool,
    revision: watch::Sender<i64>,
) -> tokio::task::JoinHandle<()> {
    let advance = move |latest: i64| {
        revision.send_if_modified(|current| {
            let newer = latest > *current;
            if newer {
                *current = latest;
            }
            newer
        });
    };
    tokio::spawn(async move {
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect(&url).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for registry changes; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if let Err(error) = listener.listen(CHANNEL).await {
                tracing::warn!(%error, "cannot listen for registry changes; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let mut safety = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    notification = listener.recv() => match notification {
                        Ok(notification) => {
                            if let Ok(latest) = notification.payload().parse::<i64>() {
                                advance(latest);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(%error, "registry change listener lost its connection");
                            break;
                        }
                    },
                    _ = safety.tick() => {
                        let latest = sqlx::query("SELECT revision FROM registry_state WHERE id = 1")
                            .fetch_one(&pool)
                            .await
                            .and_then(|row| row.try_get::<i64, _>("revision"));
                        if let Ok(latest) = latest {
                            advance(latest);
                        }
                    }
                }
            }
        }
    })
}

fn key_from_row(row: &AnyRow) -> Result<KeyRecord, RegistryError> {
    Ok(KeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        digest: row.try_get("digest")?,
        prefix: row.try_get("prefix")?,
        spec: json_column(row, "spec")?,
        created_ms: row.try_get("created_ms")?,
        rotated_ms: row.try_get("rotated_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

/// The key `id`, within a write: `NotFound` if there is none, `Conflict` if it was revoked.
async fn live_key(
    tx: &mut Transaction<'static, sqlx::Any>,
    id: &str,
) -> Result<KeyRecord, RegistryError> {
    let row = sqlx::query(
        "SELECT id, name, digest, prefix, spec, created_ms, rotated_ms, revoked_ms \
         FROM api_keys WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| RegistryError::NotFound(format!("no key '{}'", id.escape_debug())))?;
    let record = key_from_row(&row)?;
    if record.revoked_ms.is_some() {
        return Err(RegistryError::Conflict(format!(
            "key '{}' is revoked",
            id.escape_debug()
        )));
    }
    Ok(record)
}

fn json_column(row: &AnyRow, column: &str) -> Result<serde_json::Value, RegistryError> {
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text)
        .map_err(|e| RegistryError::Storage(format!("column {column} holds bad JSON: {e}")))
}

fn evaluation_record(row: &AnyRow) -> Result<EvaluationRecord, RegistryError> {
    Ok(EvaluationRecord {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        state: row.try_get("state")?,
        request: json_column(row, "request")?,
        report: json_column(row, "report")?,
        created_ms: row.try_get("created_ms")?,
        finished_ms: row.try_get("finished_ms")?,
    })
}

fn version_from_row(row: &AnyRow) -> Result<Version, RegistryError> {
    let state: String = row.try_get("state")?;
    Ok(Version {
        model: row.try_get("model")?,
        label: row.try_get("label")?,
        runtime: row.try_get("runtime")?,
        artifact: row.try_get("artifact")?,
        config: json_column(row, "config")?,
        metadata: json_column(row, "metadata")?,
        state: state.parse().map_err(RegistryError::Storage)?,
        state_reason: row.try_get("state_reason")?,
        created_ms: row.try_get("created_ms")?,
    })
}

/// Numeric labels by value and before other labels, which sort as text.
pub fn compare_labels(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        (Ok(_), Err(_)) => std::cmp::Ordering::Less,
        (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
        (Err(_), Err(_)) => a.cmp(b),
    }
}

fn check_weights(weights: &BTreeMap<String, u64>) -> Result<(), RegistryError> {
    if weights.len() > MAX_WEIGHTS {
        return Err(RegistryError::Invalid(format!(
            "weights may name at most {MAX_WEIGHTS} versions"
        )));
    }
    if weights.values().all(|&w| w == 0) {
        return Err(RegistryError::Invalid(
            "weights must give at least one version a positive weight".into(),
        ));
    }
    if let Some((label, _)) = weights.iter().find(|(_, w)| **w > i64::MAX as u64) {
        return Err(RegistryError::Invalid(format!(
            "weight of '{label}' is too large"
        )));
    }
    Ok(())
}

fn rollout_from_row(row: &AnyRow) -> Result<RolloutRecord, RegistryError> {
    Ok(RolloutRecord {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        state: row.try_get("state")?,
        generation: row.try_get("generation")?,
        body: json_column(row, "body")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
    })
}

fn require_object(
    value: Option<serde_json::Value>,
    what: &str,
) -> Result<serde_json::Value, RegistryError> {
    match value {
        None => Ok(serde_json::json!({})),
        Some(value @ serde_json::Value::Object(_)) => Ok(value),
        Some(_) => Err(RegistryError::Invalid(format!(
            "{what} must be a JSON object"
        ))),
    }
}

#[async_trait::async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    fn subscribe(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    async fn revision(&self) -> Result<i64, RegistryError> {
        Ok(
            sqlx::query("SELECT revision FROM registry_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?
                .try_get("revision")?,
        )
    }

    async fn create_model(&self, actor: &str, model: NewModel) -> Result<i64, RegistryError> {
        if !valid_name(&model.name) {
            return Err(RegistryError::Invalid(format!(
                "'{}' is not a valid model name (letters, digits, '_', '-', '.'; at most 128)",
                model.name
            )));
        }
        if model.description.len() > MAX_DESCRIPTION_BYTES {
            return Err(RegistryError::Invalid(format!(
                "description may be at most {MAX_DESCRIPTION_BYTES} bytes"
            )));
        }
        let (mut tx, revision) = self.begin_write().await?;
        let exists = sqlx::query("SELECT name FROM models WHERE name = $1")
            .bind(&model.name)
            .fetch_optional(&mut *tx)
            .await?;
        if exists.is_some() {
            return Err(RegistryError::Conflict(format!(
                "model '{}' already exists",
                model.name
            )));
        }
        sqlx::query("INSERT INTO models (name, description, created_ms) VALUES ($1, $2, $3)")
            .bind(&model.name)
            .bind(&model.description)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        let payload = serde_json::json!({"description": model.description});
        self.finish_write(tx, revision, actor, "model.create", &model.name, payload)
            .await
    }

    async fn list_models(&self) -> Result<Vec<Model>, RegistryError> {
        SqlStore::read_models(&self.pool).await
    }

    async fn model(&self, name: &str) -> Result<ModelRecord, RegistryError> {
        let mut tx = self.begin_read().await?;
        let row = sqlx::query("SELECT name, description, created_ms FROM models WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| not_found_model(name))?;
        let model = Model {
            name: row.try_get("name")?,
            description: row.try_get("description")?,
            created_ms: row.try_get("created_ms")?,
        };
        let record = SqlStore::read_record(&mut tx, model).await?;
        tx.commit().await?;
        Ok(record)
    }

    async fn snapshot(&self) -> Result<Snapshot, RegistryError> {
        let mut tx = self.begin_read().await?;
        let revision: i64 = sqlx::query("SELECT revision FROM registry_state WHERE id = 1")
            .fetch_one(&mut *tx)
            .await?
            .try_get("revision")?;
        let models = SqlStore::read_models(&mut *tx).await?;
        let mut records = Vec::with_capacity(models.len());
        for model in models {
            records.push(SqlStore::read_record(&mut tx, model).await?);
        }
        tx.commit().await?;
        Ok(Snapshot {
            revision,
            models: records,
        })
    }

    async fn register_version(
        &self,
        actor: &str,
        model: &str,
        version: NewVersion,
    ) -> Result<(Version, i64), RegistryError> {
        if version.runtime.trim().is_empty() {
            return Err(RegistryError::Invalid("runtime must be given".into()));
        }
        if version.artifact.trim().is_empty() {
            return Err(RegistryError::Invalid("artifact must be given".into()));
        }
        let config = require_object(version.config, "config")?;
        let metadata = require_object(version.metadata, "metadata")?;
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let labels: Vec<String> = sqlx::query("SELECT label FROM versions WHERE model = $1")
            .bind(model)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| row.try_get("label"))
            .collect::<Result<_, _>>()?;
        let label = match version.version {
            Some(label) => {
                if !valid_name(&label) {
                    return Err(RegistryError::Invalid(format!(
                        "'{label}' is not a valid version label"
                    )));
                }
                if labels.contains(&label) {
                    return Err(RegistryError::Conflict(format!(
                        "model '{model}' already has a version '{label}'"
                    )));
                }
                label
            }
            None => {
                let highest = labels.iter().filter_map(|l| l.parse::<u64>().ok()).max();
                highest
                    .unwrap_or(0)
                    .checked_add(1)
                    .ok_or_else(|| {
                        RegistryError::Invalid("no integer label is left; name the version".into())
                    })?
                    .to_string()
            }
        };
        let alias_clash = sqlx::query("SELECT alias FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(&label)
            .fetch_optional(&mut *tx)
            .await?;
        if alias_clash.is_some() {
            return Err(RegistryError::Conflict(format!(
                "model '{model}' has an alias named '{label}'; a version may not share its name"
            )));
        }
        let created = Version {
            model: model.to_owned(),
            label: label.clone(),
            runtime: version.runtime,
            artifact: version.artifact,
            config,
            metadata,
            state: VersionState::Registered,
            state_reason: String::new(),
            created_ms: now_ms(),
        };
        sqlx::query(
            "INSERT INTO versions (model, label, runtime, artifact, config, metadata, state, state_reason, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&created.model)
        .bind(&created.label)
        .bind(&created.runtime)
        .bind(&created.artifact)
        .bind(created.config.to_string())
        .bind(created.metadata.to_string())
        .bind(created.state.as_str())
        .bind(&created.state_reason)
        .bind(created.created_ms)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "version": label,
            "runtime": created.runtime,
            "artifact": created.artifact,
            "config": created.config,
            "metadata": created.metadata,
        });
        let revision = self
            .finish_write(tx, revision, actor, "version.register", model, payload)
            .await?;
        Ok((created, revision))
    }

    async fn reinstate_version(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        version: NewVersion,
    ) -> Result<i64, RegistryError> {
        if version.runtime.trim().is_empty() {
            return Err(RegistryError::Invalid("runtime must be given".into()));
        }
        if version.artifact.trim().is_empty() {
            return Err(RegistryError::Invalid("artifact must be given".into()));
        }
        if version
            .version
            .as_deref()
            .is_some_and(|given| given != label)
        {
            return Err(RegistryError::Invalid(format!(
                "a reinstated version keeps its label '{label}'"
            )));
        }
        let config = require_object(version.config, "config")?;
        let metadata = require_object(version.metadata, "metadata")?;
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let current = SqlStore::read_version(&mut *tx, model, label).await?;
        if current.state != VersionState::Retired {
            return Err(RegistryError::Conflict(format!(
                "version '{label}' of model '{model}' is {}, not retired",
                current.state
            )));
        }
        sqlx::query(
            "UPDATE versions SET runtime = $1, artifact = $2, config = $3, metadata = $4, \
             state = $5, state_reason = $6 WHERE model = $7 AND label = $8",
        )
        .bind(&version.runtime)
        .bind(&version.artifact)
        .bind(config.to_string())
        .bind(metadata.to_string())
        .bind(VersionState::Registered.as_str())
        .bind("")
        .bind(model)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({
            "version": label,
            "runtime": version.runtime,
            "artifact": version.artifact,
            "config": config,
            "metadata": metadata,
        });
        self.finish_write(tx, revision, actor, "version.reinstate", model, payload)
            .await
    }

    async fn version(&self, model: &str, label: &str) -> Result<Version, RegistryError> {
        let models = sqlx::query("SELECT name FROM models WHERE name = $1")
            .bind(model)
            .fetch_optional(&self.pool)
            .await?;
        if models.is_none() {
            return Err(not_found_model(model));
        }
        SqlStore::read_version(&self.pool, model, label).await
    }

    async fn set_version_state(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        state: VersionState,
        reason: &str,
    ) -> Result<i64, RegistryError> {
        if state == VersionState::Draining {
            return Err(RegistryError::Invalid(
                "a version starts draining when it is removed (remove_version)".into(),
            ));
        }
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let current = SqlStore::read_version(&mut *tx, model, label).await?;
        // Removal wins: a gateway that finishes loading a version just removed must not bring
        // it back, and only a draining version retires.
        let removing = matches!(
            current.state,
            VersionState::Draining | VersionState::Retired
        );
        if (removing && state != VersionState::Retired)
            || (state == VersionState::Retired && current.state != VersionState::Draining)
        {
            return Err(RegistryError::Conflict(format!(
                "version '{label}' of model '{model}' is {}; it cannot become {state}",
                current.state
            )));
        }
        if current.state == state && current.state_reason == reason {
            // Nothing changes; the revision bump is rolled back with the transaction.
            tx.rollback().await?;
            return Ok(revision - 1);
        }
        sqlx::query(
            "UPDATE versions SET state = $1, state_reason = $2 WHERE model = $3 AND label = $4",
        )
        .bind(state.as_str())
        .bind(reason)
        .bind(model)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({"version": label, "state": state, "reason": reason});
        self.finish_write(tx, revision, actor, "version.state", model, payload)
            .await
    }

    async fn log_event(
        &self,
        actor: &str,
        model: &str,
        action: &str,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        self.finish_write(tx, revision, actor, action, model, payload)
            .await
    }

    async fn set_policy(
        &self,
        actor: &str,
        model: &str,
        policy: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        if !policy.is_object() {
            return Err(RegistryError::Invalid("a policy is a JSON object".into()));
        }
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        sqlx::query("UPDATE models SET policy = $1 WHERE name = $2")
            .bind(policy.to_string())
            .bind(model)
            .execute(&mut *tx)
            .await?;
        let payload = serde_json::json!({ "policy": policy });
        self.finish_write(tx, revision, actor, "policy.set", model, payload)
            .await
    }

    async fn add_rewards(
        &self,
        model: &str,
        label: &str,
        added: Rewards,
    ) -> Result<Rewards, RegistryError> {
        if !(added.successes.is_finite() && added.failures.is_finite())
            || added.successes < 0.0
            || added.failures < 0.0
        {
            return Err(RegistryError::Invalid(
                "rewards must be finite and not negative".into(),
            ));
        }
        let mut tx = self.pool.begin().await?;
        SqlStore::require_model(&mut tx, model).await?;
        SqlStore::read_version(&mut *tx, model, label).await?;
        // One statement, so that gateways adding at once never lose each other's rewards.
        sqlx::query(
            "INSERT INTO rewards (model, version, successes, failures) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model, version) DO UPDATE SET \
             successes = rewards.successes + excluded.successes, \
             failures = rewards.failures + excluded.failures",
        )
        .bind(model)
        .bind(label)
        .bind(added.successes)
        .bind(added.failures)
        .execute(&mut *tx)
        .await?;
        let row = sqlx::query(
            "SELECT successes, failures FROM rewards WHERE model = $1 AND version = $2",
        )
        .bind(model)
        .bind(label)
        .fetch_one(&mut *tx)
        .await?;
        let total = Rewards {
            successes: row.try_get("successes")?,
            failures: row.try_get("failures")?,
        };
        tx.commit().await?;
        Ok(total)
    }

    async fn shared_secret(&self, name: &str, proposed: &str) -> Result<String, RegistryError> {
        // One statement, so that gateways starting at once agree on whichever came first.
        sqlx::query(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(proposed)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    async fn merge_version_metadata(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        patch: serde_json::Map<String, serde_json::Value>,
    ) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let current = SqlStore::read_version(&mut *tx, model, label).await?;
        let mut metadata = match current.metadata {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        if patch
            .iter()
            .all(|(key, value)| metadata.get(key) == Some(value))
        {
            tx.rollback().await?;
            return Ok(revision - 1);
        }
        metadata.extend(patch.clone());
        sqlx::query("UPDATE versions SET metadata = $1 WHERE model = $2 AND label = $3")
            .bind(serde_json::Value::Object(metadata).to_string())
            .bind(model)
            .bind(label)
            .execute(&mut *tx)
            .await?;
        let payload = serde_json::json!({"version": label, "metadata": patch});
        self.finish_write(tx, revision, actor, "version.metadata", model, payload)
            .await
    }

    async fn remove_version(
        &self,
        actor: &str,
        model: &str,
        label: &str,
    ) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let version = SqlStore::read_version(&mut *tx, model, label).await?;
        let weight = sqlx::query("SELECT weight FROM traffic WHERE model = $1 AND version = $2")
            .bind(model)
            .bind(label)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<i64, _>("weight"))
            .transpose()?
            .unwrap_or(0);
        if weight > 0 {
            return Err(RegistryError::Conflict(format!(
                "version '{label}' of model '{model}' still has traffic weight {weight}; move its traffic first"
            )));
        }
        let aliases: Vec<String> =
            sqlx::query("SELECT alias FROM aliases WHERE model = $1 AND version = $2")
                .bind(model)
                .bind(label)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get("alias"))
                .collect::<Result<_, _>>()?;
        if !aliases.is_empty() {
            return Err(RegistryError::Conflict(format!(
                "version '{label}' of model '{model}' is aliased as {}; move or remove the alias first",
                aliases.join(", ")
            )));
        }
        if matches!(
            version.state,
            VersionState::Draining | VersionState::Retired
        ) {
            return Err(RegistryError::Conflict(format!(
                "version '{label}' of model '{model}' is already {}",
                version.state
            )));
        }
        sqlx::query("DELETE FROM traffic WHERE model = $1 AND version = $2")
            .bind(model)
            .bind(label)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE versions SET state = $1, state_reason = $2 WHERE model = $3 AND label = $4",
        )
        .bind(VersionState::Draining.as_str())
        .bind("removed")
        .bind(model)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({"version": label});
        self.finish_write(tx, revision, actor, "version.remove", model, payload)
            .await
    }

    async fn add_scores(
        &self,
        actor: &str,
        model: &str,
        label: &str,
        scores: NewScores,
    ) -> Result<i64, RegistryError> {
        if scores.metrics.is_empty() || scores.metrics.len() > MAX_METRICS {
            return Err(RegistryError::Invalid(format!(
                "metrics must name 1 to {MAX_METRICS} metrics"
            )));
        }
        if scores.source.len() > MAX_DESCRIPTION_BYTES
            || scores.dataset.len() > MAX_DESCRIPTION_BYTES
        {
            return Err(RegistryError::Invalid(format!(
                "source and dataset may be at most {MAX_DESCRIPTION_BYTES} bytes each"
            )));
        }
        if let Some((name, _)) = scores.metrics.iter().find(|(_, v)| !v.is_finite()) {
            return Err(RegistryError::Invalid(format!(
                "metric '{name}' is not a finite number"
            )));
        }
        if let Some(name) = scores.metrics.keys().find(|name| !valid_name(name)) {
            return Err(RegistryError::Invalid(format!(
                "'{name}' is not a valid metric name"
            )));
        }
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        SqlStore::read_version(&mut *tx, model, label).await?;
        let created = now_ms();
        for (metric, value) in &scores.metrics {
            sqlx::query(
                "INSERT INTO scores (model, version, metric, value, source, dataset, revision, created_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(model)
            .bind(label)
            .bind(metric)
            .bind(*value)
            .bind(&scores.source)
            .bind(&scores.dataset)
            .bind(revision)
            .bind(created)
            .execute(&mut *tx)
            .await?;
        }
        let payload = serde_json::json!({
            "version": label,
            "metrics": scores.metrics,
            "source": scores.source,
            "dataset": scores.dataset,
        });
        self.finish_write(tx, revision, actor, "scores.add", model, payload)
            .await
    }

    async fn scores(&self, model: &str, label: &str) -> Result<Vec<Score>, RegistryError> {
        self.version(model, label).await?;
        sqlx::query(
            "SELECT model, version, metric, value, source, dataset, revision, created_ms FROM scores \
             WHERE model = $1 AND version = $2 ORDER BY revision, metric",
        )
        .bind(model)
        .bind(label)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Score {
                model: row.try_get("model")?,
                version: row.try_get("version")?,
                metric: row.try_get("metric")?,
                value: row.try_get("value")?,
                source: row.try_get("source")?,
                dataset: row.try_get("dataset")?,
                revision: row.try_get("revision")?,
                created_ms: row.try_get("created_ms")?,
            })
        })
        .collect()
    }

    async fn set_traffic(
        &self,
        actor: &str,
        model: &str,
        weights: BTreeMap<String, u64>,
    ) -> Result<i64, RegistryError> {
        check_weights(&weights)?;
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        SqlStore::replace_traffic(&mut tx, model, &weights).await?;
        let payload = serde_json::json!({"weights": weights});
        self.finish_write(tx, revision, actor, "traffic.set", model, payload)
            .await
    }

    async fn set_alias(
        &self,
        actor: &str,
        model: &str,
        alias: &str,
        label: &str,
    ) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        SqlStore::put_alias(&mut tx, model, alias, label).await?;
        let payload = serde_json::json!({"alias": alias, "version": label});
        self.finish_write(tx, revision, actor, "alias.set", model, payload)
            .await
    }

    async fn remove_alias(
        &self,
        actor: &str,
        model: &str,
        alias: &str,
    ) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let removed = sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(alias)
            .execute(&mut *tx)
            .await?;
        if removed.rows_affected() == 0 {
            return Err(RegistryError::NotFound(format!(
                "model '{model}' has no alias '{alias}'"
            )));
        }
        let payload = serde_json::json!({"alias": alias});
        self.finish_write(tx, revision, actor, "alias.remove", model, payload)
            .await
    }

    async fn events_after(&self, revision: i64, limit: i64) -> Result<Vec<Event>, RegistryError> {
        sqlx::query(
            "SELECT revision, actor, action, model, payload, created_ms FROM events \
             WHERE revision > $1 ORDER BY revision LIMIT $2",
        )
        .bind(revision)
        .bind(limit.clamp(1, 1000))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Event {
                revision: row.try_get("revision")?,
                actor: row.try_get("actor")?,
                action: row.try_get("action")?,
                model: row.try_get("model")?,
                payload: json_column(row, "payload")?,
                created_ms: row.try_get("created_ms")?,
            })
        })
        .collect()
    }

    async fn write_rollout(
        &self,
        actor: &str,
        model: &str,
        write: RolloutWrite,
    ) -> Result<(RolloutRecord, i64), RegistryError> {
        if !RolloutRecord::is_active(&write.state)
            && !matches!(write.state.as_str(), "promoted" | "rolled_back" | "aborted")
        {
            return Err(RegistryError::Invalid(format!(
                "'{}' is not a rollout state",
                write.state
            )));
        }
        if let Some(weights) = &write.weights {
            check_weights(weights)?;
        }
        if write
            .policy
            .as_ref()
            .is_some_and(|policy| !policy.is_object())
        {
            return Err(RegistryError::Invalid("a policy is a JSON object".into()));
        }
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let now = now_ms();
        let record = match write.existing {
            None => {
                let active: i64 = sqlx::query(
                    "SELECT COUNT(*) AS n FROM rollouts WHERE model = $1 \
                     AND state IN ('pending', 'running', 'paused')",
                )
                .bind(model)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
                if active > 0 {
                    return Err(RegistryError::Conflict(format!(
                        "model '{model}' has a rollout in progress; pause, promote or abort it first"
                    )));
                }
                let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM rollouts")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("id")?;
                sqlx::query(
                    "INSERT INTO rollouts (id, model, state, generation, body, created_ms, \
                     updated_ms) VALUES ($1, $2, $3, 1, $4, $5, $5)",
                )
                .bind(id)
                .bind(model)
                .bind(&write.state)
                .bind(write.body.to_string())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                RolloutRecord {
                    id,
                    model: model.to_owned(),
                    state: write.state.clone(),
                    generation: 1,
                    body: write.body.clone(),
                    created_ms: now,
                    updated_ms: now,
                }
            }
            Some((id, expected)) => {
                let row = sqlx::query(
                    "SELECT generation, created_ms FROM rollouts WHERE id = $1 AND model = $2",
                )
                .bind(id)
                .bind(model)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    RegistryError::NotFound(format!("model '{model}' has no rollout {id}"))
                })?;
                let generation: i64 = row.try_get("generation")?;
                if generation != expected {
                    return Err(RegistryError::Conflict(format!(
                        "rollout {id} of '{model}' changed meanwhile (generation {generation}, \
                         not {expected})"
                    )));
                }
                sqlx::query(
                    "UPDATE rollouts SET state = $1, generation = $2, body = $3, updated_ms = $4 \
                     WHERE id = $5",
                )
                .bind(&write.state)
                .bind(expected + 1)
                .bind(write.body.to_string())
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                RolloutRecord {
                    id,
                    model: model.to_owned(),
                    state: write.state.clone(),
                    generation: expected + 1,
                    body: write.body.clone(),
                    created_ms: row.try_get("created_ms")?,
                    updated_ms: now,
                }
            }
        };
        if let Some(weights) = &write.weights {
            SqlStore::replace_traffic(&mut tx, model, weights).await?;
        }
        if let Some(policy) = &write.policy {
            sqlx::query("UPDATE models SET policy = $1 WHERE name = $2")
                .bind(policy.to_string())
                .bind(model)
                .execute(&mut *tx)
                .await?;
        }
        if let Some((alias, label)) = &write.alias {
            SqlStore::put_alias(&mut tx, model, alias, label).await?;
        }
        let revision = self
            .finish_write(tx, revision, actor, &write.action, model, write.payload)
            .await?;
        Ok((record, revision))
    }

    async fn rollouts(&self, model: &str, limit: i64) -> Result<Vec<RolloutRecord>, RegistryError> {
        let mut tx = self.begin_read().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let rows = sqlx::query(
            "SELECT id, model, state, generation, body, created_ms, updated_ms FROM rollouts \
             WHERE model = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit.clamp(1, 100))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(rollout_from_row).collect()
    }

    async fn active_rollouts(&self) -> Result<Vec<RolloutRecord>, RegistryError> {
        sqlx::query(
            "SELECT id, model, state, generation, body, created_ms, updated_ms FROM rollouts \
             WHERE state IN ('pending', 'running', 'paused') ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(rollout_from_row)
        .collect()
    }

    async fn put_counters(
        &self,
        gateway: &str,
        rows: Vec<(String, String, serde_json::Value)>,
    ) -> Result<(), RegistryError> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        for (model, version, body) in rows {
            sqlx::query(
                "INSERT INTO version_counters (gateway, model, version, body, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (gateway, model, version) DO UPDATE \
                 SET body = excluded.body, updated_ms = excluded.updated_ms",
            )
            .bind(gateway)
            .bind(model)
            .bind(version)
            .bind(body.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM version_counters WHERE updated_ms < $1")
            .bind(now - STALE_COUNTERS_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn counters(&self, model: &str) -> Result<Vec<CounterRow>, RegistryError> {
        sqlx::query(
            "SELECT gateway, version, body, updated_ms FROM version_counters WHERE model = $1 \
             ORDER BY gateway, version",
        )
        .bind(model)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(CounterRow {
                gateway: row.try_get("gateway")?,
                version: row.try_get("version")?,
                body: json_column(row, "body")?,
                updated_ms: row.try_get("updated_ms")?,
            })
        })
        .collect()
    }

    async fn create_evaluation(
        &self,
        actor: &str,
        model: &str,
        request: serde_json::Value,
    ) -> Result<(EvaluationRecord, i64), RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 AS id FROM evaluations")
            .fetch_one(&mut *tx)
            .await?
            .try_get("id")?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO evaluations (id, model, state, request, report, created_ms, finished_ms) \
             VALUES ($1, $2, 'running', $3, '{}', $4, 0)",
        )
        .bind(id)
        .bind(model)
        .bind(request.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({"evaluation": id, "request": request});
        let revision = self
            .finish_write(tx, revision, actor, "evaluation.started", model, payload)
            .await?;
        let record = EvaluationRecord {
            id,
            model: model.to_owned(),
            state: "running".into(),
            request,
            report: serde_json::json!({}),
            created_ms: now,
            finished_ms: 0,
        };
        Ok((record, revision))
    }

    async fn finish_evaluation(
        &self,
        actor: &str,
        id: i64,
        state: &str,
        report: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        if !matches!(state, "done" | "failed" | "cancelled") {
            return Err(RegistryError::Invalid(format!(
                "'{state}' is not how an evaluation ends"
            )));
        }
        let (mut tx, revision) = self.begin_write().await?;
        let row = sqlx::query("SELECT model, state FROM evaluations WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no evaluation {id}")))?;
        let model: String = row.try_get("model")?;
        let current: String = row.try_get("state")?;
        if current != "running" {
            return Err(RegistryError::Conflict(format!(
                "evaluation {id} is {current} already"
            )));
        }
        sqlx::query(
            "UPDATE evaluations SET state = $1, report = $2, finished_ms = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(report.to_string())
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({"evaluation": id, "state": state});
        self.finish_write(tx, revision, actor, "evaluation.finished", &model, payload)
            .await
    }

    async fn running_evaluations(&self) -> Result<Vec<EvaluationRecord>, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, model, state, request, report, created_ms, finished_ms FROM evaluations \
             WHERE state = 'running' ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(evaluation_record).collect()
    }

    async fn evaluations(
        &self,
        model: &str,
        limit: i64,
    ) -> Result<Vec<EvaluationRecord>, RegistryError> {
        let mut tx = self.begin_read().await?;
        SqlStore::require_model(&mut tx, model).await?;
        let rows = sqlx::query(
            "SELECT id, model, state, request, report, created_ms, finished_ms FROM evaluations \
             WHERE model = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(model)
        .bind(limit.clamp(1, 100))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(evaluation_record).collect()
    }

    async fn try_lead(&self) -> Result<bool, RegistryError> {
        use sqlx::Connection;
        if self.backend == Backend::Sqlite {
            return Ok(true);
        }
        let mut leader = self.leader.lock().await;
        if let Some((connection, held)) = leader.as_mut() {
            let answer = if *held {
                sqlx::query("SELECT 1 AS alive")
                    .fetch_one(&mut *connection)
                    .await
                    .map(|_| true)
            } else {
                sqlx::query("SELECT pg_try_advisory_lock($1) AS held")
                    .bind(ROLLOUT_LEADER_LOCK)
                    .fetch_one(&mut *connection)
                    .await
                    .and_then(|row| row.try_get::<bool, _>("held"))
            };
            match answer {
                Ok(now_held) => {
                    *held = now_held;
                    return Ok(now_held);
                }
                // The connection is gone, and with it any lock it held.
                Err(_) => *leader = None,
            }
        }
        let mut connection = sqlx::AnyConnection::connect_with(&self.options).await?;
        // PostgreSQL 14 and later; older servers keep the session until TCP gives up.
        if let Err(error) = connection.execute(LEADER_IDLE_SESSION).await {
            tracing::debug!(%error, "the server does not end idle sessions");
        }
        let held: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS held")
            .bind(ROLLOUT_LEADER_LOCK)
            .fetch_one(&mut connection)
            .await?
            .try_get("held")?;
        *leader = Some((connection, held));
        Ok(held)
    }

    async fn heartbeat(&self, beat: Heartbeat) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        // The database's clock, not this process's: every node's heartbeat is then on one
        // clock, and a reader's judgement of its age does not depend on theirs agreeing.
        let now: i64 = sqlx::query(self.now_ms_query())
            .fetch_one(&mut *tx)
            .await?
            .try_get("now_ms")?;
        sqlx::query(
            "INSERT INTO nodes (id, address, body, beat, started_ms, heartbeat_ms) \
             VALUES ($1, $2, $3, 1, $4, $4) ON CONFLICT (id) DO UPDATE \
             SET address = excluded.address, body = excluded.body, beat = nodes.beat + 1, \
             heartbeat_ms = excluded.heartbeat_ms",
        )
        .bind(&beat.node)
        .bind(&beat.address)
        .bind(beat.body.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM node_versions WHERE node = $1")
            .bind(&beat.node)
            .execute(&mut *tx)
            .await?;
        for (model, version, state, reason, replicas) in beat.versions {
            sqlx::query(
                "INSERT INTO node_versions \
                 (node, model, version, state, reason, replicas, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&beat.node)
            .bind(model)
            .bind(version)
            .bind(state)
            .bind(reason)
            .bind(replicas)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_node(&self, node: &str) -> Result<(), RegistryError> {
        let mut tx = self.pool.begin().await?;
        for statement in [
            "DELETE FROM node_versions WHERE node = $1",
            "DELETE FROM nodes WHERE id = $1",
        ] {
            sqlx::query(statement).bind(node).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeRecord>, RegistryError> {
        let mut tx = self.begin_read().await?;
        let now: i64 = sqlx::query(self.now_ms_query())
            .fetch_one(&mut *tx)
            .await?
            .try_get("now_ms")?;
        let rows = sqlx::query(
            "SELECT id, address, body, beat, started_ms, heartbeat_ms FROM nodes ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let heartbeat_ms: i64 = row.try_get("heartbeat_ms")?;
                Ok(NodeRecord {
                    id: row.try_get("id")?,
                    address: row.try_get("address")?,
                    body: json_column(row, "body")?,
                    beat: row.try_get("beat")?,
                    started_ms: row.try_get("started_ms")?,
                    heartbeat_ms,
                    age_ms: now.saturating_sub(heartbeat_ms).max(0),
                })
            })
            .collect()
    }

    async fn node_versions(&self) -> Result<Vec<NodeVersion>, RegistryError> {
        sqlx::query(
            "SELECT node, model, version, state, reason, replicas, updated_ms FROM node_versions \
             ORDER BY node, model, version",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(NodeVersion {
                node: row.try_get("node")?,
                model: row.try_get("model")?,
                version: row.try_get("version")?,
                state: row.try_get("state")?,
                reason: row.try_get("reason")?,
                replicas: row.try_get("replicas")?,
                updated_ms: row.try_get("updated_ms")?,
            })
        })
        .collect()
    }

    async fn placements(&self) -> Result<Vec<PlacementRow>, RegistryError> {
        sqlx::query(
            "SELECT model, version, node, device, replicas FROM placements \
             ORDER BY model, version, node, device",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(PlacementRow {
                model: row.try_get("model")?,
                version: row.try_get("version")?,
                node: row.try_get("node")?,
                device: row.try_get("device")?,
                replicas: row.try_get("replicas")?,
            })
        })
        .collect()
    }

    async fn write_placements(
        &self,
        actor: &str,
        rows: Vec<PlacementRow>,
        payload: serde_json::Value,
    ) -> Result<i64, RegistryError> {
        if rows.iter().any(|row| row.replicas < 1) {
            return Err(RegistryError::Invalid(
                "a placement holds at least one replica".into(),
            ));
        }
        let (mut tx, revision) = self.begin_write().await?;
        sqlx::query("DELETE FROM placements")
            .execute(&mut *tx)
            .await?;
        for row in rows {
            sqlx::query(
                "INSERT INTO placements (model, version, node, device, replicas) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(row.model)
            .bind(row.version)
            .bind(row.node)
            .bind(row.device)
            .bind(row.replicas)
            .execute(&mut *tx)
            .await?;
        }
        self.finish_write(tx, revision, actor, "cluster.placed", "", payload)
            .await
    }

    async fn set_model_limits(
        &self,
        actor: &str,
        model: &str,
        spec: Option<serde_json::Value>,
    ) -> Result<i64, RegistryError> {
        self.set_model_document(ModelDocument::Limits, actor, model, spec)
            .await
    }

    async fn model_limits(&self) -> Result<BTreeMap<String, serde_json::Value>, RegistryError> {
        self.model_documents(ModelDocument::Limits).await
    }

    async fn set_model_capture(
        &self,
        actor: &str,
        model: &str,
        spec: Option<serde_json::Value>,
    ) -> Result<i64, RegistryError> {
        self.set_model_document(ModelDocument::Capture, actor, model, spec)
            .await
    }

    async fn model_captures(&self) -> Result<BTreeMap<String, serde_json::Value>, RegistryError> {
        self.model_documents(ModelDocument::Capture).await
    }

    async fn create_key(
        &self,
        actor: &str,
        key: NewKey,
    ) -> Result<(KeyRecord, i64), RegistryError> {
        if !valid_name(&key.id) || !valid_name(&key.name) {
            return Err(RegistryError::Invalid(format!(
                "a key's id and name are 1 to 128 letters, digits, '_', '-' or '.' ('{}', '{}')",
                key.id.escape_debug(),
                key.name.escape_debug()
            )));
        }
        if !key.spec.is_object() {
            return Err(RegistryError::Invalid(
                "a key's spec must be a JSON object".into(),
            ));
        }
        let (mut tx, revision) = self.begin_write().await?;
        let taken = sqlx::query("SELECT id FROM api_keys WHERE id = $1 OR digest = $2")
            .bind(&key.id)
            .bind(&key.digest)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(RegistryError::Conflict(format!(
                "a key with id '{}' or the same secret exists",
                key.id
            )));
        }
        let created_ms = now_ms();
        sqlx::query(
            "INSERT INTO api_keys (id, name, digest, prefix, spec, created_ms) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.digest)
        .bind(&key.prefix)
        .bind(key.spec.to_string())
        .bind(created_ms)
        .execute(&mut *tx)
        .await?;
        let payload = serde_json::json!({"id": key.id, "name": key.name, "spec": key.spec});
        let revision = self
            .finish_write(tx, revision, actor, "key.create", "", payload)
            .await?;
        let record = KeyRecord {
            id: key.id,
            name: key.name,
            digest: key.digest,
            prefix: key.prefix,
            spec: key.spec,
            created_ms,
            rotated_ms: None,
            revoked_ms: None,
        };
        Ok((record, revision))
    }

    async fn keys(&self) -> Result<Vec<KeyRecord>, RegistryError> {
        let rows = sqlx::query(
            "SELECT id, name, digest, prefix, spec, created_ms, rotated_ms, revoked_ms \
             FROM api_keys ORDER BY created_ms, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    async fn rotate_key(
        &self,
        actor: &str,
        id: &str,
        digest: &str,
        prefix: &str,
    ) -> Result<(KeyRecord, i64), RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        let mut record = live_key(&mut tx, id).await?;
        sqlx::query("UPDATE api_keys SET digest = $1, prefix = $2, rotated_ms = $3 WHERE id = $4")
            .bind(digest)
            .bind(prefix)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(|e| match e {
                sqlx::Error::Database(db) if db.message().to_lowercase().contains("unique") => {
                    RegistryError::Conflict("another key has the same secret".into())
                }
                other => other.into(),
            })?;
        let payload = serde_json::json!({"id": id, "name": record.name});
        let revision = self
            .finish_write(tx, revision, actor, "key.rotate", "", payload)
            .await?;
        record.digest = digest.to_owned();
        record.prefix = prefix.to_owned();
        record.rotated_ms = Some(now_ms());
        Ok((record, revision))
    }

    async fn set_key_spec(
        &self,
        actor: &str,
        id: &str,
        spec: serde_json::Value,
    ) -> Result<(KeyRecord, i64), RegistryError> {
        if !spec.is_object() {
            return Err(RegistryError::Invalid(
                "a key's spec must be a JSON object".into(),
            ));
        }
        let (mut tx, revision) = self.begin_write().await?;
        let mut record = live_key(&mut tx, id).await?;
        sqlx::query("UPDATE api_keys SET spec = $1 WHERE id = $2")
            .bind(spec.to_string())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let payload = serde_json::json!({"id": id, "name": record.name, "spec": spec});
        let revision = self
            .finish_write(tx, revision, actor, "key.update", "", payload)
            .await?;
        record.spec = spec;
        Ok((record, revision))
    }

    async fn revoke_key(&self, actor: &str, id: &str) -> Result<i64, RegistryError> {
        let (mut tx, revision) = self.begin_write().await?;
        let record = live_key(&mut tx, id).await?;
        sqlx::query("UPDATE api_keys SET revoked_ms = $1 WHERE id = $2")
            .bind(now_ms())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let payload = serde_json::json!({"id": id, "name": record.name});
        self.finish_write(tx, revision, actor, "key.revoke", "", payload)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        assert_eq!(
            redacted("postgres://sy:s3cret@db:5432/reg?sslmode=require"),
            "postgres://sy:***@db:5432/reg?sslmode=require"
        );
        assert_eq!(
            redacted("postgres://db/reg?user=sy&password=s3cret"),
            "postgres://db/reg?user=sy&password=***"
        );
        assert_eq!(redacted("postgres://sy@db/reg"), "postgres://sy@db/reg");
        assert_eq!(
            redacted("sqlite://data/registry.db"),
            "sqlite://data/registry.db"
        );
    }
}
