//! What the Responses API's server-side tools reach outside the gateway
//! (docs/tools.md): the web search provider and remote MCP servers, through the SSRF
//! guard every outbound tool request goes through.

pub mod guard;
pub mod mcp;
pub mod web_search;
