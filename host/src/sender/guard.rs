//! The SSRF guard: deliveries (and plugin-built requests) may reach only public addresses,
//! unless the operator allow-lists a network with `delivery.allowed_destinations`.
//!
//! The check runs on the address the client connects to: names are resolved by
//! [`GuardedResolver`], which hands the connector only addresses that passed, so a name cannot
//! pass the check with one answer and connect with another (DNS rebinding). Addresses written
//! in the URL skip resolution, so [`Guard::check_url`] checks them before sending.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use ipnet::IpNet;

/// Which destinations are allowed.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    allowed: Arc<[IpNet]>,
}

/// Why a destination was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The host as written in the URL.
    pub host: String,
    /// The address it was (or resolved to).
    pub address: IpAddr,
    /// What kind of address it is (`loopback`, `private`, ...).
    pub class: &'static str,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host_is_address = self.host.trim_matches(['[', ']']) == self.address.to_string();
        if host_is_address {
            write!(
                f,
                "destination refused: {} is a {} address",
                self.host, self.class
            )?;
        } else {
            write!(
                f,
                "destination refused: {} resolves to {}, a {} address",
                self.host, self.address, self.class
            )?;
        }
        f.write_str(" (allow it with delivery.allowed_destinations)")
    }
}

impl std::error::Error for Refused {}

impl Guard {
    /// A guard that also allows these networks (`10.0.0.0/8`, `127.0.0.1`, `::1`).
    ///
    /// # Errors
    /// Names the first entry that is neither an address nor a network.
    pub fn new(allowed: &[String]) -> Result<Guard, crate::model::Invalid> {
        let allowed = allowed
            .iter()
            .map(|text| crate::config::parse_network(text))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Guard {
            allowed: allowed.into(),
        })
    }

    /// Whether `address` may be connected to; the refusal names `host`.
    ///
    /// # Errors
    /// A [`Refused`] naming the address and its class.
    pub fn check(&self, host: &str, address: IpAddr) -> Result<(), Refused> {
        let Some(class) = restricted_class(address) else {
            return Ok(());
        };
        if self.allowed.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        Err(Refused {
            host: host.to_string(),
            address,
            class,
        })
    }

    /// Checks a URL whose host is an address (names are checked when they resolve).
    ///
    /// # Errors
    /// A [`Refused`] for a restricted address that is not allow-listed.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Refused> {
        match url.host() {
            Some(url::Host::Ipv4(v4)) => self.check(&v4.to_string(), IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => self.check(&format!("[{v6}]"), IpAddr::V6(v6)),
            _ => Ok(()),
        }
    }

    /// Resolves `host` and keeps the addresses that pass; refuses when none does.
    ///
    /// # Errors
    /// The resolver's error, or a [`Refused`] for the first address when every one is
    /// restricted.
    pub fn resolve(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let resolved: Vec<SocketAddr> = (host, 0).to_socket_addrs()?.collect();
        let mut first_refusal = None;
        let mut passed = Vec::with_capacity(resolved.len());
        for address in resolved {
            match self.check(host, address.ip()) {
                Ok(()) => passed.push(address),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match (passed.is_empty(), first_refusal) {
            (true, Some(refused)) => Err(Box::new(refused)),
            (true, None) => Err(format!("{host} has no addresses").into()),
            _ => Ok(passed),
        }
    }
}

/// A network or a single address.
/// The kind of a restricted address, or `None` for a public one.
pub fn restricted_class(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(v4: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = v4.octets();
    let class = match (a, b, c) {
        _ if v4 == Ipv4Addr::new(169, 254, 169, 254) => "cloud metadata",
        (0, _, _) => "unspecified",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private",
        (172, 16..=31, _) => "private",
        (100, 64..=127, _) => "shared (carrier-grade NAT)",
        (169, 254, _) => "link-local",
        (192, 0, 0) => "IETF protocol",
        // Deprecated (RFC 7526): whoever announces it relays to the IPv4 address a 6to4
        // packet carries, so it is refused like 6to4 addresses themselves.
        (192, 88, 99) => "6to4 relay (deprecated)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        _ if v4 == Ipv4Addr::BROADCAST => "broadcast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    };
    Some(class)
}

fn v6_class(v6: Ipv6Addr) -> Option<&'static str> {
    if v6.is_unspecified() {
        return Some("unspecified");
    }
    if v6.is_loopback() {
        return Some("loopback");
    }
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = v6.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let segments = v6.segments();
    // IPv4-compatible (::/96), NAT64 (64:ff9b::/96) and IPv4-translated (::ffff:0:0:0/96)
    // addresses carry an IPv4 address in their last 32 bits.
    if segments[..6] == [0; 6]
        || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
        || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
    {
        let [.., hi, lo] = segments;
        return v4_class(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)));
    }
    if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        return Some("cloud metadata");
    }
    let class = match segments[0] {
        s if s & 0xfe00 == 0xfc00 => "private (unique local)",
        s if s & 0xffc0 == 0xfe80 => "link-local",
        s if s & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if segments[1] == 0x0db8 => "documentation",
        // Tunnels whose address carries an IPv4 address the far end forwards to.
        0x2002 => "6to4 (carries an IPv4 address)",
        0x2001 if segments[1] == 0 => "Teredo (carries an IPv4 address)",
        0x0064 if segments[1] == 0xff9b && segments[2] == 1 => "NAT64 (local use)",
        0x0100 if segments[1..4] == [0, 0, 0] => "discard-only",
        _ => return None,
    };
    Some(class)
}

/// The client's resolver: resolves on the blocking pool and passes only allowed addresses.
pub struct GuardedResolver(pub Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let passed = tokio::task::spawn_blocking(move || guard.resolve(&host))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })??;
            Ok(Box::new(passed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(text: &str) -> Option<&'static str> {
        restricted_class(text.parse().unwrap())
    }

    #[test]
    fn restricted_addresses_are_named_by_class() {
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("127.8.9.10"), Some("loopback"));
        assert_eq!(class("::1"), Some("loopback"));
        assert_eq!(class("10.1.2.3"), Some("private"));
        assert_eq!(class("172.16.0.1"), Some("private"));
        assert_eq!(class("172.31.255.255"), Some("private"));
        assert_eq!(class("192.168.1.1"), Some("private"));
        assert_eq!(class("169.254.169.254"), Some("cloud metadata"));
        assert_eq!(class("fd00:ec2::254"), Some("cloud metadata"));
        assert_eq!(class("169.254.1.1"), Some("link-local"));
        assert_eq!(class("fe80::1"), Some("link-local"));
        assert_eq!(class("224.0.0.1"), Some("multicast"));
        assert_eq!(class("ff02::1"), Some("multicast"));
        assert_eq!(class("0.0.0.0"), Some("unspecified"));
        assert_eq!(class("::"), Some("unspecified"));
        assert_eq!(class("fc00::1"), Some("private (unique local)"));
        assert_eq!(class("100.100.100.200"), Some("shared (carrier-grade NAT)"));
        assert_eq!(class("255.255.255.255"), Some("broadcast"));
        // IPv4 inside IPv6 is judged by the IPv4 address.
        assert_eq!(class("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(class("::ffff:10.0.0.1"), Some("private"));
        assert_eq!(class("64:ff9b::a9fe:a9fe"), Some("cloud metadata"));
        assert_eq!(class("::ffff:0:7f00:1"), Some("loopback"));
        assert_eq!(class("::ffff:0:a00:1"), Some("private"));
        // Deprecated or tunnelling ranges are refused whatever they carry.
        assert_eq!(
            class("2002:7f00:1::1"),
            Some("6to4 (carries an IPv4 address)")
        );
        assert_eq!(
            class("2002:0808:0808::1"),
            Some("6to4 (carries an IPv4 address)")
        );
        // The 6to4 relay anycast range, as IPv4, inside IPv6, and as a 6to4 address (which
        // carries it).
        for relay in ["192.88.99.1", "192.88.99.255", "::ffff:192.88.99.1"] {
            assert_eq!(class(relay), Some("6to4 relay (deprecated)"), "{relay}");
        }
        assert_eq!(
            class("2002:c058:6301::1"),
            Some("6to4 (carries an IPv4 address)")
        );
        assert_eq!(class("192.88.98.1"), None);
        assert_eq!(class("192.88.100.1"), None);
        assert_eq!(class("fec0::1"), Some("site-local (deprecated)"));
        assert_eq!(class("feff::1"), Some("site-local (deprecated)"));
        assert_eq!(
            class("2001:0:4136:e378::1"),
            Some("Teredo (carries an IPv4 address)")
        );
        assert_eq!(class("64:ff9b:1::a00:1"), Some("NAT64 (local use)"));
        assert_eq!(class("100::1"), Some("discard-only"));
        for public in ["1.1.1.1", "8.8.8.8", "172.32.0.1", "2606:4700:4700::1111"] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_takes_networks_and_single_addresses() {
        let guard = Guard::new(&["127.0.0.1".into(), "10.0.0.0/8".into()]).unwrap();
        assert!(guard.check("x", "127.0.0.1".parse().unwrap()).is_ok());
        assert!(guard.check("x", "10.200.0.1".parse().unwrap()).is_ok());
        let refused = guard.check("x", "127.0.0.2".parse().unwrap()).unwrap_err();
        assert_eq!(refused.class, "loopback");
        let err = Guard::new(&["localhost".into()]).unwrap_err();
        assert!(err.contains("`localhost`"), "{err}");
    }

    #[test]
    fn refusals_name_the_host_address_and_class() {
        let guard = Guard::default();
        let err = guard.resolve("localhost").unwrap_err().to_string();
        assert!(
            err.starts_with("destination refused: localhost resolves to "),
            "{err}"
        );
        assert!(err.contains("loopback"), "{err}");
        let url = url::Url::parse("http://[::1]:8080/x").unwrap();
        let err = guard.check_url(&url).unwrap_err().to_string();
        assert_eq!(
            err,
            "destination refused: [::1] is a loopback address \
             (allow it with delivery.allowed_destinations)"
        );
        let allowed = Guard::new(&["127.0.0.0/8".into(), "::1".into()]).unwrap();
        assert!(!allowed.resolve("localhost").unwrap().is_empty());
    }
}
