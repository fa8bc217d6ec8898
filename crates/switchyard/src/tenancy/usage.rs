//! Usage accounting: requests, input, cached and output tokens, and errors per tenant,
//! key, model and hour. Requests add to counters in memory; a background task writes
//! them to the database every `--usage-flush-secs` as one batch of upserts, never on
//! the request path. A crash loses at most the last interval's counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use sqlx::Row;
use switchyard_stateful::store::{Store, Val, Write};

/// What one row counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    pub input: u64,
    pub cached: u64,
    pub output: u64,
    pub errors: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.requests += o.requests;
        self.input += o.input;
        self.cached += o.cached;
        self.output += o.output;
        self.errors += o.errors;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Row4 {
    tenant: Arc<str>,
    key: Arc<str>,
    model: Arc<str>,
    /// Unix seconds of the hour's start.
    hour: i64,
}

/// Counts not yet written.
#[derive(Default)]
pub struct Usage {
    pending: Mutex<HashMap<Row4, Counts>>,
}

/// Rows one flush writes at most per statement batch.
const FLUSH_CHUNK: usize = 500;

impl Usage {
    /// Counts one request.
    pub fn record(
        &self,
        tenant: &Arc<str>,
        key: &Arc<str>,
        model: &Arc<str>,
        now_ms: i64,
        c: Counts,
    ) {
        let row = Row4 {
            tenant: tenant.clone(),
            key: key.clone(),
            model: model.clone(),
            hour: now_ms.div_euclid(3_600_000) * 3600,
        };
        self.pending
            .lock()
            .expect("usage lock")
            .entry(row)
            .or_default()
            .add(&c);
    }

    /// Writes the pending counts (added to what the rows hold). Counts a failed write
    /// could not store are put back for the next flush.
    pub async fn flush(
        &self,
        store: &Store,
    ) -> Result<usize, switchyard_stateful::store::StoreError> {
        let pending: Vec<(Row4, Counts)> =
            std::mem::take(&mut *self.pending.lock().expect("usage lock"))
                .into_iter()
                .collect();
        let n = pending.len();
        for chunk in pending.chunks(FLUSH_CHUNK) {
            let mut w = Write(Vec::new());
            for (r, c) in chunk {
                w = w.then(
                    "INSERT INTO tenant_usage (tenant, key_id, model, hour, requests, input_tokens, cached_tokens, output_tokens, errors) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (tenant, key_id, model, hour) DO UPDATE SET \
                     requests = tenant_usage.requests + excluded.requests, \
                     input_tokens = tenant_usage.input_tokens + excluded.input_tokens, \
                     cached_tokens = tenant_usage.cached_tokens + excluded.cached_tokens, \
                     output_tokens = tenant_usage.output_tokens + excluded.output_tokens, \
                     errors = tenant_usage.errors + excluded.errors",
                    vec![
                        Val::from(r.tenant.to_string()),
                        Val::from(r.key.to_string()),
                        Val::from(r.model.to_string()),
                        Val::from(r.hour),
                        Val::from(c.requests as i64),
                        Val::from(c.input as i64),
                        Val::from(c.cached as i64),
                        Val::from(c.output as i64),
                        Val::from(c.errors as i64),
                    ],
                );
            }
            if let Err(e) = store.write(w).await {
                let mut p = self.pending.lock().expect("usage lock");
                for (r, c) in chunk {
                    p.entry(r.clone()).or_default().add(c);
                }
                return Err(e);
            }
        }
        Ok(n)
    }
}

/// `GET /admin/usage` filters and grouping.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub tenant: Option<String>,
    pub key: Option<String>,
    pub model: Option<String>,
    /// Unix seconds, inclusive.
    pub from: Option<i64>,
    /// Unix seconds, exclusive.
    pub to: Option<i64>,
    /// `hour` (default), `day`, `model` or `key`; rows are always per tenant too.
    pub group_by: Option<String>,
}

/// Tokens `tenant` (and `key`, when given) used since `since_s` (unix seconds), from the
/// stored rows: what a budget counted before a restart.
pub async fn used_since(
    store: &Store,
    tenant: &str,
    key: Option<&str>,
    since_s: i64,
) -> Result<u64, switchyard_stateful::store::StoreError> {
    let (sql, args) = match key {
        Some(k) => (
            "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS used FROM tenant_usage WHERE tenant = $1 AND key_id = $2 AND hour >= $3",
            vec![
                Val::from(tenant.to_string()),
                Val::from(k.to_string()),
                Val::from(since_s),
            ],
        ),
        None => (
            "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT) AS used FROM tenant_usage WHERE tenant = $1 AND hour >= $2",
            vec![Val::from(tenant.to_string()), Val::from(since_s)],
        ),
    };
    let row = store.fetch_optional(sql, &args).await?;
    Ok(row.map_or(0, |r| {
        r.try_get::<i64, _>("used").unwrap_or(0).max(0) as u64
    }))
}

/// The stored usage matching `q`, grouped as it asks.
pub async fn query(store: &Store, q: &UsageQuery) -> Result<Value, String> {
    let group = q.group_by.as_deref().unwrap_or("hour");
    let (col, label) = match group {
        "hour" => ("hour", "period_start"),
        "day" => ("(hour - (hour % 86400))", "period_start"),
        "model" => ("model", "model"),
        "key" => ("key_id", "key"),
        other => {
            return Err(format!(
                "`group_by` must be hour, day, model or key, not `{other}`"
            ));
        }
    };
    let mut filters = Vec::new();
    let mut args = Vec::new();
    let mut add = |sql: &str, v: Val| {
        args.push(v);
        filters.push(format!("{sql} ${}", args.len()));
    };
    if let Some(t) = &q.tenant {
        add("tenant =", Val::from(t.clone()));
    }
    if let Some(k) = &q.key {
        add("key_id =", Val::from(k.clone()));
    }
    if let Some(m) = &q.model {
        add("model =", Val::from(m.clone()));
    }
    if let Some(f) = q.from {
        add("hour >=", Val::from(f.div_euclid(3600) * 3600));
    }
    if let Some(t) = q.to {
        add("hour <", Val::from(t));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", filters.join(" AND "))
    };
    let sql = format!(
        "SELECT tenant, {col} AS g, \
         CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(input_tokens) AS BIGINT) AS input_tokens, \
         CAST(SUM(cached_tokens) AS BIGINT) AS cached_tokens, CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, \
         CAST(SUM(errors) AS BIGINT) AS errors \
         FROM tenant_usage {filter} GROUP BY tenant, {col} ORDER BY tenant, {col}"
    );
    let rows = store
        .fetch_all(&sql, &args)
        .await
        .map_err(|e| e.to_string())?;
    let data: Vec<Value> = rows
        .iter()
        .map(|r| {
            let g: Value = if matches!(group, "hour" | "day") {
                json!(r.get::<i64, _>("g"))
            } else {
                json!(r.get::<String, _>("g"))
            };
            json!({
                "tenant": r.get::<String, _>("tenant"),
                label: g,
                "requests": r.get::<i64, _>("requests"),
                "input_tokens": r.get::<i64, _>("input_tokens"),
                "cached_tokens": r.get::<i64, _>("cached_tokens"),
                "output_tokens": r.get::<i64, _>("output_tokens"),
                "errors": r.get::<i64, _>("errors"),
            })
        })
        .collect();
    Ok(json!({"object": "list", "group_by": group, "data": data}))
}
