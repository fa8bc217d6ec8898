//! Search in vector stores (docs/files-and-vector-stores.md, "Search and scores"):
//! hybrid retrieval — the chunks nearest the query's embedding (cosine distance:
//! sqlite-vec, or pgvector over an HNSW index) and the best keyword matches (SQLite FTS5's
//! BM25, or PostgreSQL's `ts_rank_cd` over a `tsvector`) — fused by reciprocal rank.
//!
//! - Each list (dense and keyword, per query and per store) contributes `1 / (60 + rank)`
//!   to a chunk's fused score; the score returned is that sum over its best possible
//!   value (first in every list), so it lies in (0, 1] and 1 means "first by meaning and
//!   by words for every query".
//! - `ranker: "none"` skips fusion: the dense list alone, scored by cosine similarity
//!   (1 − cosine distance, best over the queries).
//! - `score_threshold` drops results below it; `max_num_results` (1–50) caps them.
//! - `filters` select files by their attributes before ranking.
//! - Only `completed` files are searched (only they have chunks): a store still
//!   ingesting answers from what is ready.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use sqlx::Row;

use super::embed::{to_blob, to_text};
use super::filter::Filter;
use super::stores::{VectorStores, bad, object_body};
use crate::responses::service::ServiceError;
use crate::store::{Backend, Val};

/// Reciprocal rank fusion's constant (the usual 60).
const RRF_K: f64 = 60.0;

/// How results are ranked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dense and keyword lists fused by reciprocal rank (the default).
    Hybrid,
    /// The dense list alone, scored by cosine similarity (`ranker: "none"`).
    Dense,
    /// The keyword list alone (for measuring retrieval; not in the API).
    Keyword,
}

/// A search's settings, checked.
#[derive(Clone, Debug)]
pub struct SearchOptions {
    pub max_results: usize,
    pub filter: Option<Filter>,
    pub score_threshold: f64,
    pub mode: Mode,
    pub rewrite: bool,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            max_results: 10,
            filter: None,
            score_threshold: 0.0,
            mode: Mode::Hybrid,
            rewrite: false,
        }
    }
}

impl SearchOptions {
    /// From a search body or a `file_search` tool: `max_num_results` (1–50), `filters`,
    /// `ranking_options` (`ranker`, `score_threshold` 0–1) and `rewrite_query`; errors
    /// name the field under `prefix`.
    pub fn parse(o: &Map<String, Value>, prefix: &str) -> Result<SearchOptions, ServiceError> {
        let p = |f: &str| format!("{prefix}{f}");
        let mut out = SearchOptions::default();
        match o.get("max_num_results") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=50).contains(&n) => out.max_results = n as usize,
                _ => {
                    return Err(bad(
                        &p("max_num_results"),
                        "`max_num_results` must be an integer from 1 to 50",
                    ));
                }
            },
        }
        if let Some(f) = o.get("filters").filter(|f| !f.is_null()) {
            out.filter =
                Some(Filter::parse(f, &p("filters")).map_err(|(param, m)| bad(&param, m))?);
        }
        if let Some(r) = o.get("ranking_options").filter(|r| !r.is_null()) {
            let Some(r) = r.as_object() else {
                return Err(bad(
                    &p("ranking_options"),
                    "`ranking_options` must be an object",
                ));
            };
            match r.get("ranker").map(|v| v.as_str()) {
                None | Some(Some("auto" | "default-2024-11-15")) => {}
                Some(Some("none")) => out.mode = Mode::Dense,
                _ => {
                    return Err(bad(
                        &p("ranking_options.ranker"),
                        "`ranker` must be auto, default-2024-11-15 or none",
                    ));
                }
            }
            if let Some(t) = r.get("score_threshold").filter(|t| !t.is_null()) {
                match t.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => out.score_threshold = x,
                    _ => {
                        return Err(bad(
                            &p("ranking_options.score_threshold"),
                            "`score_threshold` must be a number from 0 to 1",
                        ));
                    }
                }
            }
        }
        match o.get("rewrite_query") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => out.rewrite = *b,
            Some(_) => {
                return Err(bad(
                    &p("rewrite_query"),
                    "`rewrite_query` must be a boolean",
                ));
            }
        }
        Ok(out)
    }
}

/// One result: a chunk.
#[derive(Clone, Debug, PartialEq)]
pub struct Hit {
    pub store_id: String,
    pub file_id: String,
    pub filename: String,
    pub score: f64,
    pub attributes: Value,
    pub text: String,
}

impl Hit {
    pub fn json(&self) -> Value {
        json!({
            "file_id": self.file_id, "filename": self.filename, "score": self.score,
            "attributes": self.attributes,
            "content": [{"type": "text", "text": self.text}],
        })
    }
}

/// Words that carry no meaning for a keyword search (dropped from keyword queries, and
/// from a query `rewrite_query` rewrites).
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "could", "did", "do", "does",
    "for", "from", "has", "have", "how", "i", "in", "is", "it", "its", "me", "my", "of", "on",
    "or", "our", "please", "should", "tell", "that", "the", "their", "there", "these", "this",
    "to", "was", "we", "were", "what", "when", "where", "which", "who", "whom", "why", "will",
    "with", "would", "you", "your",
];

/// The query's words, lowercased, without stopwords, each once.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = w.to_lowercase();
        if !STOPWORDS.contains(&w.as_str()) && !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

/// `rewrite_query`: the question reduced to its search terms (documented: a rule, not a
/// model — predictable and free).
pub fn rewrite(query: &str) -> String {
    let t = terms(query);
    if t.is_empty() {
        query.to_string()
    } else {
        t.join(" ")
    }
}

/// Keyword search leaves out a query's terms that occur in more than half of the
/// chunks, once there are this many chunks. BM25 gives such a term no weight (its
/// inverse document frequency is at most zero; FTS5 clamps it to a millionth), so the
/// ranking hardly changes, but matching it means ranking nearly every chunk. Small
/// tables keep every term: there it costs nothing, and every match keeps its place in
/// the fused ranking. A query whose terms are all common keeps them all.
pub(crate) const COMMON_TERMS_FROM: i64 = 10_000;

/// How long counts of chunks and terms are trusted (they move slowly).
const COUNTS_TTL: i64 = 60;

/// Remembered counts for leaving out common terms, with when each was read.
#[derive(Default)]
pub(crate) struct TermCounts {
    /// SQLite: the chunks, all stores together (as BM25 counts them).
    chunks: Option<(i64, i64)>,
    /// SQLite: the chunks holding each term.
    terms: HashMap<String, (i64, i64)>,
    /// PostgreSQL: the lexemes in more than half of the chunks, from the planner's
    /// statistics of the `tsv` column (empty below [`COMMON_TERMS_FROM`] chunks).
    common: Option<(std::collections::HashSet<String>, i64)>,
}

/// A `tsquery` matching any of `lexemes`, quoted so they are taken as they are.
fn lexeme_query(lexemes: &[String]) -> String {
    lexemes
        .iter()
        .map(|l| format!("'{}'", l.replace('\\', "\\\\").replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(" | ")
}

impl VectorStores {
    /// SQLite: `terms` without those in more than half of the chunks (see
    /// [`COMMON_TERMS_FROM`]), counted by FTS5's vocabulary table.
    async fn uncommon(&self, terms: Vec<String>) -> Result<Vec<String>, ServiceError> {
        let now = (self.now)();
        let fresh = |at: i64| now - at < COUNTS_TTL;
        let cached = self.term_counts.lock().expect("term counts").chunks;
        let chunks = match cached {
            Some((n, at)) if fresh(at) => n,
            _ => {
                let n: i64 = match self
                    .store
                    .fetch_optional("SELECT COUNT(*) AS n FROM vector_store_chunks", &[])
                    .await?
                {
                    Some(r) => r.get("n"),
                    None => 0,
                };
                self.term_counts.lock().expect("term counts").chunks = Some((n, now));
                n
            }
        };
        if chunks < self.common_terms_from {
            return Ok(terms);
        }
        let missing: Vec<&String> = {
            let c = self.term_counts.lock().expect("term counts");
            terms
                .iter()
                .filter(|t| !c.terms.get(*t).is_some_and(|(_, at)| fresh(*at)))
                .collect()
        };
        if !missing.is_empty() {
            let rows = self
                .store
                .fetch_all(
                    "SELECT term, doc FROM vector_store_chunks_vocab \
                     WHERE term IN (SELECT value FROM json_each($1))",
                    &[json!(missing).to_string().into()],
                )
                .await?;
            let found: HashMap<String, i64> =
                rows.iter().map(|r| (r.get("term"), r.get("doc"))).collect();
            let mut c = self.term_counts.lock().expect("term counts");
            if c.terms.len() > 100_000 {
                c.terms.clear();
            }
            for t in missing {
                c.terms
                    .insert(t.clone(), (found.get(t).copied().unwrap_or(0), now));
            }
        }
        let c = self.term_counts.lock().expect("term counts");
        let kept: Vec<String> = terms
            .iter()
            .filter(|t| c.terms.get(*t).map_or(0, |(n, _)| *n) * 2 <= chunks)
            .cloned()
            .collect();
        Ok(if kept.is_empty() { terms } else { kept })
    }

    /// PostgreSQL: the lexemes of `terms` without the common ones (see
    /// [`COMMON_TERMS_FROM`]), or `None` when none is left out.
    async fn uncommon_lexemes(
        &self,
        terms: &[String],
    ) -> Result<Option<Vec<String>>, ServiceError> {
        let now = (self.now)();
        let cached = self.term_counts.lock().expect("term counts").common.clone();
        let common = match cached {
            Some((set, at)) if now - at < COUNTS_TTL => set,
            _ => {
                let row = self
                    .store
                    .fetch_optional(
                        "SELECT array_to_string(s.most_common_elems::text::text[], ' ') AS e, \
                         array_to_string(s.most_common_elem_freqs, ' ') AS f, \
                         CAST(c.reltuples AS BIGINT) AS n \
                         FROM pg_stats s JOIN pg_class c ON c.oid = 'vector_store_chunks'::regclass \
                         WHERE s.schemaname = current_schema() \
                         AND s.tablename = 'vector_store_chunks' AND s.attname = 'tsv'",
                        &[],
                    )
                    .await?;
                let mut set = std::collections::HashSet::new();
                if let Some(r) = row {
                    let n: i64 = r.get("n");
                    let e: Option<String> = r.get("e");
                    let f: Option<String> = r.get("f");
                    if n >= self.common_terms_from
                        && let (Some(e), Some(f)) = (e, f)
                    {
                        // Frequencies are fractions of the rows holding the lexeme.
                        for (l, freq) in e.split(' ').zip(f.split(' ')) {
                            if freq.parse::<f64>().is_ok_and(|x| x > 0.5) {
                                set.insert(l.to_string());
                            }
                        }
                    }
                }
                self.term_counts.lock().expect("term counts").common = Some((set.clone(), now));
                set
            }
        };
        if common.is_empty() {
            return Ok(None);
        }
        let row = self
            .store
            .fetch_optional(
                "SELECT array_to_string(tsvector_to_array(to_tsvector('english', $1)), ' ') AS l",
                &[terms.join(" ").into()],
            )
            .await?;
        let lexemes: Vec<String> = row
            .and_then(|r| r.get::<Option<String>, _>("l"))
            .unwrap_or_default()
            .split(' ')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let kept: Vec<String> = lexemes
            .iter()
            .filter(|l| !common.contains(*l))
            .cloned()
            .collect();
        Ok(if kept.is_empty() || kept.len() == lexemes.len() {
            None
        } else {
            Some(kept)
        })
    }
}

/// A chunk's fused score, store, file and text.
type Fused = (f64, String, String, String);

/// A ranked list of chunk ids with what each carries.
struct Ranked {
    rows: Vec<(i64, String, String, String, f64)>,
}

impl VectorStores {
    /// `POST /v1/vector_stores/{id}/search`.
    pub async fn search_api(
        &self,
        owner: &str,
        id: &str,
        body: &Value,
    ) -> Result<Value, ServiceError> {
        self.available()?;
        let o = object_body(body)?;
        let queries = queries(o.get("query"), "query")?;
        let opts = SearchOptions::parse(o, "")?;
        let (used, hits) = self
            .search(owner, &[id.to_string()], &queries, &opts, "vector_store_id")
            .await?;
        Ok(json!({
            "object": "vector_store.search_results.page",
            "search_query": used,
            "data": hits.iter().map(Hit::json).collect::<Vec<_>>(),
            "has_more": false,
            "next_page": null,
        }))
    }

    /// Searches `store_ids` (each owned by `owner`, else 404 naming `param`) for
    /// `queries`; the queries used (rewritten or not) and the hits, best first.
    pub async fn search(
        &self,
        owner: &str,
        store_ids: &[String],
        queries: &[String],
        opts: &SearchOptions,
        param: &str,
    ) -> Result<(Vec<String>, Vec<Hit>), ServiceError> {
        self.available()?;
        let started = std::time::Instant::now();
        let out = self
            .search_now(owner, store_ids, queries, opts, param)
            .await;
        if let Some(o) = self.store.observer() {
            o.vector_search(started.elapsed().as_secs_f64(), out.is_ok());
        }
        out
    }

    async fn search_now(
        &self,
        owner: &str,
        store_ids: &[String],
        queries: &[String],
        opts: &SearchOptions,
        param: &str,
    ) -> Result<(Vec<String>, Vec<Hit>), ServiceError> {
        let used: Vec<String> = if opts.rewrite {
            queries.iter().map(|q| rewrite(q)).collect()
        } else {
            queries.to_vec()
        };
        // Each store: its dimension and model (none until its first chunks), and the
        // files the filter lets through.
        let mut stores = Vec::new();
        for (i, id) in store_ids.iter().enumerate() {
            let p = if store_ids.len() == 1 && !param.ends_with(']') {
                param.to_string()
            } else {
                format!("{param}[{i}]")
            };
            let r = self.store_row(owner, id, &p).await?;
            let dims: Option<i64> = r.get("dims");
            let model: Option<String> = r.get("embedding_model");
            stores.push((id.clone(), dims, model));
        }
        self.touch(store_ids).await;
        let allowed = match &opts.filter {
            None => None,
            Some(f) => Some(self.allowed_files(store_ids, f).await?),
        };
        // Query vectors, once per model (stores keep the model that embedded them).
        let want_dense = opts.mode != Mode::Keyword && stores.iter().any(|s| s.1.is_some());
        let mut vectors: HashMap<String, Vec<Vec<f32>>> = HashMap::new();
        if want_dense {
            let embedder = self.embedder.as_ref().ok_or_else(|| ServiceError {
                status: 503,
                kind: "server_error",
                code: Some("embeddings_unavailable".into()),
                message: "No embedding model is configured (--embedding-model)".into(),
                param: None,
            })?;
            for (id, _, model) in &stores {
                if let Some(m) = model
                    && m != embedder.model()
                {
                    return Err(bad(
                        param,
                        format!(
                            "vector store '{id}' was embedded with '{m}'; this gateway \
                                 embeds with '{}'",
                            embedder.model()
                        ),
                    ));
                }
            }
            let v = embedder
                .embed(used.clone())
                .await
                .map_err(crate::responses::service::ServiceError::from_engine)?;
            vectors.insert(embedder.model().to_string(), v);
        }
        let depth = (opts.max_results * 3).max(30);
        let mut lists: Vec<Ranked> = Vec::new();
        for (store_id, dims, model) in &stores {
            let files = allowed
                .as_ref()
                .map(|a| a.get(store_id).cloned().unwrap_or_default());
            if files.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            for (qi, q) in used.iter().enumerate() {
                if let (true, Some(d), Some(m)) = (opts.mode != Mode::Keyword, dims, model)
                    && let Some(v) = vectors.get(m).and_then(|v| v.get(qi))
                    && v.len() as i64 == *d
                {
                    lists.push(self.dense(store_id, *d, v, files.as_deref(), depth).await?);
                }
                if opts.mode != Mode::Dense
                    && let Some(l) = self.keyword(store_id, q, files.as_deref(), depth).await?
                {
                    lists.push(l);
                }
            }
        }
        let per_query = match opts.mode {
            Mode::Hybrid => 2.0,
            _ => 1.0,
        };
        let best = per_query * used.len() as f64 / (RRF_K + 1.0);
        let mut fused: HashMap<i64, Fused> = HashMap::new();
        for l in &lists {
            for (rank, (id, store, file, text, sim)) in l.rows.iter().enumerate() {
                let e = fused
                    .entry(*id)
                    .or_insert_with(|| (0.0, store.clone(), file.clone(), text.clone()));
                match opts.mode {
                    Mode::Dense => e.0 = e.0.max(*sim),
                    _ => e.0 += 1.0 / (RRF_K + rank as f64 + 1.0) / best,
                }
            }
        }
        let mut ranked: Vec<(i64, Fused)> = fused
            .into_iter()
            .filter(|(_, (s, ..))| *s >= opts.score_threshold)
            .collect();
        ranked.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then(a.0.cmp(&b.0)));
        ranked.truncate(opts.max_results);
        let meta = self.file_meta(&ranked).await?;
        let hits = ranked
            .into_iter()
            .map(|(_, (score, store_id, file_id, text))| {
                let (filename, attributes) = meta
                    .get(&(store_id.clone(), file_id.clone()))
                    .cloned()
                    .unwrap_or_default();
                Hit {
                    store_id,
                    file_id,
                    filename,
                    score: (score.min(1.0) * 1e6).round() / 1e6,
                    attributes,
                    text,
                }
            })
            .collect();
        Ok((used, hits))
    }

    /// Renews the stores' activity (their expiry counts from it), at most once a minute.
    async fn touch(&self, ids: &[String]) {
        let now = (self.now)();
        let due: Vec<&String> = {
            let mut t = self.touched.lock().expect("touched");
            if t.len() > 100_000 {
                t.clear();
            }
            let due: Vec<&String> = ids
                .iter()
                .filter(|id| t.get(*id).is_none_or(|at| *at <= now - 60))
                .collect();
            for id in &due {
                t.insert((*id).clone(), now);
            }
            due
        };
        if due.is_empty() {
            return;
        }
        let ids = due;
        let w = crate::store::Write::one(
            format!(
                "UPDATE vector_stores SET last_active_at = $1, expires_at = CASE WHEN \
                 expires_days IS NULL THEN NULL ELSE $1 + expires_days * 86400 END \
                 WHERE last_active_at < $2 AND {}",
                self.in_json_list("id", 3)
            ),
            vec![now.into(), (now - 60).into(), json!(ids).to_string().into()],
        );
        if let Err(e) = self.store.write(w).await {
            tracing::warn!(error = %e, "a vector store's activity was not recorded");
        }
    }

    /// The completed files of each store whose attributes pass `f`.
    async fn allowed_files(
        &self,
        store_ids: &[String],
        f: &Filter,
    ) -> Result<HashMap<String, Vec<String>>, ServiceError> {
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT store_id, file_id, attributes FROM vector_store_files \
                     WHERE status = 'completed' AND {}",
                    self.in_json_list("store_id", 1)
                ),
                &[json!(store_ids).to_string().into()],
            )
            .await?;
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for r in rows {
            let attrs: Map<String, Value> =
                serde_json::from_str(&r.get::<String, _>("attributes")).unwrap_or_default();
            let list = out.entry(r.get("store_id")).or_default();
            if f.matches(&attrs) {
                list.push(r.get("file_id"));
            }
        }
        Ok(out)
    }

    /// The `depth` chunks of a store nearest `v` (cosine distance).
    async fn dense(
        &self,
        store_id: &str,
        dims: i64,
        v: &[f32],
        files: Option<&[String]>,
        depth: usize,
    ) -> Result<Ranked, ServiceError> {
        self.ensure_index(dims).await;
        let mut args: Vec<Val> = vec![store_id.into()];
        let sql = match self.backend() {
            // sqlite-vec's vec0 table of the dimension, partitioned by store: the store's
            // vectors only, read in blocks, with the file filter applied inside the scan.
            Backend::Sqlite => {
                args.push(to_blob(v).into());
                let mut knn = format!(
                    "SELECT rowid, distance FROM vector_store_vec_{dims} \
                     WHERE embedding MATCH $2 AND k = {depth} AND store_id = $1"
                );
                if let Some(files) = files {
                    args.push(json!(files).to_string().into());
                    knn.push_str(&format!(" AND {}", self.in_json_list("file_id", 3)));
                }
                format!(
                    "SELECT c.id, c.store_id, c.file_id, c.text, \
                     CAST(k.distance AS DOUBLE PRECISION) AS d \
                     FROM ({knn}) k JOIN vector_store_chunks c ON c.id = k.rowid \
                     ORDER BY k.distance, c.id"
                )
            }
            // Chunks exist only for completed files (ingestion writes them with the
            // status; re-adding, cancelling or removing a file deletes them): no join,
            // so PostgreSQL can walk the HNSW index.
            Backend::Postgres => {
                args.push(to_text(v).into());
                let distance = format!("(c.embedding::vector({dims}) <=> $2::vector({dims}))");
                let mut sql = format!(
                    "SELECT c.id, c.store_id, c.file_id, c.text, \
                     CAST({distance} AS DOUBLE PRECISION) AS d \
                     FROM vector_store_chunks c WHERE c.store_id = $1 AND c.dims = {dims}"
                );
                if let Some(files) = files {
                    args.push(json!(files).to_string().into());
                    sql.push_str(&format!(" AND {}", self.in_json_list("c.file_id", 3)));
                }
                sql.push_str(&format!(" ORDER BY {distance} LIMIT {depth}"));
                sql
            }
        };
        let rows = self.store.fetch_all(&sql, &args).await?;
        Ok(Ranked {
            rows: rows
                .iter()
                .map(|r| {
                    (
                        r.get("id"),
                        r.get("store_id"),
                        r.get("file_id"),
                        r.get("text"),
                        1.0 - r.get::<f64, _>("d"),
                    )
                })
                .collect(),
        })
    }

    /// The `depth` best keyword matches of a store (any of the query's terms but the
    /// common ones, see [`VectorStores::uncommon`]), or none for a query without search
    /// terms.
    async fn keyword(
        &self,
        store_id: &str,
        query: &str,
        files: Option<&[String]>,
        depth: usize,
    ) -> Result<Option<Ranked>, ServiceError> {
        let t = terms(query);
        if t.is_empty() {
            return Ok(None);
        }
        let (sql, args) = match self.backend() {
            // The store is a column of the full-text index: without a file filter, the
            // index alone ranks the store's matches, and only the best are read.
            Backend::Sqlite => {
                let kept: Vec<String> = self
                    .uncommon(t)
                    .await?
                    .iter()
                    .map(|w| format!("\"{w}\""))
                    .collect();
                let m = format!(
                    "store_id : \"{store_id}\" AND text : ({})",
                    kept.join(" OR ")
                );
                let score = "CAST(bm25(vector_store_chunks_fts, 1.0, 0.0) AS DOUBLE PRECISION)";
                match files {
                    None => (
                        format!(
                            "SELECT c.id, c.store_id, c.file_id, c.text, k.s FROM \
                             (SELECT rowid AS id, {score} AS s FROM vector_store_chunks_fts \
                             WHERE vector_store_chunks_fts MATCH $1 ORDER BY s, rowid \
                             LIMIT {depth}) k JOIN vector_store_chunks c ON c.id = k.id \
                             ORDER BY k.s, c.id"
                        ),
                        vec![m.into()],
                    ),
                    Some(files) => (
                        format!(
                            "SELECT c.id, c.store_id, c.file_id, c.text, {score} AS s \
                             FROM vector_store_chunks_fts JOIN vector_store_chunks c \
                             ON c.id = vector_store_chunks_fts.rowid \
                             WHERE vector_store_chunks_fts MATCH $1 AND {} \
                             ORDER BY s, c.id LIMIT {depth}",
                            self.in_json_list("c.file_id", 2)
                        ),
                        vec![m.into(), json!(files).to_string().into()],
                    ),
                }
            }
            Backend::Postgres => {
                // The query's lexemes without the common ones (already lexemes: cast,
                // not parsed again), or its words as they are.
                let (q, text) = match self.uncommon_lexemes(&t).await? {
                    Some(lexemes) => ("$2::tsquery", lexeme_query(&lexemes)),
                    None => ("to_tsquery('english', $2)", t.join(" | ")),
                };
                let mut sql = format!(
                    "SELECT c.id, c.store_id, c.file_id, c.text, \
                     CAST(-ts_rank_cd(c.tsv, {q}) AS DOUBLE PRECISION) AS s \
                     FROM vector_store_chunks c WHERE c.tsv @@ {q} AND c.store_id = $1"
                );
                let mut args: Vec<Val> = vec![store_id.into(), text.into()];
                if let Some(files) = files {
                    args.push(json!(files).to_string().into());
                    sql.push_str(&format!(" AND {}", self.in_json_list("c.file_id", 3)));
                }
                sql.push_str(&format!(" ORDER BY s, c.id LIMIT {depth}"));
                (sql, args)
            }
        };
        let rows = self.store.fetch_all(&sql, &args).await?;
        Ok(Some(Ranked {
            rows: rows
                .iter()
                .map(|r| {
                    (
                        r.get("id"),
                        r.get("store_id"),
                        r.get("file_id"),
                        r.get("text"),
                        -r.get::<f64, _>("s"),
                    )
                })
                .collect(),
        }))
    }

    /// Filenames and attributes of the files of `hits`.
    async fn file_meta(
        &self,
        hits: &[(i64, Fused)],
    ) -> Result<HashMap<(String, String), (String, Value)>, ServiceError> {
        let mut out = HashMap::new();
        if hits.is_empty() {
            return Ok(out);
        }
        let files: Vec<&String> = hits.iter().map(|h| &h.1.2).collect();
        let rows = self
            .store
            .fetch_all(
                &format!(
                    "SELECT v.store_id, v.file_id, v.attributes, f.filename \
                     FROM vector_store_files v JOIN files f ON f.id = v.file_id WHERE {}",
                    self.in_json_list("v.file_id", 1)
                ),
                &[json!(files).to_string().into()],
            )
            .await?;
        for r in rows {
            let attrs: Value =
                serde_json::from_str(&r.get::<String, _>("attributes")).unwrap_or(json!({}));
            out.insert(
                (r.get("store_id"), r.get("file_id")),
                (r.get("filename"), attrs),
            );
        }
        Ok(out)
    }
}

/// `query`: a non-empty string, or a list of 1–10 of them.
pub fn queries(v: Option<&Value>, param: &str) -> Result<Vec<String>, ServiceError> {
    let nonempty = |s: &str| !s.trim().is_empty() && s.len() <= 4096;
    match v {
        Some(Value::String(s)) if nonempty(s) => Ok(vec![s.clone()]),
        Some(Value::Array(l))
            if !l.is_empty()
                && l.len() <= 10
                && l.iter().all(|q| q.as_str().is_some_and(nonempty)) =>
        {
            Ok(l.iter()
                .filter_map(|q| q.as_str().map(str::to_string))
                .collect())
        }
        _ => Err(bad(
            param,
            format!(
                "`{param}` must be a non-empty string (at most 4096 bytes) or a list of 1 to 10 of them"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_drop_stopwords_and_repeats() {
        assert_eq!(
            terms("What is the boiling point of water, and the point of it?"),
            vec!["boiling", "point", "water"]
        );
        assert_eq!(rewrite("What is it?"), "What is it?");
        assert_eq!(rewrite("Where do the trains stop?"), "trains stop");
    }
}
