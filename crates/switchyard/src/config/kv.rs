//! Where workers' engines publish KV-cache events (`--kv-events-endpoint`,
//! `--kv-events-replay-endpoint`): per worker URL or as a template for all.

use super::{Config, ConfigError, invalid};

/// A worker engine's KV-event sockets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEndpoints {
    /// The PUB socket (`tcp://host:port`).
    pub live: String,
    /// The replay ROUTER socket, if the engine has one.
    pub replay: Option<String>,
}

/// `tcp://HOST:PORT` with the port raised by `offset` (a data-parallel rank's own
/// publisher, as vLLM offsets it). `None` when it is not that form.
pub fn offset_endpoint(endpoint: &str, offset: u32) -> Option<String> {
    let rest = endpoint.strip_prefix("tcp://")?;
    let (host, port) = rest.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    if host.is_empty() || port == 0 {
        return None;
    }
    let port = u16::try_from(u32::from(port) + offset).ok()?;
    Some(format!("tcp://{host}:{port}"))
}

/// The host of an engine URL (`http://10.0.0.5:8000` → `10.0.0.5`).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then_some(host)
}

/// The endpoint `entries` give the worker at `url`: its own `URL=ENDPOINT` entry first,
/// else a template (`{host}` filled in).
fn pick(entries: &[String], url: &str, dp_rank: Option<u32>) -> Option<String> {
    let url = url.trim_end_matches('/');
    let own = entries.iter().find_map(|e| {
        let (u, ep) = e.split_once('=')?;
        (u.trim_end_matches('/') == url).then_some(ep)
    });
    let ep = match own {
        Some(ep) => ep.to_string(),
        None => {
            let t = entries.iter().find(|e| !e.contains('='))?;
            t.replace("{host}", url_host(url)?)
        }
    };
    offset_endpoint(&ep, dp_rank.unwrap_or(0))
}

/// Where the worker at `url` (rank `dp_rank`) publishes KV events, from the entries of
/// `--kv-events-endpoint` and `--kv-events-replay-endpoint`.
pub fn endpoints_for(
    live: &[String],
    replay: &[String],
    url: &str,
    dp_rank: Option<u32>,
) -> Option<KvEndpoints> {
    Some(KvEndpoints {
        live: pick(live, url, dp_rank)?,
        replay: pick(replay, url, dp_rank),
    })
}

impl Config {
    /// Where the worker at `url` (rank `dp_rank`) publishes KV events, if configured.
    pub fn kv_endpoints(&self, url: &str, dp_rank: Option<u32>) -> Option<KvEndpoints> {
        endpoints_for(
            &self.kv_events_endpoint,
            &self.kv_events_replay_endpoint,
            url,
            dp_rank,
        )
    }

    pub(super) fn validate_kv(&self) -> Result<(), ConfigError> {
        for (flag, entries) in [
            ("kv-events-endpoint", &self.kv_events_endpoint),
            ("kv-events-replay-endpoint", &self.kv_events_replay_endpoint),
        ] {
            let mut templates = 0;
            for e in entries {
                let ep = match e.split_once('=') {
                    Some((_, ep)) => ep.to_string(),
                    None => {
                        templates += 1;
                        e.replace("{host}", "h")
                    }
                };
                if offset_endpoint(&ep, 0).is_none() {
                    return Err(invalid(
                        flag,
                        format!("{e:?}: use [URL=]tcp://HOST:PORT (HOST may be {{host}})"),
                    ));
                }
            }
            if templates > 1 {
                return Err(invalid(
                    flag,
                    "give at most one template (an entry without URL=)",
                ));
            }
        }
        if let Some(b) = &self.kv_events_bind
            && offset_endpoint(b, 0).is_none()
        {
            return Err(invalid(
                "kv-events-bind",
                format!("{b:?}: use tcp://HOST:PORT"),
            ));
        }
        if self.kv_block_size == 0 || self.kv_index_max_blocks == 0 {
            return Err(invalid(
                "kv-block-size",
                "--kv-block-size and --kv-index-max-blocks must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(live: &[&str], replay: &[&str]) -> Config {
        Config {
            kv_events_endpoint: live.iter().map(|s| s.to_string()).collect(),
            kv_events_replay_endpoint: replay.iter().map(|s| s.to_string()).collect(),
            ..Config::default()
        }
    }

    #[test]
    fn per_worker_entries_win_over_the_template_and_ranks_offset_ports() {
        let c = cfg(
            &["tcp://{host}:5557", "http://a:8000=tcp://10.0.0.9:6000"],
            &["tcp://{host}:5558"],
        );
        assert_eq!(
            c.kv_endpoints("http://a:8000", None),
            Some(KvEndpoints {
                live: "tcp://10.0.0.9:6000".into(),
                replay: Some("tcp://a:5558".into())
            })
        );
        let b = c.kv_endpoints("http://10.1.2.3:8000/", Some(2)).unwrap();
        assert_eq!(b.live, "tcp://10.1.2.3:5559");
        assert_eq!(b.replay.as_deref(), Some("tcp://10.1.2.3:5560"));
        assert_eq!(cfg(&[], &[]).kv_endpoints("http://a:8000", None), None);
        c.validate_kv().unwrap();
    }

    #[test]
    fn bad_endpoints_are_named() {
        for bad in ["ipc:///tmp/x", "tcp://h", "tcp://h:0", "http://a=tcp://:1"] {
            let e = cfg(&[bad], &[]).validate_kv().unwrap_err().to_string();
            assert!(e.contains("kv-events-endpoint"), "{bad}: {e}");
        }
        let e = cfg(&["tcp://{host}:1", "tcp://{host}:2"], &[])
            .validate_kv()
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most one template"), "{e}");
    }
}
