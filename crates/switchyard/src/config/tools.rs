//! `tools:` (YAML only): the Responses API's server-side tools (docs/tools.md) — how
//! long a tool call may run, the web search provider with the hosts it may reach, and
//! the hosts remote MCP servers may be reached at.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Config, ConfigError};

/// `tools:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// Longest one server-side tool call runs; past it the model is told it timed out.
    #[serde(default = "default_tool_timeout")]
    pub timeout_secs: f64,
    /// The `web_search` tool's provider. Unset: requests offering it get a 400.
    #[serde(default)]
    pub web_search: Option<WebSearchConfig>,
    /// Remote MCP servers (`mcp` tools). Unset: requests offering them get a 400.
    #[serde(default)]
    pub mcp: Option<McpConfig>,
}

impl Default for ToolsConfig {
    fn default() -> Self {
        ToolsConfig {
            timeout_secs: default_tool_timeout(),
            web_search: None,
            mcp: None,
        }
    }
}

/// `tools.mcp:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The hosts MCP servers may be reached at: names (`mcp.example.com`),
    /// `*.example.com` for every subdomain, or IP addresses. A request naming a server
    /// elsewhere gets a 400; nothing else is ever connected to.
    pub allowed_hosts: Vec<String>,
    /// Let the servers' addresses be loopback, private or link-local (servers inside
    /// the cluster). Off: a name resolving only to such addresses is refused.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// Longest one HTTP request to a server takes, connection included.
    #[serde(default = "default_mcp_timeout")]
    pub timeout_secs: f64,
    /// Largest answer read from a server, in bytes; a larger one fails the call.
    #[serde(default = "default_mcp_max_response_bytes")]
    pub max_response_bytes: usize,
}

fn default_mcp_timeout() -> f64 {
    30.0
}

fn default_mcp_max_response_bytes() -> usize {
    4 << 20
}

fn default_tool_timeout() -> f64 {
    30.0
}

/// `tools.web_search:`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSearchConfig {
    pub provider: SearchProvider,
    /// Hosts the provider may also be reached at (where it redirects), besides its own
    /// URL's host: names (`search.example.com`), `*.example.com` for every subdomain,
    /// or IP addresses. Nothing else is ever connected to.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Let the provider's addresses be loopback, private or link-local (a search
    /// service inside the cluster, e.g. SearxNG). Off: a name resolving only to such
    /// addresses is refused.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// Longest one search request takes, connection included.
    #[serde(default = "default_search_timeout")]
    pub timeout_secs: f64,
    /// Largest provider answer read, in bytes; a larger one fails the search.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most results shown to the model per search, whatever the request asks.
    #[serde(default = "default_max_results")]
    pub max_results: usize,
}

fn default_search_timeout() -> f64 {
    10.0
}

fn default_max_response_bytes() -> usize {
    1 << 20
}

fn default_max_results() -> usize {
    10
}

/// A search provider's API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum SearchProvider {
    /// Any search API that answers JSON, e.g. SearxNG
    /// (`url: http://searxng:8080/search?q={query}&format=json`, `results: results`,
    /// `fields: {snippet: content}`).
    Json {
        /// The request URL; `{query}` (URL-encoded) and `{count}` are filled in.
        url: String,
        #[serde(default)]
        method: HttpMethod,
        /// A POST request's JSON body; any string in it equal to `{query}` or `{count}`
        /// becomes the query or the count.
        #[serde(default)]
        body: Option<Value>,
        /// Request headers; `${NAME}` in a value is the environment variable NAME (keep
        /// keys out of the file).
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Where the list of results sits in the answer, as a dot path (`web.results`).
        #[serde(default = "default_results_path")]
        results: String,
        #[serde(default)]
        fields: ResultFields,
    },
    /// The Brave Search API (`GET /res/v1/web/search`, `X-Subscription-Token`).
    Brave {
        #[serde(default = "default_brave_endpoint")]
        endpoint: String,
        /// The environment variable holding the API key.
        #[serde(default = "default_brave_key_env")]
        api_key_env: String,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
}

/// Where a result's title, URL and snippet sit in each result (dot paths).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultFields {
    #[serde(default = "default_title")]
    pub title: String,
    #[serde(default = "default_url")]
    pub url: String,
    #[serde(default = "default_snippet")]
    pub snippet: String,
}

impl Default for ResultFields {
    fn default() -> Self {
        ResultFields {
            title: default_title(),
            url: default_url(),
            snippet: default_snippet(),
        }
    }
}

fn default_results_path() -> String {
    "results".into()
}
fn default_title() -> String {
    "title".into()
}
fn default_url() -> String {
    "url".into()
}
fn default_snippet() -> String {
    "content".into()
}
fn default_brave_endpoint() -> String {
    "https://api.search.brave.com/res/v1/web/search".into()
}
fn default_brave_key_env() -> String {
    "BRAVE_SEARCH_API_KEY".into()
}

fn bad(path: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Setting {
        path: path.into(),
        reason: reason.into(),
    }
}

/// Whether an `allowed_hosts` entry is a host name, `*.` and a domain, or an IP
/// address.
pub fn valid_host_pattern(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && (name.parse::<std::net::IpAddr>().is_ok()
            || name
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')))
}

impl SearchProvider {
    /// The URL requests start from.
    pub fn base_url(&self) -> &str {
        match self {
            SearchProvider::Json { url, .. } => url,
            SearchProvider::Brave { endpoint, .. } => endpoint,
        }
    }
}

impl Config {
    /// Checks `tools:`.
    pub(crate) fn validate_tools(&self) -> Result<(), ConfigError> {
        let t = &self.tools;
        if !(t.timeout_secs > 0.0 && t.timeout_secs <= 3600.0) {
            return Err(bad(
                "tools.timeout_secs",
                "must be above 0 and at most 3600",
            ));
        }
        if let Some(m) = &t.mcp {
            if m.allowed_hosts.is_empty() {
                return Err(bad(
                    "tools.mcp.allowed_hosts",
                    "list the hosts MCP servers may be reached at",
                ));
            }
            if let Some(h) = m.allowed_hosts.iter().find(|h| !valid_host_pattern(h)) {
                return Err(bad(
                    "tools.mcp.allowed_hosts",
                    format!("`{h}` is not a host name, *.domain or IP address"),
                ));
            }
            if !(m.timeout_secs > 0.0 && m.timeout_secs <= 3600.0) {
                return Err(bad(
                    "tools.mcp.timeout_secs",
                    "must be above 0 and at most 3600",
                ));
            }
            if m.max_response_bytes < 1024 {
                return Err(bad("tools.mcp.max_response_bytes", "must be at least 1024"));
            }
        }
        let Some(w) = &t.web_search else {
            return Ok(());
        };
        if !(w.timeout_secs > 0.0 && w.timeout_secs <= 3600.0) {
            return Err(bad(
                "tools.web_search.timeout_secs",
                "must be above 0 and at most 3600",
            ));
        }
        if w.max_response_bytes < 1024 {
            return Err(bad(
                "tools.web_search.max_response_bytes",
                "must be at least 1024",
            ));
        }
        if !(1..=50).contains(&w.max_results) {
            return Err(bad("tools.web_search.max_results", "must be 1 to 50"));
        }
        if let Some(h) = w.allowed_hosts.iter().find(|h| !valid_host_pattern(h)) {
            return Err(bad(
                "tools.web_search.allowed_hosts",
                format!("`{h}` is not a host name, *.domain or IP address"),
            ));
        }
        let (path, raw) = match &w.provider {
            SearchProvider::Json { url, .. } => ("tools.web_search.provider.url", url),
            SearchProvider::Brave { endpoint, .. } => {
                ("tools.web_search.provider.endpoint", endpoint)
            }
        };
        let parsed = url::Url::parse(&raw.replace("{query}", "q").replace("{count}", "1"))
            .map_err(|e| bad(path, format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(bad(path, "must be an http or https URL with a host"));
        }
        match &w.provider {
            SearchProvider::Json {
                url, method, body, ..
            } => {
                let in_body = body
                    .as_ref()
                    .is_some_and(|b| b.to_string().contains("{query}"));
                if !url.contains("{query}") && !in_body {
                    return Err(bad(
                        "tools.web_search.provider",
                        "the URL or the body must hold `{query}`",
                    ));
                }
                if body.is_some() && *method == HttpMethod::Get {
                    return Err(bad(
                        "tools.web_search.provider.body",
                        "a body needs `method: POST`",
                    ));
                }
            }
            SearchProvider::Brave { api_key_env, .. } => {
                if api_key_env.is_empty() {
                    return Err(bad(
                        "tools.web_search.provider.api_key_env",
                        "must name a variable",
                    ));
                }
            }
        }
        Ok(())
    }
}
