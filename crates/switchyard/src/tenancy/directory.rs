//! Tenants and API keys: stored in the stateful layer's database, held in memory for
//! lookups that never touch the database on the request path, and kept current on
//! every replica by polling the database's feed of changes.
//!
//! - **Keys** are `sk-sy-<id>-<secret>`: a 64-bit id (not secret: it names the key in
//!   the admin API and the usage table) and a 256-bit secret from the OS. Only the
//!   SHA-256 of the whole key is stored. A fast hash is enough because the secret is
//!   random and long: nobody can try 2^256 candidates against a leaked hash, which is
//!   what slow password hashes (bcrypt, argon2) protect low-entropy passwords from, at a
//!   cost of milliseconds per request. A lookup goes by id (a hash map), then compares
//!   the hashes in constant time.
//! - **Changes** (create, update, revoke, delete) append to `tenancy_changes`. Every
//!   replica polls it every 250 ms and reloads what changed, so a revocation holds
//!   everywhere within about a quarter of a second, with or without Redis. A key used
//!   before its replica heard of it is read from the database once (a cache miss).

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;
use switchyard_stateful::store::{Store, Val, Write};

use super::limits::Limits;
use crate::state::Clock;

/// The prefix of every key the gateway issues.
pub const KEY_PREFIX: &str = "sk-sy-";

/// Where a tenant is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The admin API (stored in the database).
    Api,
    /// The YAML config (`tenants:`); read-only through the API.
    Config,
    /// The `default` tenant when nothing defines it: no limits.
    Implicit,
}

/// A tenant.
#[derive(Debug)]
pub struct Tenant {
    pub id: Arc<str>,
    pub name: String,
    pub limits: Arc<Limits>,
    /// Models its requests may name (`None`: any).
    pub allowed_models: Option<Arc<[String]>>,
    pub metadata: Value,
    /// Unix milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
    pub source: Source,
}

impl Tenant {
    pub fn implicit(id: &str) -> Tenant {
        Tenant {
            id: id.into(),
            name: id.to_string(),
            limits: Arc::default(),
            allowed_models: None,
            metadata: json!({}),
            created_at: 0,
            updated_at: 0,
            source: Source::Implicit,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "object": "tenant",
            "id": &*self.id,
            "name": self.name,
            "limits": &*self.limits,
            "allowed_models": self.allowed_models.as_deref(),
            "metadata": self.metadata,
            "created_at": self.created_at / 1000,
            "updated_at": self.updated_at / 1000,
            "source": match self.source {
                Source::Api => "api",
                Source::Config => "config",
                Source::Implicit => "implicit",
            },
        })
    }
}

/// A stored API key (never its secret).
#[derive(Debug)]
pub struct ApiKey {
    pub id: Arc<str>,
    pub tenant: Arc<str>,
    pub name: String,
    hash: [u8; 32],
    /// The key's own limits, on top of its tenant's.
    pub limits: Option<Arc<Limits>>,
    pub allowed_models: Option<Arc<[String]>>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix milliseconds.
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl ApiKey {
    /// Whether the key authenticates requests at `now_ms`.
    pub fn usable(&self, now_ms: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| e * 1000 > now_ms)
    }

    pub fn to_json(&self, now_ms: i64) -> Value {
        let status = if self.revoked_at.is_some() {
            "revoked"
        } else if !self.usable(now_ms) {
            "expired"
        } else {
            "active"
        };
        json!({
            "object": "api_key",
            "id": &*self.id,
            "tenant": &*self.tenant,
            "name": self.name,
            "prefix": format!("{KEY_PREFIX}{}", self.id),
            "limits": self.limits.as_deref(),
            "allowed_models": self.allowed_models.as_deref(),
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at.map(|t| t / 1000),
            "created_at": self.created_at / 1000,
            "status": status,
        })
    }
}

/// SHA-256 of a presented key.
pub fn key_hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Equal in time independent of where they differ.
pub fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The id part of an issued key (`sk-sy-<id>-<secret>`).
pub fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() == 64)
        .then_some(id)
}

/// A new key: its id and the whole secret string.
fn new_key() -> (String, String) {
    let random = |n: usize| {
        let mut b = vec![0u8; n];
        getrandom::fill(&mut b).expect("the OS random source");
        hex(&b)
    };
    let id = random(8);
    let key = format!("{KEY_PREFIX}{id}-{}", random(32));
    (id, key)
}

/// A tenant id: 1 to 64 of `A-Z a-z 0-9 _ . -`.
pub fn valid_tenant_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A tenant defined in the YAML config.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub allowed_models: Option<Vec<String>>,
}

/// A static key from the YAML config (`api_keys: [{key, tenant}]`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKey {
    pub key: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    super::DEFAULT_TENANT.to_string()
}

/// The directory of tenants and keys.
pub struct Directory {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    /// Static keys by hash: their tenant.
    statics: HashMap<[u8; 32], Arc<str>>,
    config_tenants: HashMap<Arc<str>, Arc<Tenant>>,
    tenants: RwLock<HashMap<Arc<str>, Arc<Tenant>>>,
    keys: RwLock<HashMap<Arc<str>, Arc<ApiKey>>>,
    /// A key was ever issued (then every request needs a key).
    stored_keys: AtomicBool,
    /// The newest change seen, and the changes applied within `LOOKBACK` of it.
    seen: Mutex<(i64, BTreeSet<i64>)>,
}

/// Changes re-read behind the last one seen: PostgreSQL may commit sequence numbers out
/// of order, so a change that was late to commit is still picked up.
const LOOKBACK: i64 = 64;

fn opt_json<T: serde::de::DeserializeOwned>(row: &sqlx::any::AnyRow, col: &str) -> Option<T> {
    row.try_get::<Option<String>, _>(col)
        .ok()
        .flatten()
        .and_then(|s| serde_json::from_str(&s).ok())
}

fn tenant_of(row: &sqlx::any::AnyRow) -> Tenant {
    Tenant {
        id: row.get::<String, _>("id").into(),
        name: row.get("name"),
        limits: Arc::new(opt_json(row, "limits").unwrap_or_default()),
        allowed_models: opt_json::<Vec<String>>(row, "allowed_models").map(Arc::from),
        metadata: opt_json(row, "metadata").unwrap_or_else(|| json!({})),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
        source: Source::Api,
    }
}

fn key_of(row: &sqlx::any::AnyRow) -> Option<ApiKey> {
    Some(ApiKey {
        id: row.get::<String, _>("id").into(),
        tenant: row.get::<String, _>("tenant").into(),
        name: row.get("name"),
        hash: unhex(&row.get::<String, _>("hash"))?,
        limits: opt_json::<Limits>(row, "limits").map(Arc::new),
        allowed_models: opt_json::<Vec<String>>(row, "allowed_models").map(Arc::from),
        expires_at: row.get("expires_at"),
        revoked_at: row.get("revoked_at"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

const TENANT_COLS: &str = "id, name, limits, allowed_models, metadata, created_at, updated_at";
const KEY_COLS: &str = "id, tenant, name, hash, limits, allowed_models, expires_at, revoked_at, created_at, updated_at";

/// What an admin call could not do.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database: {0}")]
    Store(#[from] switchyard_stateful::store::StoreError),
}

impl Directory {
    /// The directory with `config`'s tenants and static keys, its stored part loaded.
    pub async fn open(
        store: Arc<Store>,
        clock: Arc<dyn Clock>,
        config_tenants: &[TenantConfig],
        statics: &[StaticKey],
        api_key: Option<&str>,
    ) -> Result<Directory, switchyard_stateful::store::StoreError> {
        let mut st: HashMap<[u8; 32], Arc<str>> = statics
            .iter()
            .map(|k| (key_hash(&k.key), Arc::from(k.tenant.as_str())))
            .collect();
        if let Some(k) = api_key {
            st.insert(key_hash(k), Arc::from(super::DEFAULT_TENANT));
        }
        let config_tenants = config_tenants
            .iter()
            .map(|t| {
                let id: Arc<str> = t.id.as_str().into();
                let tenant = Tenant {
                    id: id.clone(),
                    name: t.name.clone().unwrap_or_else(|| t.id.clone()),
                    limits: Arc::new(t.limits.clone()),
                    allowed_models: t.allowed_models.clone().map(Arc::from),
                    metadata: json!({}),
                    created_at: 0,
                    updated_at: 0,
                    source: Source::Config,
                };
                (id, Arc::new(tenant))
            })
            .collect();
        let dir = Directory {
            store,
            clock,
            statics: st,
            config_tenants,
            tenants: RwLock::default(),
            keys: RwLock::default(),
            stored_keys: AtomicBool::new(false),
            seen: Mutex::default(),
        };
        dir.load_all().await?;
        Ok(dir)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    async fn load_all(&self) -> Result<(), switchyard_stateful::store::StoreError> {
        let seq = self
            .store
            .fetch_optional("SELECT MAX(seq) AS seq FROM tenancy_changes", &[])
            .await?
            .and_then(|r| r.try_get::<Option<i64>, _>("seq").ok().flatten())
            .unwrap_or(0);
        let tenants = self
            .store
            .fetch_all(&format!("SELECT {TENANT_COLS} FROM tenants"), &[])
            .await?;
        let keys = self
            .store
            .fetch_all(&format!("SELECT {KEY_COLS} FROM api_keys"), &[])
            .await?;
        *self.tenants.write().expect("tenants lock") = tenants
            .iter()
            .map(|r| {
                let t = tenant_of(r);
                (t.id.clone(), Arc::new(t))
            })
            .collect();
        *self.keys.write().expect("keys lock") = keys
            .iter()
            .filter_map(key_of)
            .map(|k| (k.id.clone(), Arc::new(k)))
            .collect();
        // Changes in the window were applied by this load; one committed late, with a
        // lower number than the newest, will come up in a poll as not yet applied.
        let recent = self
            .store
            .fetch_all(
                "SELECT seq FROM tenancy_changes WHERE seq > $1",
                &[Val::from(seq - LOOKBACK)],
            )
            .await?;
        *self.seen.lock().expect("seen lock") =
            (seq, recent.iter().map(|r| r.get::<i64, _>("seq")).collect());
        self.recount();
        Ok(())
    }

    /// Notes whether a key was ever issued. Revoked and expired keys count (they are
    /// never deleted): revoking the last key must not open the gateway to everyone.
    fn recount(&self) {
        let any = !self.keys.read().expect("keys lock").is_empty();
        self.stored_keys.store(any, Ordering::Release);
    }

    /// Whether requests need a key: a static one is configured, or one was ever issued.
    pub fn auth_required(&self) -> bool {
        !self.statics.is_empty() || self.stored_keys.load(Ordering::Acquire)
    }

    /// The tenant of a static key.
    pub fn static_key(&self, hash: &[u8; 32]) -> Option<Arc<str>> {
        // The map is keyed by hash; the hit is confirmed in constant time.
        self.statics
            .get_key_value(hash)
            .filter(|(k, _)| same_hash(k, hash))
            .map(|(_, t)| t.clone())
    }

    /// The stored key with this id: from memory, else (a key created on another replica
    /// moments ago) from the database.
    pub async fn key(
        &self,
        id: &str,
    ) -> Result<Option<Arc<ApiKey>>, switchyard_stateful::store::StoreError> {
        if let Some(k) = self.keys.read().expect("keys lock").get(id) {
            return Ok(Some(k.clone()));
        }
        let key = self.fetch_key(id).await?;
        // Its tenant may be as new to this replica as the key (and its limits with it):
        // read first, so the key is never cached without them.
        if let Some(k) = &key
            && self.tenant(&k.tenant).is_none()
        {
            self.reload_tenant(&k.tenant).await?;
        }
        self.cache_key(id, key.clone());
        Ok(key)
    }

    /// Checks a presented stored key: the key, if its hash matches and it is usable.
    pub fn verify(&self, key: &ApiKey, presented: &[u8; 32]) -> bool {
        same_hash(&key.hash, presented) && key.usable(self.clock.now_ms())
    }

    /// A tenant: stored, else configured, else the implicit `default`.
    pub fn tenant(&self, id: &str) -> Option<Arc<Tenant>> {
        if let Some(t) = self.tenants.read().expect("tenants lock").get(id) {
            return Some(t.clone());
        }
        self.config_tenants.get(id).cloned()
    }

    /// Every tenant known, stored ones first.
    pub fn tenants(&self) -> Vec<Arc<Tenant>> {
        let stored = self.tenants.read().expect("tenants lock");
        let mut all: Vec<Arc<Tenant>> = stored.values().cloned().collect();
        all.extend(
            self.config_tenants
                .values()
                .filter(|t| !stored.contains_key(&t.id))
                .cloned(),
        );
        all.sort_by(|a, b| a.id.cmp(&b.id));
        all
    }

    /// Every stored key (of `tenant`, when given), oldest first.
    pub fn keys(&self, tenant: Option<&str>) -> Vec<Arc<ApiKey>> {
        let mut out: Vec<Arc<ApiKey>> = self
            .keys
            .read()
            .expect("keys lock")
            .values()
            .filter(|k| tenant.is_none_or(|t| &*k.tenant == t))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    async fn reload_key(
        &self,
        id: &str,
    ) -> Result<Option<Arc<ApiKey>>, switchyard_stateful::store::StoreError> {
        let key = self.fetch_key(id).await?;
        self.cache_key(id, key.clone());
        Ok(key)
    }

    async fn fetch_key(
        &self,
        id: &str,
    ) -> Result<Option<Arc<ApiKey>>, switchyard_stateful::store::StoreError> {
        let row = self
            .store
            .fetch_optional(
                &format!("SELECT {KEY_COLS} FROM api_keys WHERE id = $1"),
                &[Val::from(id.to_string())],
            )
            .await?;
        Ok(row.as_ref().and_then(key_of).map(Arc::new))
    }

    fn cache_key(&self, id: &str, key: Option<Arc<ApiKey>>) {
        {
            let mut keys = self.keys.write().expect("keys lock");
            match key {
                Some(k) => {
                    keys.insert(k.id.clone(), k);
                }
                None => {
                    keys.remove(id);
                }
            }
        }
        self.recount();
    }

    async fn reload_tenant(&self, id: &str) -> Result<(), switchyard_stateful::store::StoreError> {
        let row = self
            .store
            .fetch_optional(
                &format!("SELECT {TENANT_COLS} FROM tenants WHERE id = $1"),
                &[Val::from(id.to_string())],
            )
            .await?;
        let mut tenants = self.tenants.write().expect("tenants lock");
        match row {
            Some(r) => {
                let t = tenant_of(&r);
                tenants.insert(t.id.clone(), Arc::new(t));
            }
            None => {
                tenants.remove(id);
            }
        }
        Ok(())
    }

    /// Applies the changes other replicas (or this one) made since the last poll.
    pub async fn poll(&self) -> Result<usize, switchyard_stateful::store::StoreError> {
        let from = self.seen.lock().expect("seen lock").0 - LOOKBACK;
        let rows = self
            .store
            .fetch_all(
                "SELECT seq, kind, id FROM tenancy_changes WHERE seq > $1 ORDER BY seq",
                &[Val::from(from)],
            )
            .await?;
        let mut applied = 0;
        for r in &rows {
            let seq: i64 = r.get("seq");
            if self.seen.lock().expect("seen lock").1.contains(&seq) {
                continue;
            }
            let (kind, id): (String, String) = (r.get("kind"), r.get("id"));
            match kind.as_str() {
                "key" => {
                    self.reload_key(&id).await?;
                }
                _ => self.reload_tenant(&id).await?,
            }
            let mut seen = self.seen.lock().expect("seen lock");
            seen.0 = seen.0.max(seq);
            seen.1.insert(seq);
            let floor = seen.0 - LOOKBACK;
            seen.1.retain(|s| *s > floor);
            applied += 1;
        }
        Ok(applied)
    }

    fn change(&self, w: Write, kind: &str, id: &str) -> Write {
        w.then(
            "INSERT INTO tenancy_changes (kind, id, at) VALUES ($1, $2, $3)",
            vec![
                Val::from(kind.to_string()),
                Val::from(id.to_string()),
                Val::from(self.clock.now_ms()),
            ],
        )
    }

    /// Applies an admin change together with its audit record, and logs the action
    /// once it is made (a refused or failed change leaves neither).
    async fn apply(
        &self,
        w: Write,
        audit: &Audit,
    ) -> Result<(), switchyard_stateful::store::StoreError> {
        let row = Write::one(
            "INSERT INTO audit_log (at, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)",
            vec![
                Val::from(self.clock.now_ms()),
                Val::from(audit.actor.clone()),
                Val::from(audit.action.to_string()),
                Val::from(audit.target.clone()),
                Val::from(audit.detail.to_string()),
            ],
        );
        self.store.write(w.and(row)).await?;
        tracing::info!(
            target: "switchyard::audit",
            actor = %audit.actor,
            action = audit.action,
            target = %audit.target,
            detail = %audit.detail,
            "admin action"
        );
        Ok(())
    }

    /// Creates a tenant (its id generated when not given).
    pub async fn create_tenant(
        &self,
        body: &Value,
        mut audit: Audit,
    ) -> Result<Arc<Tenant>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            id: Option<String>,
            name: Option<String>,
            #[serde(default)]
            limits: Limits,
            allowed_models: Option<Vec<String>>,
            metadata: Option<serde_json::Map<String, Value>>,
        }
        let c: Create = parse(body)?;
        let id =
            c.id.unwrap_or_else(|| crate::state::random_id("tn_")[..19].to_string());
        if !valid_tenant_id(&id) {
            return Err(AdminError::Invalid(
                "`id` must be 1 to 64 characters of A-Z, a-z, 0-9, `_`, `.` and `-`".into(),
            ));
        }
        c.limits.check().map_err(AdminError::Invalid)?;
        check_models(c.allowed_models.as_deref())?;
        if self
            .tenant(&id)
            .is_some_and(|t| t.source != Source::Implicit)
        {
            return Err(AdminError::Conflict(format!(
                "A tenant `{id}` already exists"
            )));
        }
        let now = self.clock.now_ms();
        let w = Write::one(
            "INSERT INTO tenants (id, name, limits, allowed_models, metadata, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
            vec![
                Val::from(id.clone()),
                Val::from(c.name.unwrap_or_else(|| id.clone())),
                Val::from(serde_json::to_string(&c.limits).expect("limits serialise")),
                Val::from(c.allowed_models.map(|m| json!(m).to_string())),
                Val::from(Value::Object(c.metadata.unwrap_or_default()).to_string()),
                Val::from(now),
            ],
        );
        audit.target = id.clone();
        self.apply(self.change(w, "tenant", &id), &audit)
            .await
            .map_err(|e| {
                if e.to_string().to_ascii_lowercase().contains("unique") {
                    AdminError::Conflict(format!("A tenant `{id}` already exists"))
                } else {
                    e.into()
                }
            })?;
        self.reload_tenant(&id).await?;
        self.tenant(&id)
            .ok_or_else(|| AdminError::NotFound(format!("No tenant `{id}`")))
    }

    /// A stored tenant, for changing it (a configured one cannot be changed here).
    fn stored_tenant(&self, id: &str) -> Result<Arc<Tenant>, AdminError> {
        match self.tenant(id) {
            Some(t) if t.source == Source::Api => Ok(t),
            Some(_) => Err(AdminError::Conflict(format!(
                "The tenant `{id}` is defined in the config file; change it there"
            ))),
            None => Err(AdminError::NotFound(format!("No tenant `{id}`"))),
        }
    }

    /// Changes a tenant's name, limits, allowed models or metadata.
    pub async fn update_tenant(
        &self,
        id: &str,
        body: &Value,
        audit: Audit,
    ) -> Result<Arc<Tenant>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Update {
            name: Option<String>,
            limits: Option<Limits>,
            #[serde(default)]
            allowed_models: Patch<Vec<String>>,
            metadata: Option<serde_json::Map<String, Value>>,
        }
        let u: Update = parse(body)?;
        let t = self.stored_tenant(id)?;
        if let Some(l) = &u.limits {
            l.check().map_err(AdminError::Invalid)?;
        }
        let models = u
            .allowed_models
            .apply(t.allowed_models.as_deref().map(<[String]>::to_vec));
        check_models(models.as_deref())?;
        let w = Write::one(
            "UPDATE tenants SET name = $2, limits = $3, allowed_models = $4, metadata = $5, updated_at = $6 WHERE id = $1",
            vec![
                Val::from(id.to_string()),
                Val::from(u.name.unwrap_or_else(|| t.name.clone())),
                Val::from(
                    serde_json::to_string(u.limits.as_ref().unwrap_or(&t.limits))
                        .expect("limits serialise"),
                ),
                Val::from(models.map(|m| json!(m).to_string())),
                Val::from(
                    u.metadata
                        .map_or_else(|| t.metadata.clone(), Value::Object)
                        .to_string(),
                ),
                Val::from(self.clock.now_ms()),
            ],
        );
        self.apply(self.change(w, "tenant", id), &audit).await?;
        self.reload_tenant(id).await?;
        self.tenant(id)
            .ok_or_else(|| AdminError::NotFound(format!("No tenant `{id}`")))
    }

    /// Deletes a tenant and revokes its keys.
    pub async fn delete_tenant(&self, id: &str, audit: Audit) -> Result<(), AdminError> {
        self.stored_tenant(id)?;
        let now = self.clock.now_ms();
        let mut w = Write::one("DELETE FROM tenants WHERE id = $1", vec![Val::from(id.to_string())]).then(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE tenant = $1 AND revoked_at IS NULL",
            vec![Val::from(id.to_string()), Val::from(now)],
        );
        w = self.change(w, "tenant", id);
        let keys = self.keys(Some(id));
        for k in &keys {
            w = self.change(w, "key", &k.id);
        }
        self.apply(w, &audit).await?;
        self.reload_tenant(id).await?;
        for k in keys {
            self.reload_key(&k.id).await?;
        }
        Ok(())
    }

    /// Issues a key: the stored key and its secret (shown this once).
    pub async fn create_key(
        &self,
        body: &Value,
        mut audit: Audit,
    ) -> Result<(Arc<ApiKey>, String), AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Create {
            tenant: String,
            name: Option<String>,
            expires_at: Option<i64>,
            limits: Option<Limits>,
            allowed_models: Option<Vec<String>>,
        }
        let c: Create = parse(body)?;
        if self.tenant(&c.tenant).is_none() && c.tenant != super::DEFAULT_TENANT {
            return Err(AdminError::NotFound(format!("No tenant `{}`", c.tenant)));
        }
        if let Some(l) = &c.limits {
            l.check().map_err(AdminError::Invalid)?;
        }
        check_models(c.allowed_models.as_deref())?;
        let now = self.clock.now_ms();
        if c.expires_at.is_some_and(|e| e * 1000 <= now) {
            return Err(AdminError::Invalid(
                "`expires_at` must be in the future (unix seconds)".into(),
            ));
        }
        let (id, secret) = new_key();
        let w = Write::one(
            "INSERT INTO api_keys (id, tenant, name, hash, limits, allowed_models, expires_at, revoked_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
            vec![
                Val::from(id.clone()),
                Val::from(c.tenant),
                Val::from(c.name.unwrap_or_default()),
                Val::from(hex(&key_hash(&secret))),
                Val::from(
                    c.limits
                        .map(|l| serde_json::to_string(&l).expect("limits serialise")),
                ),
                Val::from(c.allowed_models.map(|m| json!(m).to_string())),
                Val::Int(c.expires_at),
                Val::Int(None),
                Val::from(now),
            ],
        );
        audit.target = id.clone();
        self.apply(self.change(w, "key", &id), &audit).await?;
        let key = self
            .reload_key(&id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("No key `{id}`")))?;
        Ok((key, secret))
    }

    /// Changes a key's name, expiry, limits or allowed models.
    pub async fn update_key(
        &self,
        id: &str,
        body: &Value,
        audit: Audit,
    ) -> Result<Arc<ApiKey>, AdminError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Update {
            name: Option<String>,
            #[serde(default)]
            expires_at: Patch<i64>,
            #[serde(default)]
            limits: Patch<Limits>,
            #[serde(default)]
            allowed_models: Patch<Vec<String>>,
        }
        let u: Update = parse(body)?;
        let k = self
            .key(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("No key `{id}`")))?;
        let limits = u.limits.apply(k.limits.as_deref().cloned());
        if let Some(l) = &limits {
            l.check().map_err(AdminError::Invalid)?;
        }
        let models = u
            .allowed_models
            .apply(k.allowed_models.as_deref().map(<[String]>::to_vec));
        check_models(models.as_deref())?;
        let w = Write::one(
            "UPDATE api_keys SET name = $2, expires_at = $3, limits = $4, allowed_models = $5, updated_at = $6 WHERE id = $1",
            vec![
                Val::from(id.to_string()),
                Val::from(u.name.unwrap_or_else(|| k.name.clone())),
                Val::Int(u.expires_at.apply(k.expires_at)),
                Val::from(limits.map(|l| serde_json::to_string(&l).expect("limits serialise"))),
                Val::from(models.map(|m| json!(m).to_string())),
                Val::from(self.clock.now_ms()),
            ],
        );
        self.apply(self.change(w, "key", id), &audit).await?;
        self.reload_key(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("No key `{id}`")))
    }

    /// Revokes a key (kept, marked revoked, for the audit trail and usage).
    pub async fn revoke_key(&self, id: &str, audit: Audit) -> Result<Arc<ApiKey>, AdminError> {
        self.key(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("No key `{id}`")))?;
        let now = self.clock.now_ms();
        let w = Write::one(
            "UPDATE api_keys SET revoked_at = $2, updated_at = $2 WHERE id = $1 AND revoked_at IS NULL",
            vec![Val::from(id.to_string()), Val::from(now)],
        );
        self.apply(self.change(w, "key", id), &audit).await?;
        self.reload_key(id)
            .await?
            .ok_or_else(|| AdminError::NotFound(format!("No key `{id}`")))
    }
}

/// An admin action, for the audit table and log: who (`actor`), what, on which object.
#[derive(Clone, Debug)]
pub struct Audit {
    pub actor: String,
    pub action: &'static str,
    /// The object's id (a created one's is filled in once known).
    pub target: String,
    /// The request's fields worth keeping (never a secret).
    pub detail: Value,
}

/// A field of a PATCH body: absent (unchanged), `null` (cleared) or a value.
#[derive(Debug, Default)]
enum Patch<T> {
    #[default]
    Keep,
    Set(Option<T>),
}

impl<T> Patch<T> {
    fn apply(self, old: Option<T>) -> Option<T> {
        match self {
            Patch::Keep => old,
            Patch::Set(v) => v,
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Patch<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Patch::Set)
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &Value) -> Result<T, AdminError> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            AdminError::Invalid(format!("Invalid body: {inner}"))
        } else {
            AdminError::Invalid(format!("Invalid `{path}`: {inner}"))
        }
    })
}

fn check_models(models: Option<&[String]>) -> Result<(), AdminError> {
    match models {
        Some(m) if m.is_empty() || m.iter().any(|s| s.is_empty()) => Err(AdminError::Invalid(
            "`allowed_models` must list model names (null: any model)".into(),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_hash() {
        let (id, key) = new_key();
        assert_eq!(key_id(&key), Some(id.as_str()));
        assert_eq!(key.len(), KEY_PREFIX.len() + 16 + 1 + 64);
        assert_eq!(unhex(&hex(&key_hash(&key))), Some(key_hash(&key)));
        assert!(same_hash(&key_hash(&key), &key_hash(&key)));
        assert!(!same_hash(&key_hash(&key), &key_hash("other")));
        for bad in ["sk-sy-", "sk-sy-zz-00", "sk-other", &key[..key.len() - 1]] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
        assert!(
            valid_tenant_id("team-a.prod_1") && !valid_tenant_id("a b") && !valid_tenant_id("")
        );
    }
}
