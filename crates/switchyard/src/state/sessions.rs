//! `/route` sessions: which use case and model a conversation was routed to, its recent
//! turns, and when it was last used. A session lives `session_timeout_secs` after its
//! last write; a user holds at most `max_sessions_per_user` (creating one more evicts
//! that user's least recently used). Reading a session does not extend it; every
//! `/route` turn writes it back, which does.
//!
//! Backends: [`Memory`] (bounded LRU, the default) and [`Redis`] (one hash per session
//! with a Redis TTL, and a sorted set per user ordered by last use), so replicas that
//! share a Redis share sessions.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use lru::LruCache;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::redis::{Op, Pool};
use super::{Clock, StateConfig, StateError, rfc3339};

/// One message of a session's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: String,
    pub content: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    pub session_id: String,
    pub user_id: Option<String>,
    pub use_case: String,
    pub model_id: String,
    /// The worker that served the last turn: its opaque id, never its URL.
    pub endpoint: Option<String>,
    pub confidence: f64,
    pub request_count: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub last_accessed: i64,
    pub bypass_enabled: bool,
    /// The modality of the last routed turn (`text`, `image`, `audio`, `video`).
    pub modality: String,
    /// The most recent messages, oldest first.
    pub turns: Vec<Turn>,
}

impl Session {
    /// The session as the API shows it (times in RFC 3339).
    pub fn to_json(&self) -> Value {
        json!({
            "session_id": self.session_id,
            "user_id": self.user_id,
            "use_case": self.use_case,
            "model_id": self.model_id,
            "endpoint": self.endpoint,
            "confidence": self.confidence,
            "request_count": self.request_count,
            "created_at": rfc3339(self.created_at),
            "last_accessed": rfc3339(self.last_accessed),
            "bypass_enabled": self.bypass_enabled,
            "modality": self.modality,
            "turns": self.turns,
        })
    }

    /// The hash fields of the Redis backend.
    fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("session_id", self.session_id.clone()),
            ("user_id", self.user_id.clone().unwrap_or_default()),
            ("use_case", self.use_case.clone()),
            ("model_id", self.model_id.clone()),
            ("endpoint", self.endpoint.clone().unwrap_or_default()),
            ("confidence", self.confidence.to_string()),
            ("request_count", self.request_count.to_string()),
            ("created_at", self.created_at.to_string()),
            ("last_accessed", self.last_accessed.to_string()),
            ("bypass_enabled", u8::from(self.bypass_enabled).to_string()),
            ("modality", self.modality.clone()),
            (
                "turns",
                serde_json::to_string(&self.turns).unwrap_or_else(|_| "[]".into()),
            ),
        ]
    }

    /// A session from its hash fields; `None` for an empty hash (no such key).
    fn from_fields(mut f: HashMap<String, String>) -> Result<Option<Session>, StateError> {
        if f.is_empty() {
            return Ok(None);
        }
        let mut take = |k: &str| f.remove(k).unwrap_or_default();
        let bad = |k: &str| StateError(format!("stored session has a bad `{k}`"));
        let opt = |s: String| (!s.is_empty()).then_some(s);
        Ok(Some(Session {
            session_id: take("session_id"),
            user_id: opt(take("user_id")),
            use_case: take("use_case"),
            model_id: take("model_id"),
            endpoint: opt(take("endpoint")),
            confidence: take("confidence").parse().map_err(|_| bad("confidence"))?,
            request_count: take("request_count")
                .parse()
                .map_err(|_| bad("request_count"))?,
            created_at: take("created_at").parse().map_err(|_| bad("created_at"))?,
            last_accessed: take("last_accessed")
                .parse()
                .map_err(|_| bad("last_accessed"))?,
            bypass_enabled: take("bypass_enabled") == "1",
            modality: take("modality"),
            turns: serde_json::from_str(&take("turns")).map_err(|_| bad("turns"))?,
        }))
    }
}

/// A page of a user's sessions, most recently used first.
#[derive(Debug)]
pub struct Page {
    pub sessions: Vec<Session>,
    /// The user's live sessions in all.
    pub total: usize,
}

/// Where sessions are kept.
pub trait SessionStore: Send + Sync {
    /// The live session `id`.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StateError>>;

    /// Writes `session` and extends its life; `created` also applies the per-user bound.
    /// Returns how many of the user's other sessions were evicted for it.
    fn put<'a>(
        &'a self,
        session: &'a Session,
        created: bool,
    ) -> BoxFuture<'a, Result<usize, StateError>>;

    /// Removes `id`; whether it was there.
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StateError>>;

    /// `user`'s live sessions, most recently used first, from `offset`.
    fn list<'a>(
        &'a self,
        user: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StateError>>;
}

/// The in-memory backend.
pub struct Memory {
    inner: Mutex<MemoryInner>,
    clock: Arc<dyn Clock>,
    ttl_ms: i64,
    per_user: usize,
}

struct MemoryInner {
    sessions: LruCache<String, Session>,
    users: HashMap<String, HashSet<String>>,
}

impl MemoryInner {
    fn forget(&mut self, s: &Session) {
        if let Some(u) = &s.user_id
            && let Some(ids) = self.users.get_mut(u)
        {
            ids.remove(&s.session_id);
            if ids.is_empty() {
                self.users.remove(u);
            }
        }
    }

    /// `id` if it is live; an expired one is dropped.
    fn live(&mut self, id: &str, now: i64, ttl: i64) -> Option<&Session> {
        let expired = self.sessions.peek(id)?.last_accessed + ttl <= now;
        if expired {
            if let Some(s) = self.sessions.pop(id) {
                self.forget(&s);
            }
            return None;
        }
        self.sessions.peek(id)
    }

    /// `user`'s live sessions, most recently used first.
    fn of_user(&mut self, user: &str, now: i64, ttl: i64) -> Vec<Session> {
        let ids: Vec<String> = self
            .users
            .get(user)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        let mut out: Vec<Session> = ids
            .iter()
            .filter_map(|id| self.live(id, now, ttl).cloned())
            .collect();
        out.sort_by(|a, b| {
            b.last_accessed
                .cmp(&a.last_accessed)
                .then_with(|| a.session_id.cmp(&b.session_id))
        });
        out
    }
}

impl Memory {
    pub fn new(cfg: &StateConfig, clock: Arc<dyn Clock>) -> Memory {
        let cap = std::num::NonZeroUsize::new(cfg.max_sessions.max(1)).expect("at least 1");
        Memory {
            inner: Mutex::new(MemoryInner {
                sessions: LruCache::new(cap),
                users: HashMap::new(),
            }),
            clock,
            ttl_ms: ttl_ms(cfg.session_ttl),
            per_user: cfg.max_sessions_per_user.max(1),
        }
    }

    fn put_now(&self, s: &Session, created: bool) -> usize {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        if let (true, Some(user)) = (created, &s.user_id) {
            let mine = inner.of_user(user, now, self.ttl_ms);
            for old in mine.iter().skip(self.per_user.saturating_sub(1)).rev() {
                if old.session_id != s.session_id {
                    inner.sessions.pop(&old.session_id);
                    inner.forget(old);
                    evicted += 1;
                }
            }
        }
        if let Some((_, old)) = inner.sessions.push(s.session_id.clone(), s.clone())
            && old.session_id != s.session_id
        {
            inner.forget(&old);
        }
        if let Some(u) = &s.user_id {
            inner
                .users
                .entry(u.clone())
                .or_default()
                .insert(s.session_id.clone());
        }
        evicted
    }
}

fn ttl_ms(ttl: Duration) -> i64 {
    (ttl.as_millis() as i64).max(1)
}

impl SessionStore for Memory {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StateError>> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let found = inner.live(id, now, self.ttl_ms).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(
        &'a self,
        session: &'a Session,
        created: bool,
    ) -> BoxFuture<'a, Result<usize, StateError>> {
        Box::pin(std::future::ready(Ok(self.put_now(session, created))))
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let was = inner.live(id, now, self.ttl_ms).is_some();
        if let Some(s) = inner.sessions.pop(id) {
            inner.forget(&s);
        }
        Box::pin(std::future::ready(Ok(was)))
    }

    fn list<'a>(
        &'a self,
        user: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StateError>> {
        let now = self.clock.now_ms();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let all = inner.of_user(user, now, self.ttl_ms);
        let total = all.len();
        let sessions = all.into_iter().skip(offset).take(limit).collect();
        Box::pin(std::future::ready(Ok(Page { sessions, total })))
    }
}

/// The Redis backend: `{prefix}:session:{id}` is a hash with a TTL;
/// `{prefix}:user_sessions:{user}` a sorted set of the user's session ids scored by
/// last use (members whose hash expired are pruned on the next write or read).
pub struct Redis {
    pool: Arc<Pool>,
    ttl_ms: i64,
    per_user: usize,
}

impl Redis {
    pub fn new(pool: Arc<Pool>, cfg: &StateConfig) -> Redis {
        Redis {
            pool,
            ttl_ms: ttl_ms(cfg.session_ttl),
            per_user: cfg.max_sessions_per_user.max(1),
        }
    }

    fn session_key(&self, id: &str) -> String {
        self.pool.key(&format!("session:{id}"))
    }

    fn user_key(&self, user: &str) -> String {
        self.pool.key(&format!("user_sessions:{user}"))
    }
}

impl SessionStore for Redis {
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StateError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(self.session_key(id));
            let fields: HashMap<String, String> = self.pool.query("HGETALL", Op::Cmd(&cmd)).await?;
            Session::from_fields(fields)
        })
    }

    fn put<'a>(
        &'a self,
        s: &'a Session,
        created: bool,
    ) -> BoxFuture<'a, Result<usize, StateError>> {
        Box::pin(async move {
            let key = self.session_key(&s.session_id);
            let ttl = self.ttl_ms;
            let mut p = redis::pipe();
            p.atomic();
            p.cmd("HSET").arg(&key).arg(&s.fields()[..]).ignore();
            p.cmd("PEXPIRE").arg(&key).arg(ttl).ignore();
            let Some(uk) = s.user_id.as_deref().map(|u| self.user_key(u)) else {
                self.pool.query::<()>("session write", Op::Pipe(&p)).await?;
                return Ok(0);
            };
            p.cmd("ZADD")
                .arg(&uk)
                .arg(s.last_accessed)
                .arg(&s.session_id)
                .ignore();
            p.cmd("ZREMRANGEBYSCORE")
                .arg(&uk)
                .arg("-inf")
                .arg(format!("({}", s.last_accessed - ttl))
                .ignore();
            p.cmd("PEXPIRE").arg(&uk).arg(ttl).ignore();
            // Oldest first: what the bound evicts.
            p.cmd("ZRANGE").arg(&uk).arg(0).arg(-1);
            let (ids,): (Vec<String>,) = self.pool.query("session write", Op::Pipe(&p)).await?;
            if !created {
                return Ok(0);
            }
            let over = ids.len().saturating_sub(self.per_user);
            let evict: Vec<String> = ids
                .into_iter()
                .filter(|id| *id != s.session_id)
                .take(over)
                .collect();
            if evict.is_empty() {
                return Ok(0);
            }
            let keys: Vec<String> = evict.iter().map(|id| self.session_key(id)).collect();
            let mut p = redis::pipe();
            p.atomic();
            p.cmd("DEL").arg(&keys[..]).ignore();
            p.cmd("ZREM").arg(&uk).arg(&evict[..]).ignore();
            self.pool
                .query::<()>("session eviction", Op::Pipe(&p))
                .await?;
            Ok(evict.len())
        })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            let Some(s) = self.get(id).await? else {
                return Ok(false);
            };
            let mut p = redis::pipe();
            p.atomic();
            p.cmd("DEL").arg(self.session_key(id));
            if let Some(u) = s.user_id.as_deref() {
                p.cmd("ZREM").arg(self.user_key(u)).arg(id).ignore();
            }
            let (n,): (usize,) = self.pool.query("session delete", Op::Pipe(&p)).await?;
            Ok(n > 0)
        })
    }

    fn list<'a>(
        &'a self,
        user: &'a str,
        offset: usize,
        limit: usize,
    ) -> BoxFuture<'a, Result<Page, StateError>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("ZREVRANGE");
            cmd.arg(self.user_key(user)).arg(0).arg(-1);
            let ids: Vec<String> = self.pool.query("session list", Op::Cmd(&cmd)).await?;
            // Members whose hash has expired are skipped (and pruned by the next write).
            let mut live = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(s) = self.get(id).await? {
                    live.push(s);
                }
            }
            let total = live.len();
            let sessions = live.into_iter().skip(offset).take(limit).collect();
            Ok(Page { sessions, total })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::testing::ManualClock;
    use std::sync::atomic::AtomicI64;

    fn cfg(max: usize, per_user: usize) -> StateConfig {
        StateConfig {
            redis_url: None,
            redis_prefix: "t".into(),
            redis_pool_size: 1,
            redis_timeout: Duration::from_secs(1),
            session_ttl: Duration::from_secs(60),
            max_sessions: max,
            max_sessions_per_user: per_user,
        }
    }

    fn session(id: &str, user: Option<&str>, at: i64) -> Session {
        Session {
            session_id: id.into(),
            user_id: user.map(str::to_string),
            use_case: "agent".into(),
            model_id: "m".into(),
            endpoint: None,
            confidence: 0.5,
            request_count: 1,
            created_at: at,
            last_accessed: at,
            bypass_enabled: true,
            modality: "text".into(),
            turns: vec![Turn {
                role: "user".into(),
                content: "hi".into(),
            }],
        }
    }

    #[tokio::test]
    async fn memory_sessions_expire_after_the_ttl_from_their_last_write() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_000_000)));
        let store = Memory::new(&cfg(10, 10), clock.clone());
        store
            .put(&session("a", None, 1_000_000), true)
            .await
            .unwrap();
        clock.advance(59_999);
        assert!(store.get("a").await.unwrap().is_some());
        // A write at 59.999 s extends it by a full TTL from then.
        store
            .put(&session("a", None, 1_059_999), false)
            .await
            .unwrap();
        clock.advance(59_999);
        assert!(store.get("a").await.unwrap().is_some());
        clock.advance(1);
        assert!(store.get("a").await.unwrap().is_none());
        assert!(!store.delete("a").await.unwrap());
    }

    #[tokio::test]
    async fn memory_bounds_sessions_per_user_and_in_all() {
        let clock = Arc::new(ManualClock(AtomicI64::new(0)));
        let store = Memory::new(&cfg(3, 2), clock.clone());
        store
            .put(&session("u1", Some("ann"), 1), true)
            .await
            .unwrap();
        store
            .put(&session("u2", Some("ann"), 2), true)
            .await
            .unwrap();
        // A third session of ann's evicts her least recently used.
        assert_eq!(
            store
                .put(&session("u3", Some("ann"), 3), true)
                .await
                .unwrap(),
            1
        );
        let page = store.list("ann", 0, 10).await.unwrap();
        let ids: Vec<_> = page
            .sessions
            .iter()
            .map(|s| s.session_id.as_str())
            .collect();
        assert_eq!(ids, ["u3", "u2"]);
        // Paging.
        let page = store.list("ann", 1, 1).await.unwrap();
        assert_eq!(
            (page.total, page.sessions[0].session_id.as_str()),
            (2, "u2")
        );
        // The global LRU bound (3) drops the least recently used session of anyone.
        store
            .put(&session("b1", Some("bob"), 4), true)
            .await
            .unwrap();
        store
            .put(&session("b2", Some("bob"), 5), true)
            .await
            .unwrap();
        assert!(store.get("u2").await.unwrap().is_none());
        assert_eq!(store.list("ann", 0, 10).await.unwrap().total, 1);
        assert!(store.delete("b1").await.unwrap());
        assert_eq!(store.list("bob", 0, 10).await.unwrap().total, 1);
    }

    #[test]
    fn redis_fields_round_trip() {
        let mut s = session("x", Some("u"), 42);
        s.endpoint = Some("w-1".into());
        let fields = s
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(Session::from_fields(fields).unwrap(), Some(s));
        assert_eq!(Session::from_fields(HashMap::new()).unwrap(), None);
    }
}
