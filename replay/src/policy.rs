//! Which addresses the gateway may reach: the SSRF guard.
//!
//! In live mode an agent chooses URLs, so it must not reach the machine it
//! runs on, the private network around it, or the cloud metadata service.
//! Loopback, private, link-local, shared (CGNAT), unspecified, multicast
//! and broadcast addresses, IPv6 unique-local and link-local ones, and
//! IPv4-mapped forms of all of these are refused, before DNS (literal IPs,
//! `localhost`), after DNS (every resolved address), and at every redirect.
//! Specific socket addresses (such as the sandbox's) can be allowed by
//! configuration; there is no other way around the rule.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether an address is on the machine or its private network.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link local fe80::/10
                || v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) // AWS IMDS over IPv6
        }
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the metadata service
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
}

/// The reachability rule for one gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Internal socket addresses that are allowed all the same (the
    /// sandbox's search API and sites).
    pub allowed: Vec<SocketAddr>,
    /// Allow every internal address (for trusted setups only).
    pub allow_internal: bool,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "refused to reach {target}: {reason} (an agent must not reach internal addresses; allow specific ones in the gateway's configuration)"
)]
pub struct Refused {
    /// What was asked for.
    pub target: String,
    /// Why.
    pub reason: String,
}

impl AddressPolicy {
    /// Checks one resolved address.
    pub fn check_addr(&self, target: &str, addr: SocketAddr) -> Result<(), Refused> {
        if !self.allow_internal && is_internal(addr.ip()) && !self.allowed.contains(&addr) {
            return Err(Refused {
                target: target.to_string(),
                reason: format!("{} is an internal address", addr.ip()),
            });
        }
        Ok(())
    }

    /// Checks a URL before any DNS lookup: scheme, literal IPs, `localhost`.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        let refuse = |reason: String| Refused {
            target: url.to_string(),
            reason,
        };
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refuse(format!("scheme '{}' is not http or https", url.scheme())));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host() {
            None => Err(refuse("the URL has no host".into())),
            Some(url::Host::Ipv4(ip)) => self.check_addr(url.as_str(), SocketAddr::new(IpAddr::V4(ip), port)),
            Some(url::Host::Ipv6(ip)) => self.check_addr(url.as_str(), SocketAddr::new(IpAddr::V6(ip), port)),
            Some(url::Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !self.allow_internal && (d == "localhost" || d.ends_with(".localhost")) {
                    let loopback = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
                    if !self.allowed.contains(&loopback) {
                        return Err(refuse(format!("{d} is the local machine")));
                    }
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &AddressPolicy, url: &str) -> bool {
        policy.check_url(&url::Url::parse(url).unwrap()).is_err()
    }

    #[test]
    fn internal_addresses_are_refused_before_dns() {
        let p = AddressPolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://172.16.5.4/",
            "http://192.168.1.1/",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://localhost/",
            "http://api.localhost:3000/",
            "file:///etc/passwd",
            "ftp://example.com/",
        ] {
            assert!(refused(&p, url), "{url} must be refused");
        }
        for url in [
            "http://93.184.216.34/",
            "https://example.com/",
            "http://[2606:4700::1111]/",
        ] {
            assert!(!refused(&p, url), "{url} must be allowed");
        }
    }

    #[test]
    fn allowed_socket_addresses_pass_and_nothing_else_does() {
        let sandbox: SocketAddr = "127.0.0.1:8931".parse().unwrap();
        let p = AddressPolicy {
            allowed: vec![sandbox],
            allow_internal: false,
        };
        assert!(!refused(&p, "http://127.0.0.1:8931/wiki"));
        assert!(
            refused(&p, "http://127.0.0.1:8932/"),
            "another port on loopback stays refused"
        );
        assert!(refused(&p, "http://10.0.0.1:8931/"));
        let err = p
            .check_addr("http://evil.example/", "127.0.0.1:22".parse().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1 is an internal address"), "{err}");
    }
}
