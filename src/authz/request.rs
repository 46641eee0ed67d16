//! What the decision needs from a CheckRequest, read defensively: a request without HTTP attributes is
//! malformed, never a panic.

use std::borrow::Cow;

use super::wire;

/// Context extension naming groups a route requires (any one of them, comma-separated).
pub const REQUIRE_ANY: &str = "portcullis.require_any";

/// Context extension that accepts `Authorization: Bearer` on a route (`"allow"`).
pub const BEARER: &str = "portcullis.bearer";
/// Context extension naming scopes a bearer token must all carry (space- or comma-separated).
pub const BEARER_SCOPES: &str = "portcullis.bearer_scopes";
/// Context extension that passes the bearer token on to the upstream (`"true"`); removed otherwise.
pub const BEARER_PASS: &str = "portcullis.bearer_pass";

/// Context extension that puts a route in dry run (`"true"`) or enforces it under a global dry run (`"false"`).
pub const DRY_RUN: &str = "portcullis.dry_run";

/// Context extension that turns `[response_headers]` off on a route (`"off"`).
pub const SECURITY_HEADERS: &str = "portcullis.security_headers";

/// One header: borrowed from the request, owned only where it had to be lower-cased or joined.
pub type Header<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Borrows from the decoded CheckRequest: in the usual case (Envoy's lower-cased `headers` map, no `header_map`)
/// nothing is copied, so a check allocates one list of references and no header map of its own. Lookups
/// scan the list: a request carries a few dozen headers at most, and hashing each name cost more.
#[derive(Debug, Default, Clone)]
pub struct CheckInput<'a> {
    /// Lower-cased names; repeated headers joined as Envoy joins them.
    pub headers: Vec<Header<'a>>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    /// The route's `context_extensions`.
    pub context_extensions: Vec<(&'a str, &'a str)>,
}

impl<'a> CheckInput<'a> {
    /// What the Check service decoded ([`wire`]); `None` when the request carries no HTTP attributes, or a
    /// name or value it reads is not UTF-8 (protobuf `string`s must be; envoy-types refused the message).
    pub fn from_wire(req: &'a wire::CheckRequest) -> Option<Self> {
        let attrs = req.attributes.as_ref()?;
        let http = attrs.request.as_ref()?.http.as_ref()?;
        let text = |b: &'a bytes::Bytes| std::str::from_utf8(b).ok();
        let raw = http.header_map.as_ref().map_or(&[][..], |m| &m.headers[..]);
        let mut headers: Vec<Header<'a>> = Vec::with_capacity(http.headers.len() + raw.len());
        for e in &http.headers {
            headers.push((Cow::Borrowed(text(&e.key)?), Cow::Borrowed(text(&e.value)?)));
        }
        for h in raw {
            let value = if h.raw_value.is_empty() {
                Cow::Borrowed(text(&h.value)?)
            } else {
                String::from_utf8_lossy(&h.raw_value)
            };
            headers.push((Cow::Borrowed(text(&h.key)?), value));
        }
        let mut context_extensions = Vec::with_capacity(attrs.context_extensions.len());
        for e in &attrs.context_extensions {
            context_extensions.push((text(&e.key)?, text(&e.value)?));
        }
        Some(Self {
            headers: normalized(headers, http.header_map.is_some()),
            method: text(&http.method)?,
            path: text(&http.path)?,
            host: text(&http.host)?,
            context_extensions,
        })
    }

    /// The header's value; of a name sent twice in a map, the last (a protobuf map keeps the last).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_ref())
    }

    /// The route's context extension `key`.
    pub fn extension(&self, key: &str) -> Option<&'a str> {
        self.context_extensions.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    /// A top-level browser navigation: the only request that gets a redirect to the login page.
    pub fn is_navigation(&self) -> bool {
        let accepts_html = self.header("accept").is_some_and(|a| a.contains("text/html"));
        let mode_ok = self.header("sec-fetch-mode").is_none_or(|m| m.eq_ignore_ascii_case("navigate"));
        self.method.eq_ignore_ascii_case("GET") && accepts_html && mode_ok && self.header("x-requested-with").is_none()
    }

    /// Whether the route wants the `[response_headers]`: only an explicit `"off"` turns them off; any other
    /// value keeps them (a typo must not drop HSTS) and is logged.
    pub fn security_headers(&self) -> bool {
        match self.extension(SECURITY_HEADERS).map(|v| v.trim()) {
            None => true,
            Some(v) if v.eq_ignore_ascii_case("off") => false,
            Some(v) => {
                if !v.eq_ignore_ascii_case("on") {
                    tracing::warn!(value = %v, "portcullis.security_headers is neither \"on\" nor \"off\": kept on");
                }
                true
            }
        }
    }

    /// The bearer token of `Authorization: Bearer <token>` (scheme case-insensitive), if any.
    pub fn bearer_token(&self) -> Option<&str> {
        let v = self.header("authorization")?.trim();
        let (scheme, token) = v.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    /// Whether the route accepts bearer tokens: `portcullis.bearer: "allow"`, or `[bearer] enabled`.
    pub fn bearer_allowed(&self, everywhere: bool) -> bool {
        everywhere || self.extension(BEARER).is_some_and(|v| v.trim().eq_ignore_ascii_case("allow"))
    }

    /// Scopes a bearer token needs on this route (all of them).
    pub fn bearer_scopes(&self) -> Vec<&str> {
        self.extension(BEARER_SCOPES)
            .map(|v| v.split([' ', ',']).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Whether the upstream gets the bearer token (`portcullis.bearer_pass: "true"`).
    pub fn bearer_pass(&self) -> bool {
        self.extension(BEARER_PASS).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Whether this request is only observed: the route's `portcullis.dry_run` if it says `"true"` or
    /// `"false"`, else the global mode. Any other value enforces (fail closed) and is logged.
    pub fn dry_run(&self, global: bool) -> bool {
        match self.extension(DRY_RUN).map(|v| v.trim()) {
            None => global,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                tracing::warn!(value = %v, "portcullis.dry_run is neither \"true\" nor \"false\": enforced");
                false
            }
        }
    }

    /// Groups the route requires (any one), from `context_extensions`: empty when the route names no
    /// requirement, `None` when it names one made only of separators (a misconfiguration that must deny,
    /// not mean "no requirement").
    pub fn required_groups(&self) -> Option<Vec<&str>> {
        let Some(v) = self.extension(REQUIRE_ANY) else {
            return Some(Vec::new());
        };
        let groups: Vec<&str> = v.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
        (!groups.is_empty()).then_some(groups)
    }
}

/// Envoy's `headers` map is lower-cased, one entry per name: kept as it is. Otherwise (a `header_map`, or
/// a name with capitals) names are lower-cased and repeats joined the way Envoy joins them.
fn normalized(headers: Vec<Header<'_>>, raw: bool) -> Vec<Header<'_>> {
    let upper = |k: &str| k.bytes().any(|b| b.is_ascii_uppercase());
    if !raw && !headers.iter().any(|(k, _)| upper(k)) {
        return headers;
    }
    let mut out: Vec<Header<'_>> = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let k = if upper(&k) { Cow::Owned(k.to_ascii_lowercase()) } else { k };
        match out.iter_mut().find(|(n, _)| *n == k) {
            Some((_, joined)) => {
                let joined = joined.to_mut();
                joined.push_str(if k == "cookie" { "; " } else { "," });
                joined.push_str(&v);
            }
            None => out.push((k, v)),
        }
    }
    out
}

impl crate::otel::Headers for CheckInput<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.header(name)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};
    use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn peer(ip: &str, port: u32) -> Option<Peer> {
        let socket = SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        };
        let address = Address { address: Some(address::Address::SocketAddress(socket)) };
        Some(Peer { address: Some(address), principal: "spiffe://peer".into(), ..Default::default() })
    }

    /// A request as Envoy sends it: both peers, the request's id, scheme and protocol, headers, extensions.
    fn envoy_like(headers: &[(&str, &str)], raw: Option<HeaderMap>) -> CheckRequest {
        let http = HttpRequest {
            id: "1234".into(),
            method: "POST".into(),
            headers: map(headers),
            header_map: raw,
            path: "/reports?q=1".into(),
            host: "app.example".into(),
            scheme: "https".into(),
            protocol: "HTTP/1.1".into(),
            size: 12,
            ..Default::default()
        };
        CheckRequest {
            attributes: Some(AttributeContext {
                source: peer("10.0.0.1", 55_555),
                destination: peer("10.0.0.2", 8080),
                request: Some(Request { http: Some(http), ..Default::default() }),
                context_extensions: map(&[(REQUIRE_ANY, "admins"), (DRY_RUN, "false")]),
                ..Default::default()
            }),
        }
    }

    fn over_the_wire(req: &CheckRequest) -> wire::CheckRequest {
        wire::CheckRequest::decode(req.encode_to_vec().as_slice()).expect("wire decode")
    }

    /// What a decision can read, in one sorted list: every header, the request line, the extensions.
    fn seen(i: &CheckInput<'_>) -> Vec<String> {
        let mut all: Vec<String> = i.headers.iter().map(|(k, v)| format!("header {k}: {v}")).collect();
        all.extend(i.context_extensions.iter().map(|(k, v)| format!("extension {k}: {v}")));
        all.extend([format!("method {}", i.method), format!("path {}", i.path), format!("host {}", i.host)]);
        all.sort();
        all
    }

    #[test]
    fn the_check_service_reads_what_envoy_sends_without_copies() {
        let headers = [
            ("cookie", "a=1; GATEWAY_SESSION=abc"),
            ("x-request-id", "r-1"),
            ("accept", "text/html"),
            (":authority", "app.example"),
            ("user-agent", "curl/8"),
        ];
        let req = envoy_like(&headers, None);
        let wire = over_the_wire(&req);
        let b = CheckInput::from_wire(&wire).unwrap();
        let mut sent: Vec<String> = headers.iter().map(|(k, v)| format!("header {k}: {v}")).collect();
        sent.extend([format!("extension {REQUIRE_ANY}: admins"), format!("extension {DRY_RUN}: false")]);
        sent.extend(["method POST", "path /reports?q=1", "host app.example"].map(String::from));
        sent.sort();
        assert_eq!(seen(&b), sent, "everything the decision reads, nothing else, unchanged");
        assert_eq!(b.header("cookie"), Some("a=1; GATEWAY_SESSION=abc"));
        assert_eq!(b.header("x-request-id"), Some("r-1"));
        assert_eq!(b.header("authorization"), None);
        assert_eq!((b.method, b.path, b.host), ("POST", "/reports?q=1", "app.example"));
        assert_eq!(b.required_groups(), Some(vec!["admins"]));
        assert!(!b.dry_run(true));
        assert!(b.headers.iter().all(|(k, v)| matches!((k, v), (Cow::Borrowed(_), Cow::Borrowed(_)))), "no copies");
    }

    #[test]
    fn raw_headers_are_lower_cased_and_repeats_joined_as_envoy_joins_them() {
        let value = |k: &str, v: &str| HeaderValue { key: k.into(), value: v.into(), ..Default::default() };
        let raw = HeaderMap {
            headers: vec![
                value("Cookie", "a=1"),
                value("cookie", "GATEWAY_SESSION=abc"),
                HeaderValue { key: "X-Forwarded-For".into(), raw_value: b"10.0.0.9".to_vec(), ..Default::default() },
                value("x-forwarded-for", "10.0.0.8"),
            ],
        };
        let req = envoy_like(&[("Accept", "text/html")], Some(raw));
        let wire = over_the_wire(&req);
        let i = CheckInput::from_wire(&wire).unwrap();
        assert_eq!(i.header("cookie"), Some("a=1; GATEWAY_SESSION=abc"));
        assert_eq!(i.header("x-forwarded-for"), Some("10.0.0.9,10.0.0.8"));
        assert_eq!(i.header("accept"), Some("text/html"));
        assert_eq!(i.header("Accept"), None, "names are looked up lower-cased");
    }

    #[test]
    fn a_request_without_http_attributes_or_with_text_that_is_not_utf8_is_malformed() {
        assert!(CheckInput::from_wire(&over_the_wire(&CheckRequest::default())).is_none());
        let text = |s: &'static [u8]| bytes::Bytes::from_static(s);
        let bad = |key, value| wire::CheckRequest {
            attributes: Some(wire::AttributeContext {
                request: Some(wire::Request {
                    http: Some(wire::HttpRequest {
                        method: text(b"GET"),
                        headers: vec![wire::Entry { key, value }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        };
        let good = bad(text(b"cookie"), text(b"GATEWAY_SESSION=abc"));
        assert_eq!(CheckInput::from_wire(&good).unwrap().header("cookie"), Some("GATEWAY_SESSION=abc"));
        assert!(CheckInput::from_wire(&bad(text(b"cookie"), text(b"GATEWAY_SESSION=\xff"))).is_none());
        assert!(CheckInput::from_wire(&bad(text(b"\xc3("), text(b"x"))).is_none());
    }
}
