//! Who the client of a login request is, for the per-client limits (failed callbacks, pending logins).
//!
//! `X-Forwarded-For` is believed only when the direct peer is a trusted proxy (`server.trusted_proxies`):
//! the list is walked from the right, skipping trusted hops, and the first untrusted address is the
//! client. With no trusted proxies (the default) the direct peer is the client, so nobody who reaches the
//! listener directly can pick an address, and a forged header changes nothing.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address as a string (the limits' Redis keys carry it).
pub fn client(headers: &HeaderMap, peer: IpAddr, trusted: &[IpNet]) -> String {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let mut client = canonical(peer);
    if !is_trusted(&client) {
        return client.to_string();
    }
    // Every X-Forwarded-For header, in order, as one list; the rightmost entry is the nearest hop.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for hop in hops.iter().rev() {
        // An entry that is not an address ends the walk: the last trusted hop is as far as we can see.
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = canonical(ip);
        if !is_trusted(&client) {
            break;
        }
    }
    client.to_string()
}

/// IPv4-mapped IPv6 (`::ffff:10.0.0.1`, a dual-stack listener's view) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        h
    }

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn without_trusted_proxies_the_peer_is_the_client_whatever_the_header_says() {
        let peer: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(client(&xff("1.2.3.4"), peer, &[]), "10.1.2.3");
        assert_eq!(client(&HeaderMap::new(), peer, &[]), "10.1.2.3");
        assert_eq!(client(&xff("1.2.3.4"), peer, &nets(&["127.0.0.1/32"])), "10.1.2.3");
    }

    #[test]
    fn behind_trusted_proxies_the_first_untrusted_hop_from_the_right_is_the_client() {
        let envoy: IpAddr = "127.0.0.1".parse().unwrap();
        let trusted = nets(&["127.0.0.1/32", "10.0.0.0/8"]);
        // A client-forged entry on the left is not believed: the hop the trusted proxy saw is.
        assert_eq!(client(&xff("6.6.6.6, 203.0.113.7"), envoy, &trusted), "203.0.113.7");
        // Trusted hops (an ingress) are skipped.
        assert_eq!(client(&xff("203.0.113.7, 10.0.0.5"), envoy, &trusted), "203.0.113.7");
        // Only trusted hops: the leftmost one.
        assert_eq!(client(&xff("10.0.0.9, 10.0.0.5"), envoy, &trusted), "10.0.0.9");
        // No header, or garbage: the last trusted address seen.
        assert_eq!(client(&HeaderMap::new(), envoy, &trusted), "127.0.0.1");
        assert_eq!(client(&xff("203.0.113.7, nonsense, 10.0.0.5"), envoy, &trusted), "10.0.0.5");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(client(&xff("203.0.113.7"), mapped, &trusted), "203.0.113.7");
        assert_eq!(client(&xff("2001:db8::1"), envoy, &trusted), "2001:db8::1");
    }
}
