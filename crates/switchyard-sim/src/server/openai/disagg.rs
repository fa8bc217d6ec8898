//! Prefill/decode roles: vLLM's NixlConnector `kv_transfer_params` and SGLang's
//! bootstrap rooms, as a prefill or decode engine sees them.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;

use super::super::{ApiError, ServerState};
use super::wire::GenRequest;
use crate::bootstrap::RoomState;
use crate::config::Role;

/// Marks an SGLang bootstrap room done when the prefill produces its first token,
/// or failed if the request ends before that.
pub(super) struct RoomGuard {
    st: Arc<ServerState>,
    room: u64,
    prompt_len: usize,
    done: bool,
}

impl RoomGuard {
    pub(super) fn ready(&mut self) {
        if !self.done {
            self.done = true;
            self.st
                .rooms
                .complete(self.room, RoomState::Ready(self.prompt_len));
        }
    }
}

impl Drop for RoomGuard {
    fn drop(&mut self) {
        if !self.done {
            self.st
                .rooms
                .complete(self.room, RoomState::Failed("prefill aborted".into()));
        }
    }
}

/// Prefill/decode handling decided from the request.
pub(super) struct Disagg {
    pub(super) remote_kv_tokens: usize,
    pub(super) return_kv_params: bool,
    pub(super) room: Option<RoomGuard>,
}

pub(super) async fn disaggregation(
    st: &Arc<ServerState>,
    req: &GenRequest,
    prompt_len: usize,
) -> Result<Disagg, ApiError> {
    let role = st.cfg.role;
    let mut out = Disagg {
        remote_kv_tokens: 0,
        return_kv_params: false,
        room: None,
    };
    if let Some(kv) = &req.kv_transfer_params {
        if kv.do_remote_prefill == Some(true) {
            if role == Role::Prefill {
                return Err(ApiError::bad_request(
                    "this engine runs with --role prefill and cannot take do_remote_prefill",
                    Some("kv_transfer_params"),
                ));
            }
            let (Some(ids), Some(_)) = (&kv.remote_block_ids, &kv.remote_engine_id) else {
                return Err(ApiError::bad_request(
                    "do_remote_prefill needs remote_block_ids and remote_engine_id",
                    Some("kv_transfer_params"),
                ));
            };
            out.remote_kv_tokens = (ids.len() * st.cfg.block_size).min(prompt_len);
        }
        if kv.do_remote_decode == Some(true) {
            if role == Role::Decode {
                return Err(ApiError::bad_request(
                    "this engine runs with --role decode and cannot take do_remote_decode",
                    Some("kv_transfer_params"),
                ));
            }
            out.return_kv_params = true;
        }
    }
    if let Some(room) = req.bootstrap_room {
        match role {
            Role::Both => {
                return Err(ApiError::bad_request(
                    "bootstrap_room needs an engine started with --role prefill or --role decode",
                    Some("bootstrap_room"),
                ));
            }
            Role::Prefill => {
                out.room = Some(RoomGuard {
                    st: st.clone(),
                    room,
                    prompt_len,
                    done: false,
                });
            }
            Role::Decode => {
                let (Some(host), Some(port)) = (&req.bootstrap_host, req.bootstrap_port) else {
                    return Err(ApiError::bad_request(
                        "bootstrap_room needs bootstrap_host and bootstrap_port",
                        Some("bootstrap_host"),
                    ));
                };
                // The decode engine fetches from this host: only from allowed ones, so
                // a client cannot make it call anything else on its network.
                if !st.cfg.bootstrap_host_allowed(host) {
                    return Err(ApiError::bad_request(
                        format!("bootstrap_host {host:?} is not in --bootstrap-allowed-hosts"),
                        Some("bootstrap_host"),
                    ));
                }
                wait_for_prefill(st, host, port, room).await?;
                out.remote_kv_tokens = prompt_len;
            }
        }
    }
    Ok(out)
}

/// Asks the prefill engine's bootstrap endpoint whether the room's KV is ready.
pub(super) async fn wait_for_prefill(
    st: &ServerState,
    host: &str,
    port: u16,
    room: u64,
) -> Result<(), ApiError> {
    let fail = |why: String| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("KV transfer from prefill failed: {why}"),
        )
    };
    let uri: http::Uri = format!("http://{host}:{port}/sim/bootstrap/{room}")
        .parse()
        .map_err(|e| {
            ApiError::bad_request(
                format!("invalid bootstrap address: {e}"),
                Some("bootstrap_host"),
            )
        })?;
    let fut = st.http.get(uri);
    let resp = tokio::time::timeout(Duration::from_secs(90), fut)
        .await
        .map_err(|_| fail("bootstrap server did not answer".into()))?
        .map_err(|e| fail(format!("bootstrap server unreachable: {e}")))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(fail(format!("bootstrap server answered {}", resp.status())))
    }
}
