//! The web search provider behind the Responses API's `web_search` tool
//! (docs/tools.md): a generic JSON API (URL template, headers, where the results sit)
//! or Brave Search, reached through the [`Guard`] with a timeout and a size cap.
//! Failures are messages for the model; they name neither the URL nor a key.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use switchyard_stateful::responses::tools::{WebResult, WebSearch};
use url::Url;

use super::guard::{Guard, describe, read_capped};
use crate::config::tools::{HttpMethod, ResultFields, SearchProvider, WebSearchConfig};

/// Longest snippet shown to the model, in characters.
const SNIPPET_CHARS: usize = 2000;

/// A configured search provider.
#[derive(Clone)]
pub struct HttpSearch(Arc<Inner>);

struct Inner {
    client: reqwest::Client,
    guard: Guard,
    provider: SearchProvider,
    /// The headers every request carries, secrets read from the environment (a JSON
    /// provider's `headers`, Brave's key).
    headers: Vec<(String, String)>,
    max_bytes: usize,
    max_results: usize,
}

/// `value` with every `${NAME}` replaced by the environment variable NAME (as `env`
/// reads it).
fn with_env(value: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{value}`"))?;
        let name = &rest[at + 2..at + end];
        out.push_str(
            &env(name).ok_or_else(|| format!("the environment variable {name} is not set"))?,
        );
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The value at a dot path (`web.results`); the empty path is the value itself.
fn at_path<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .filter(|p| !p.is_empty())
        .try_fold(v, |v, p| match v {
            Value::Array(l) => l.get(p.parse::<usize>().ok()?),
            _ => v.get(p),
        })
}

/// Text without HTML tags and with the common entities decoded (snippets often carry
/// `<strong>` around the matched words).
fn plain(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// A body template with `{query}` and `{count}` strings filled in.
fn fill(v: &Value, query: &str, count: usize) -> Value {
    match v {
        Value::String(s) if s == "{count}" => Value::from(count),
        Value::String(s) => Value::String(
            s.replace("{query}", query)
                .replace("{count}", &count.to_string()),
        ),
        Value::Array(l) => Value::Array(l.iter().map(|x| fill(x, query, count)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| (k.clone(), fill(x, query, count)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a page's host is one of `domains` or under one.
fn in_domains(url: &str, domains: &[String]) -> bool {
    if domains.is_empty() {
        return true;
    }
    let Some(host) = Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    else {
        return false;
    };
    domains
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}

impl HttpSearch {
    /// The provider `cfg` describes, its keys read from the environment.
    pub fn new(cfg: &WebSearchConfig) -> Result<HttpSearch, String> {
        HttpSearch::with_env(cfg, &|name| std::env::var(name).ok())
    }

    /// The provider `cfg` describes, its keys read by `env`.
    pub fn with_env(
        cfg: &WebSearchConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<HttpSearch, String> {
        let headers = match &cfg.provider {
            SearchProvider::Json { headers, .. } => headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), with_env(v, env)?)))
                .collect::<Result<_, String>>()?,
            SearchProvider::Brave { api_key_env, .. } => vec![
                ("accept".to_string(), "application/json".to_string()),
                (
                    "x-subscription-token".to_string(),
                    env(api_key_env).ok_or_else(|| {
                        format!("the environment variable {api_key_env} (the Brave Search API key) is not set")
                    })?,
                ),
            ],
        };
        let base = Url::parse(
            &cfg.provider
                .base_url()
                .replace("{query}", "q")
                .replace("{count}", "1"),
        )
        .map_err(|e| format!("the provider URL: {e}"))?;
        let own = base.host_str().unwrap_or_default().to_string();
        let guard = Guard::new(
            cfg.allowed_hosts.iter().cloned().chain([own]),
            cfg.allow_private_addresses,
        );
        // A request carrying a key is not redirected to another host.
        let guard = if !headers.is_empty() {
            guard.same_host_redirects()
        } else {
            guard
        };
        Ok(HttpSearch(Arc::new(Inner {
            client: guard.client(Duration::from_secs_f64(cfg.timeout_secs)),
            guard,
            provider: cfg.provider.clone(),
            headers,
            max_bytes: cfg.max_response_bytes,
            max_results: cfg.max_results,
        })))
    }

    /// At most `count` pages for `query`, from `domains` when it lists any.
    pub async fn run(
        &self,
        query: &str,
        count: usize,
        domains: &[String],
    ) -> Result<Vec<WebResult>, String> {
        let me = &self.0;
        let count = count.clamp(1, me.max_results);
        // Ask for more when filtering by domain: some results will be dropped.
        let asked = if domains.is_empty() {
            count
        } else {
            (count * 3).min(50)
        };
        let (request, results, fields) = match &me.provider {
            SearchProvider::Json {
                url,
                method,
                body,
                results,
                fields,
                ..
            } => {
                let encoded: String =
                    url::form_urlencoded::byte_serialize(query.as_bytes()).collect();
                let url = Url::parse(
                    &url.replace("{query}", &encoded)
                        .replace("{count}", &asked.to_string()),
                )
                .map_err(|_| "the provider URL is not valid for this query".to_string())?;
                me.guard.check(&url)?;
                let mut r = match method {
                    HttpMethod::Get => me.client.get(url),
                    HttpMethod::Post => me.client.post(url),
                };
                if let Some(b) = body {
                    r = r.json(&fill(b, query, asked));
                }
                (r, results.as_str(), fields.clone())
            }
            SearchProvider::Brave { endpoint, .. } => {
                let mut url = Url::parse(endpoint)
                    .map_err(|_| "the provider URL is not valid".to_string())?;
                url.query_pairs_mut()
                    .append_pair("q", query)
                    .append_pair("count", &asked.min(20).to_string());
                me.guard.check(&url)?;
                let r = me.client.get(url);
                let fields = ResultFields {
                    title: "title".into(),
                    url: "url".into(),
                    snippet: "description".into(),
                };
                (r, "web.results", fields)
            }
        };
        let request = me.headers.iter().fold(request, |r, (k, v)| r.header(k, v));
        let resp = request
            .send()
            .await
            .map_err(|e| format!("the provider could not be reached: {}", describe(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("the provider answered {status}"));
        }
        let body = read_capped(resp, me.max_bytes).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|_| "the provider's answer is not JSON".to_string())?;
        let list = match at_path(&v, results) {
            Some(Value::Array(l)) => l,
            None => return Ok(Vec::new()),
            Some(_) => return Err(format!("the provider's `{results}` is not a list")),
        };
        let mut pages: Vec<WebResult> = Vec::new();
        for r in list {
            let text = |path: &str| at_path(r, path).and_then(Value::as_str).map(plain);
            let (Some(url), title, snippet) = (
                text(&fields.url),
                text(&fields.title),
                text(&fields.snippet),
            ) else {
                continue;
            };
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || !in_domains(&url, domains)
                || pages.iter().any(|p| p.url == url)
            {
                continue;
            }
            pages.push(WebResult {
                title: title
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| url.clone()),
                url,
                snippet: snippet
                    .unwrap_or_default()
                    .chars()
                    .take(SNIPPET_CHARS)
                    .collect(),
            });
            if pages.len() == count {
                break;
            }
        }
        Ok(pages)
    }
}

impl WebSearch for HttpSearch {
    fn search(
        &self,
        query: String,
        count: usize,
        domains: Vec<String>,
    ) -> BoxFuture<'static, Result<Vec<WebResult>, String>> {
        let this = self.clone();
        Box::pin(async move { this.run(&query, count, &domains).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_paths_and_snippets() {
        let v = json!({"web": {"results": [{"a": {"b": "x"}}]}});
        assert_eq!(at_path(&v, "web.results.0.a.b"), Some(&json!("x")));
        assert_eq!(at_path(&v, ""), Some(&v));
        assert_eq!(at_path(&v, "web.nothing"), None);
        assert_eq!(
            plain("<strong>Otters</strong> &amp; seals &lt;3"),
            "Otters & seals <3"
        );
        assert_eq!(
            fill(
                &json!({"q": "{query}", "n": "{count}", "l": ["in {query}"]}),
                "otters",
                4
            ),
            json!({"q": "otters", "n": 4, "l": ["in otters"]})
        );
        assert!(in_domains(
            "https://docs.example.org/a",
            &["example.org".into()]
        ));
        assert!(!in_domains(
            "https://example.org.evil.net/",
            &["example.org".into()]
        ));
        assert!(in_domains("https://any.where/", &[]));
        let env = |n: &str| (n == "KEY").then(|| "k3y".to_string());
        assert_eq!(with_env("Bearer ${KEY}!", &env).unwrap(), "Bearer k3y!");
        assert!(
            with_env("${UNSET}", &env)
                .unwrap_err()
                .contains("UNSET is not set")
        );
        assert!(with_env("${KEY", &env).unwrap_err().contains("unclosed"));
    }
}
