//! The SSRF guard of every outbound request a server-side tool makes (docs/tools.md,
//! "Security"): a URL is fetched only when its scheme is http(s) and its host is on the
//! operator's allowlist; every address a name resolves to is checked at connection
//! time (no loopback, private, link-local or other special address unless the operator
//! allows private addresses), so a name cannot be rebound to an inner address between
//! the check and the connection; redirects are checked as the first URL is; no proxy
//! is used. Answers are read up to a size cap.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Most redirects followed.
const MAX_REDIRECTS: usize = 5;

/// What outbound requests may reach.
#[derive(Clone, Debug)]
pub struct Guard {
    /// Host names (lowercase, no trailing dot), `*.domain` patterns and IP addresses.
    hosts: Vec<String>,
    allow_private: bool,
    /// Redirects stay on the host first asked (the requests carry credentials, which a
    /// redirect to another host would hand over).
    same_host_redirects: bool,
}

/// A host as compared: an address in its canonical text, a name lowercased without
/// brackets or a trailing dot.
fn normal(host: &str) -> String {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    match h.parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => h.trim_end_matches('.').to_ascii_lowercase(),
    }
}

impl Guard {
    pub fn new(hosts: impl IntoIterator<Item = String>, allow_private: bool) -> Guard {
        Guard {
            hosts: hosts.into_iter().map(|h| normal(&h)).collect(),
            allow_private,
            same_host_redirects: false,
        }
    }

    /// Follows redirects only on the host first asked.
    pub fn same_host_redirects(mut self) -> Guard {
        self.same_host_redirects = true;
        self
    }

    /// Whether `host` (a name, or an address's text) is on the allowlist.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = normal(host);
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() && host.ends_with(&format!(".{domain}")),
            None => *h == host,
        })
    }

    /// Whether `url` may be fetched: http(s), an allowed host, and, for an address
    /// written in it, an allowed address. Names are checked again as they resolve.
    pub fn check(&self, url: &Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("`{}` URLs are not fetched", url.scheme()));
        }
        let (text, ip) = match url.host() {
            None => return Err("the URL has no host".into()),
            Some(Host::Domain(d)) => (d.to_string(), None),
            Some(Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
            Some(Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
        };
        if !self.allows_host(&text) {
            return Err(format!("the host {text} is not allowed"));
        }
        if let Some(ip) = ip
            && !ip_allowed(ip, self.allow_private)
        {
            return Err(format!("the address {ip} is not allowed"));
        }
        Ok(())
    }

    /// An HTTP client that connects only where this guard allows: its resolver drops
    /// disallowed addresses, its redirects are checked, it uses no proxy.
    pub fn client(&self, timeout: Duration) -> reqwest::Client {
        let guard = self.clone();
        reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > MAX_REDIRECTS {
                    return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
                }
                if guard.same_host_redirects
                    && attempt.previous().first().and_then(|u| u.host_str())
                        != attempt.url().host_str()
                {
                    return attempt.error(
                        "a redirect to another host was refused (the request carries credentials)",
                    );
                }
                match guard.check(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(format!("a redirect was refused: {e}")),
                }
            }))
            .dns_resolver(Arc::new(Resolver {
                allow_private: self.allow_private,
            }))
            .build()
            .expect("an HTTP client without TLS settings of its own builds")
    }
}

/// Resolves names, keeping only the addresses the guard allows.
struct Resolver {
    allow_private: bool,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| ip_allowed(a.ip(), allow_private))
                .collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves to no address this gateway may reach").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The IPv4 address an IPv6 one carries to an IPv4 host: mapped (`::ffff:a.b.c.d`),
/// NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(a: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = a.segments();
    let tail = |hi: u16, lo: u16| std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    if let Some(v4) = a.to_ipv4_mapped() {
        Some(v4)
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        Some(tail(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(tail(s[1], s[2]))
    } else {
        None
    }
}

/// Whether an address may be connected to. Never: unspecified, broadcast, multicast,
/// "this network" and reserved addresses. Only when `allow_private`: loopback,
/// private, shared (CGNAT), link-local (cloud metadata services), unique-local,
/// site-local, IPv4-compatible and local NAT64 (`64:ff9b:1::/48`) addresses. An IPv6
/// address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that.
pub fn ip_allowed(ip: IpAddr, allow_private: bool) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => {
            let [o0, o1, ..] = a.octets();
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || o0 == 0 || o0 >= 240 {
                return false;
            }
            let inner = a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || (o0 == 100 && (o1 & 0xc0) == 64)
                || (o0 == 198 && (o1 & 0xfe) == 18);
            !inner || allow_private
        }
        IpAddr::V6(a) => {
            if a.is_unspecified() || a.is_multicast() {
                return false;
            }
            let s = a.segments();
            let inner = a.is_loopback()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
                || s[..6] == [0; 6]
                || s[..3] == [0x64, 0xff9b, 1];
            !inner || allow_private
        }
    }
}

/// What went wrong with a request, with its causes (which name hosts and addresses,
/// never the URL, which may hold a key).
pub fn describe(e: reqwest::Error) -> String {
    describe_ref(&e)
}

/// [`describe`], of a borrowed error.
pub fn describe_ref(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(&format!(" for url ({u})"), "");
    }
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// An answer's body, read up to `max` bytes (a longer one is an error).
pub async fn read_capped(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let too_large = || format!("the answer is larger than {max} bytes");
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(describe)? {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_pattern_or_address() {
        let g = Guard::new(
            [
                "Search.Example.com.".into(),
                "*.corp.example".into(),
                "0:0:0:0:0:0:0:1".into(),
            ],
            false,
        );
        assert!(g.allows_host("search.example.com"));
        assert!(g.allows_host("SEARCH.example.com."));
        assert!(!g.allows_host("evil.search.example.com"));
        assert!(g.allows_host("a.b.corp.example"));
        assert!(!g.allows_host("corp.example"));
        assert!(!g.allows_host("xcorp.example"));
        assert!(g.allows_host("[::1]"));
        let url = |u: &str| Url::parse(u).unwrap();
        assert!(g.check(&url("https://search.example.com/q")).is_ok());
        assert!(
            g.check(&url("ftp://search.example.com/"))
                .unwrap_err()
                .contains("ftp")
        );
        assert!(
            g.check(&url("http://other.example/"))
                .unwrap_err()
                .contains("not allowed")
        );
        // On the list, but loopback while private addresses are not allowed.
        assert!(
            g.check(&url("http://[::1]:8080/"))
                .unwrap_err()
                .contains("address")
        );
        let open = Guard::new(["::1".into()], true);
        assert!(open.check(&url("http://[::1]:8080/")).is_ok());
    }

    #[test]
    fn inner_addresses_need_permission_and_special_ones_are_never_reached() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!ip_allowed(ip, false), "{a}");
            assert!(ip_allowed(ip, true), "{a}");
        }
        for a in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::",
            "ff02::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!ip_allowed(ip, true), "{a}");
        }
        // IPv6 addresses carrying an inner IPv4 one, and IPv6's own inner ranges.
        for a in [
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::7f00:1",
            "fec0::1",
            "64:ff9b:1::1",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert!(!ip_allowed(ip, false), "{a}");
        }
        for a in [
            "93.184.216.34",
            "2606:4700::1111",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::",
        ] {
            assert!(ip_allowed(a.parse().unwrap(), false), "{a}");
        }
    }
}
