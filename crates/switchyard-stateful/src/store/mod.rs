//! The stateful APIs' storage (docs/responses.md): one store over SQLite (the embedded
//! default) or PostgreSQL (shared by several gateway replicas), through `sqlx`'s `Any`
//! driver so that one set of statements serves both.
//!
//! - **Migrations** are versioned, embedded in the binary, one set per backend, and run
//!   at start (PostgreSQL takes an advisory lock, so replicas starting together apply
//!   them once).
//! - **Writes** are [`Write`]s: statements applied together or not at all, so a crash
//!   never leaves half a response or an item without its parent. On SQLite, which takes
//!   one writer at a time, a single writer task applies them, batching those that queue
//!   up into one transaction (one commit for many); a batch that fails is replayed one
//!   write at a time, so a bad write fails alone. On PostgreSQL each write is its own
//!   transaction on the pool.
//! - **Recovery.** A response runs in one replica, which holds a lease on it
//!   (`lease_until`). Queued and in-progress responses whose lease ran out were left by
//!   a replica that died: they are marked `failed` (`server_restarted`). An embedded
//!   SQLite database belongs to one process, so everything it left running is failed at
//!   start.
//! - **Retention** (`--store-retention-days`): a background purge of older responses and
//!   conversations with everything that belongs to them.

use std::borrow::Cow;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Any, AnyPool, Executor};
use tokio::sync::{mpsc, oneshot};

/// Most writes one SQLite commit carries.
const MAX_BATCH: usize = 256;

/// The SQL of the embedded migrations, per backend, in version order.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "responses",
        include_str!("../../migrations/sqlite/0001_responses.sql"),
    ),
    (
        2,
        "files",
        include_str!("../../migrations/sqlite/0002_files.sql"),
    ),
    (
        3,
        "vector_stores",
        include_str!("../../migrations/sqlite/0003_vector_stores.sql"),
    ),
    (
        4,
        "keyword_index",
        include_str!("../../migrations/sqlite/0004_keyword_index.sql"),
    ),
    (
        5,
        "tenancy",
        include_str!("../../migrations/sqlite/0005_tenancy.sql"),
    ),
];
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "responses",
        include_str!("../../migrations/postgres/0001_responses.sql"),
    ),
    (
        2,
        "files",
        include_str!("../../migrations/postgres/0002_files.sql"),
    ),
    (
        3,
        "vector_stores",
        include_str!("../../migrations/postgres/0003_vector_stores.sql"),
    ),
    (
        4,
        "tenancy",
        include_str!("../../migrations/postgres/0004_tenancy.sql"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--database-url: {0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is closed")]
    Closed,
}

/// Which database the store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The backend a `--database-url` names.
    pub fn of(url: &str) -> Result<Backend, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Config(
                "expected sqlite://PATH, sqlite::memory: or postgres://…".into(),
            ))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Store settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// `sqlite://PATH` (created if missing), `sqlite::memory:`, or `postgres://…`.
    pub url: String,
    /// Pool size (SQLite: readers; its writes go through one writer).
    pub max_connections: u32,
    /// Longest wait for a pooled connection.
    pub acquire_timeout: Duration,
}

/// A value bound to a statement's parameter (`$1`, `$2`, … in the SQL, for both
/// backends). A NULL keeps its type (`None` of a variant): PostgreSQL refuses a text
/// NULL for a bigint column.
#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Int(Option<i64>),
    Float(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Blob(Option<Vec<u8>>),
}

macro_rules! val_from {
    ($t:ty, $variant:ident, $conv:expr) => {
        impl From<$t> for Val {
            fn from(v: $t) -> Val {
                Val::$variant(Some($conv(v)))
            }
        }
        impl From<Option<$t>> for Val {
            fn from(v: Option<$t>) -> Val {
                Val::$variant(v.map($conv))
            }
        }
    };
}

val_from!(i64, Int, |v| v);
val_from!(f64, Float, |v| v);
val_from!(bool, Bool, |v| v);
val_from!(String, Text, |v| v);
val_from!(&str, Text, |v: &str| v.to_string());
val_from!(Vec<u8>, Blob, |v| v);

/// One statement and its arguments.
#[derive(Clone, Debug)]
pub struct Stmt {
    pub sql: Cow<'static, str>,
    pub args: Vec<Val>,
}

impl Stmt {
    pub fn new(sql: impl Into<Cow<'static, str>>, args: Vec<Val>) -> Stmt {
        Stmt {
            sql: sql.into(),
            args,
        }
    }
}

/// Statements applied together or not at all.
#[derive(Clone, Debug, Default)]
pub struct Write(pub Vec<Stmt>);

impl Write {
    pub fn one(sql: impl Into<Cow<'static, str>>, args: Vec<Val>) -> Write {
        Write(vec![Stmt::new(sql, args)])
    }

    pub fn then(mut self, sql: impl Into<Cow<'static, str>>, args: Vec<Val>) -> Write {
        self.0.push(Stmt::new(sql, args));
        self
    }

    /// This write's statements, then `other`'s, in one transaction.
    pub fn and(mut self, other: Write) -> Write {
        self.0.extend(other.0);
        self
    }
}

fn bind<'q>(sql: &'q str, args: &[Val]) -> sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for a in args {
        q = match a {
            Val::Int(v) => q.bind(*v),
            Val::Float(v) => q.bind(*v),
            Val::Bool(v) => q.bind(*v),
            Val::Text(v) => q.bind(v.clone()),
            Val::Blob(v) => q.bind(v.clone()),
        };
    }
    q
}

type Reply = oneshot::Sender<Result<Vec<u64>, StoreError>>;

/// The store.
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite's single writer.
    writer: Option<mpsc::UnboundedSender<(Write, Reply)>>,
    /// Where operation latencies are reported.
    observer: std::sync::OnceLock<std::sync::Arc<dyn crate::Observe>>,
    /// Vector search in this database: the extension's version, or why it is missing.
    vectors: Result<String, String>,
}

impl Store {
    /// Connects, applies the migrations, and fails what a dead process left running
    /// (SQLite: everything; PostgreSQL: what no live replica holds a lease on).
    pub async fn open(cfg: &StoreConfig, now: i64) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = Backend::of(&cfg.url)?;
        let mut url = cfg.url.clone();
        let memory = url.starts_with("sqlite::memory:");
        if backend == Backend::Sqlite && !memory && !url.contains("mode=") {
            url.push_str(if url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let mut opts = AnyPoolOptions::new()
            .max_connections(if memory {
                1
            } else {
                cfg.max_connections.max(1)
            })
            .acquire_timeout(cfg.acquire_timeout);
        if memory {
            // Every connection to `:memory:` is a database of its own: keep one forever.
            opts = opts
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None);
        }
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                    )
                    .await?;
                    Ok(())
                })
            });
        }
        if backend == Backend::Sqlite {
            register_sqlite_vec();
        } else {
            // pgvector ≥ 0.8: an HNSW search filtered by store goes on until it has its
            // k rows, in distance order (older versions ignore the setting).
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET hnsw.iterative_scan = strict_order")
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = opts.connect(&url).await?;
        // SQLite has no migration lock (PostgreSQL's migrator takes an advisory one):
        // two processes opening one new file at once both run a migration, and the
        // later finds its tables made ("already exists", its transaction rolled back).
        // It runs the migrations again: by then that one is recorded and skipped. (One
        // that can run twice fails instead on recording itself, a UNIQUE violation;
        // its transaction is rolled back the same way.)
        let mut races = 0;
        loop {
            match migrator(backend).run(&pool).await {
                Err(e)
                    if backend == Backend::Sqlite
                        && races < 32
                        && matches!(
                            e,
                            sqlx::migrate::MigrateError::ExecuteMigration(..)
                                | sqlx::migrate::MigrateError::Execute(..)
                        )
                        && (e.to_string().contains("already exists")
                            || e.to_string().contains("UNIQUE constraint failed")) =>
                {
                    races += 1;
                }
                done => break done?,
            }
        }
        let writer = (backend == Backend::Sqlite).then(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_loop(pool.clone(), rx));
            tx
        });
        let store = Store {
            pool,
            backend,
            writer,
            observer: Default::default(),
            vectors: Err(String::new()),
        };
        let store = Store {
            vectors: store.find_vectors().await,
            ..store
        };
        let failed = store
            .fail_abandoned(
                match backend {
                    Backend::Sqlite => None,
                    Backend::Postgres => Some(now),
                },
                now,
            )
            .await?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "responses left running by a stopped gateway are marked failed"
            );
        }
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Reports each operation's latency to `observer` from now on (once).
    pub fn observe(&self, observer: std::sync::Arc<dyn crate::Observe>) {
        let _ = self.observer.set(observer);
    }

    /// Where this store's users report what they do (set by [`Store::observe`]).
    pub fn observer(&self) -> Option<&std::sync::Arc<dyn crate::Observe>> {
        self.observer.get()
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = std::time::Instant::now();
        let out = f.await;
        if let Some(o) = self.observer.get() {
            o.store_op(op, start.elapsed().as_secs_f64(), out.is_ok());
        }
        out
    }

    /// Applies `w` (all or nothing); the rows each statement touched.
    pub async fn write(&self, w: Write) -> Result<Vec<u64>, StoreError> {
        self.timed("write", self.write_now(w)).await
    }

    async fn write_now(&self, w: Write) -> Result<Vec<u64>, StoreError> {
        match &self.writer {
            Some(tx) => {
                let (reply, answer) = oneshot::channel();
                tx.send((w, reply)).map_err(|_| StoreError::Closed)?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
            None => apply(&self.pool, std::slice::from_ref(&w))
                .await
                .map(|mut r| r.pop().unwrap_or_default()),
        }
    }

    /// Every row `sql` returns.
    pub async fn fetch_all(&self, sql: &str, args: &[Val]) -> Result<Vec<AnyRow>, StoreError> {
        self.timed("read", async {
            Ok(bind(sql, args).fetch_all(&self.pool).await?)
        })
        .await
    }

    /// The row `sql` returns, if any.
    pub async fn fetch_optional(
        &self,
        sql: &str,
        args: &[Val],
    ) -> Result<Option<AnyRow>, StoreError> {
        self.timed("read", async {
            Ok(bind(sql, args).fetch_optional(&self.pool).await?)
        })
        .await
    }

    /// Whether the database answers (readiness).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Connections open and idle (metrics).
    pub fn pool_use(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// Vector search here: the extension's version (sqlite-vec, compiled in; pgvector,
    /// created at open when the server has it), or what to install.
    pub fn vectors(&self) -> Result<&str, &str> {
        self.vectors.as_deref().map_err(String::as_str)
    }

    async fn find_vectors(&self) -> Result<String, String> {
        let version = |sql: &'static str| async move {
            let row = bind(sql, &[]).fetch_one(&self.pool).await?;
            Ok::<String, sqlx::Error>(sqlx::Row::get(&row, 0))
        };
        match self.backend {
            Backend::Sqlite => version("SELECT vec_version()")
                .await
                .map_err(|e| format!("sqlite-vec did not load: {e}")),
            Backend::Postgres => {
                // Replicas starting together may race to create it: what counts is
                // whether it is there afterwards.
                let created = bind("CREATE EXTENSION IF NOT EXISTS vector", &[])
                    .execute(&self.pool)
                    .await;
                let there =
                    version("SELECT extversion::text FROM pg_extension WHERE extname = 'vector'")
                        .await;
                match (there, created) {
                    (Ok(v), _) => {
                        // The chunks' vectors (see migration 0003).
                        bind(
                            "ALTER TABLE vector_store_chunks \
                             ADD COLUMN IF NOT EXISTS embedding vector",
                            &[],
                        )
                        .execute(&self.pool)
                        .await
                        .map_err(|e| format!("pgvector: adding the embedding column: {e}"))?;
                        Ok(v)
                    }
                    (Err(e), Ok(_)) | (Err(_), Err(e)) => {
                        let why = format!(
                            "PostgreSQL has no usable pgvector ({e}); vector stores need it: \
                             install pgvector 0.5 or later on the server (the \
                             postgresql-<version>-pgvector package from apt.postgresql.org, or \
                             a build of github.com/pgvector/pgvector) and let this user run \
                             CREATE EXTENSION vector"
                        );
                        tracing::warn!("{why}");
                        Err(why)
                    }
                }
            }
        }
    }

    /// The most connections the pool opens.
    pub fn pool_max(&self) -> u32 {
        self.pool.options().get_max_connections()
    }

    /// Marks `failed` (`server_restarted`) the queued and in-progress responses whose
    /// lease ended before `lease_before` (`None`: all of them); how many.
    pub async fn fail_abandoned(
        &self,
        lease_before: Option<i64>,
        now: i64,
    ) -> Result<u64, StoreError> {
        let error = serde_json::json!({
            "code": "server_restarted",
            "message": "The gateway running this response stopped before it finished",
        })
        .to_string();
        const FAIL: &str = "UPDATE responses SET status = 'failed', error = $1, \
                            updated_at = $2, lease_until = NULL \
                            WHERE status IN ('queued', 'in_progress')";
        let w = match lease_before {
            None => Write::one(FAIL, vec![error.into(), now.into()]),
            Some(t) => Write::one(
                format!("{FAIL} AND (lease_until IS NULL OR lease_until < $3)"),
                vec![error.into(), now.into(), t.into()],
            ),
        };
        let n = self.write(w).await?;
        Ok(n.first().copied().unwrap_or(0))
    }

    /// Deletes responses and conversations created before `cutoff`, with their items
    /// and events; how many of each.
    pub async fn purge_before(&self, cutoff: i64) -> Result<(u64, u64), StoreError> {
        let n = self
            .write(
                Write::one(
                    "DELETE FROM responses WHERE created_at < $1 \
                     AND status NOT IN ('queued', 'in_progress')",
                    vec![cutoff.into()],
                )
                .then(
                    "DELETE FROM conversations WHERE created_at < $1",
                    vec![cutoff.into()],
                ),
            )
            .await?;
        Ok((n[0], n[1]))
    }

    /// Closes the pool (and the writer once its queue is done).
    pub async fn close(self) {
        drop(self.writer);
        self.pool.close().await;
    }
}

/// The JSON values of `column` in `rows` (rows whose text is not JSON are skipped).
pub fn json_column(rows: &[AnyRow], column: &str) -> Vec<serde_json::Value> {
    rows.iter()
        .filter_map(|r| serde_json::from_str(&sqlx::Row::get::<String, _>(r, column)).ok())
        .collect()
}

/// Makes sqlite-vec's functions and `vec0` tables part of every SQLite connection
/// opened from now on (once per process; the extension is compiled into the binary).
fn register_sqlite_vec() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vec_init` is the extension's entry point, which has
        // SQLite's xEntryPoint signature; the crate declares it without arguments, so it
        // is cast to what `sqlite3_auto_extension` takes (the crate's documented use).
        unsafe {
            libsqlite3_sys::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut libsqlite3_sys::sqlite3,
                    *mut *mut std::os::raw::c_char,
                    *const libsqlite3_sys::sqlite3_api_routines,
                ) -> std::os::raw::c_int,
            >(
                sqlite_vec::sqlite3_vec_init as *const (),
            )));
        }
    });
}

fn migrator(backend: Backend) -> Migrator {
    let set = match backend {
        Backend::Sqlite => SQLITE_MIGRATIONS,
        Backend::Postgres => POSTGRES_MIGRATIONS,
    };
    Migrator {
        migrations: Cow::Owned(
            set.iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect(),
        ),
        ..Migrator::DEFAULT
    }
}

/// Applies `writes` in one transaction; each statement's rows touched, per write.
async fn apply(pool: &AnyPool, writes: &[Write]) -> Result<Vec<Vec<u64>>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut out = Vec::with_capacity(writes.len());
    for w in writes {
        let mut rows = Vec::with_capacity(w.0.len());
        for s in &w.0 {
            rows.push(
                bind(&s.sql, &s.args)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            );
        }
        out.push(rows);
    }
    tx.commit().await?;
    Ok(out)
}

/// SQLite's writer: takes what has queued up (up to `MAX_BATCH`), commits it at once,
/// and answers each; a failed batch is replayed one write at a time.
async fn write_loop(pool: AnyPool, mut rx: mpsc::UnboundedReceiver<(Write, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let writes: Vec<Write> = batch.iter().map(|(w, _)| w.clone()).collect();
        match apply(&pool, &writes).await {
            Ok(results) => {
                for ((_, reply), rows) in batch.into_iter().zip(results) {
                    let _ = reply.send(Ok(rows));
                }
            }
            Err(_) if batch.len() > 1 => {
                for (w, reply) in batch {
                    let r = apply(&pool, std::slice::from_ref(&w))
                        .await
                        .map(|mut r| r.pop().unwrap_or_default());
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                let (_, reply) = batch.pop().expect("one write");
                let _ = reply.send(Err(e));
            }
        }
    }
}
