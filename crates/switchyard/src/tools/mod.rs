//! What the Responses API's server-side tools reach outside the gateway
//! (docs/tools.md): the web search provider, through the SSRF guard every outbound
//! tool request goes through.

pub mod guard;
pub mod web_search;
