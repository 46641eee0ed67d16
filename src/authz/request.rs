//! What the decision needs from a CheckRequest, read defensively: a request without HTTP attributes is
//! malformed, never a panic.

use std::borrow::Cow;
use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;

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

/// Borrows from the CheckRequest: in the usual case (Envoy's lower-cased `headers` map, no `header_map`)
/// nothing is copied, so a check allocates no header map of its own.
#[derive(Debug, Default, Clone)]
pub struct CheckInput<'a> {
    /// Lower-cased names; repeated headers joined as Envoy joins them.
    pub headers: Cow<'a, HashMap<String, String>>,
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub context_extensions: Cow<'a, HashMap<String, String>>,
}

impl<'a> CheckInput<'a> {
    /// `None` when the request carries no HTTP attributes.
    pub fn from_request(req: &'a CheckRequest) -> Option<Self> {
        let attrs = req.attributes.as_ref()?;
        let http = attrs.request.as_ref()?.http.as_ref()?;
        let lower = |k: &String| !k.bytes().any(|b| b.is_ascii_uppercase());
        let headers = match &http.header_map {
            None if http.headers.keys().all(lower) => Cow::Borrowed(&http.headers),
            _ => Cow::Owned(owned_headers(http)),
        };
        Some(Self {
            headers,
            method: &http.method,
            path: &http.path,
            host: &http.host,
            context_extensions: Cow::Borrowed(&attrs.context_extensions),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
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
        match self.context_extensions.get(SECURITY_HEADERS).map(|v| v.trim()) {
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
        everywhere || self.context_extensions.get(BEARER).is_some_and(|v| v.trim().eq_ignore_ascii_case("allow"))
    }

    /// Scopes a bearer token needs on this route (all of them).
    pub fn bearer_scopes(&self) -> Vec<&str> {
        self.context_extensions
            .get(BEARER_SCOPES)
            .map(|v| v.split([' ', ',']).filter(|s| !s.is_empty()).collect())
            .unwrap_or_default()
    }

    /// Whether the upstream gets the bearer token (`portcullis.bearer_pass: "true"`).
    pub fn bearer_pass(&self) -> bool {
        self.context_extensions.get(BEARER_PASS).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
    }

    /// Whether this request is only observed: the route's `portcullis.dry_run` if it says `"true"` or
    /// `"false"`, else the global mode. Any other value enforces (fail closed) and is logged.
    pub fn dry_run(&self, global: bool) -> bool {
        match self.context_extensions.get(DRY_RUN).map(|v| v.trim()) {
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
        let Some(v) = self.context_extensions.get(REQUIRE_ANY) else {
            return Some(Vec::new());
        };
        let groups: Vec<&str> = v.split(',').map(str::trim).filter(|g| !g.is_empty()).collect();
        (!groups.is_empty()).then_some(groups)
    }
}

/// The header map with lower-cased names, merging Envoy's raw `header_map` when it sends one.
fn owned_headers(http: &HttpRequest) -> HashMap<String, String> {
    let mut headers: HashMap<String, String> =
        http.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), v.clone())).collect();
    // Envoy sends `header_map` instead of `headers` when configured to encode raw headers.
    if let Some(map) = &http.header_map {
        for h in &map.headers {
            let value = if h.raw_value.is_empty() {
                h.value.clone()
            } else {
                String::from_utf8_lossy(&h.raw_value).into_owned()
            };
            let sep = if h.key.eq_ignore_ascii_case("cookie") { "; " } else { "," };
            headers
                .entry(h.key.to_ascii_lowercase())
                .and_modify(|v| {
                    v.push_str(sep);
                    v.push_str(&value)
                })
                .or_insert(value);
        }
    }
    headers
}
