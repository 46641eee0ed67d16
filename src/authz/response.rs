//! Outcome to Envoy's CheckResponse: the one place a decision becomes statuses and headers.
//!
//! Injected headers carry both the deprecated `append=false` and `OVERWRITE_IF_EXISTS_OR_ADD`, because
//! Envoy versions differ in which they honour and an unset action means append. A header is never both set
//! and listed in `headers_to_remove` (Envoy applies removals after sets). What each denial answers is
//! [`Deny::answer`]; this module only renders it.

use std::borrow::Cow;

use bytes::Bytes;
use envoy_types::ext_authz::v3::pb::HeaderAppendAction;

use super::wire::{
    BoolValue, CheckResponse, DeniedHttpResponse, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse, Status,
};
use super::{Allowed, CheckInput, Deny};
use crate::config::{HeadersConfig, SessionConfig};
use crate::session::cookie;

/// The header names of an answer and the browser's security headers, made once per config: an answer
/// refers to them instead of copying a name per header per check.
pub struct Names {
    user_id: Bytes,
    provider: Bytes,
    email: Bytes,
    name: Bytes,
    groups: Bytes,
    jwt: Bytes,
    client: Bytes,
    delegated: Bytes,
    /// `[response_headers]` merged over the defaults, as they go on an OK answer.
    security: Vec<HeaderValueOption>,
}

impl Names {
    pub fn new(h: &HeadersConfig, response_headers: Vec<(String, String)>) -> Self {
        let name = |n: &String| Bytes::from(n.clone());
        Self {
            user_id: name(&h.user_id),
            provider: name(&h.provider),
            email: name(&h.email),
            name: name(&h.name),
            groups: name(&h.groups),
            jwt: name(&h.jwt),
            client: name(&h.client),
            delegated: name(&h.delegated),
            security: response_headers.into_iter().map(|(k, v)| header(k.into(), v.into())).collect(),
        }
    }

    fn all(&self) -> [&Bytes; 8] {
        [&self.user_id, &self.provider, &self.email, &self.name, &self.groups, &self.jwt, &self.client, &self.delegated]
    }
}

const COOKIE: Bytes = Bytes::from_static(b"cookie");

fn header(key: Bytes, value: Bytes) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key, value, raw_value: Bytes::new() }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
    }
}

/// A value for a header: copied when borrowed, moved in when it was built for the header.
fn text(v: Cow<'_, str>) -> Bytes {
    match v {
        Cow::Borrowed(s) => Bytes::copy_from_slice(s.as_bytes()),
        Cow::Owned(s) => Bytes::from(s),
    }
}

/// Allow: identity headers overwrite whatever the client sent; absent claims remove the header; the
/// session cookie leaves the `cookie` header, other cookies stay. `security`: the browser's security
/// headers go on the answer (the route did not opt out).
pub fn allow(
    a: &Allowed,
    input: &CheckInput<'_>,
    n: &Names,
    h: &HeadersConfig,
    s: &SessionConfig,
    security: bool,
) -> CheckResponse {
    let mut set = Vec::with_capacity(8);
    set.extend([
        header(n.user_id.clone(), text(a.identity.user_id.as_str().into())),
        header(n.provider.clone(), text(a.provider.as_str().into())),
    ]);
    let mut remove = Vec::with_capacity(4);
    let mut groups = String::new();
    for g in &a.identity.groups {
        if !groups.is_empty() {
            groups.push(',');
        }
        groups.push_str(&encode_group(g));
    }
    let optional = [
        (&n.email, a.identity.email.as_deref().map(sanitize)),
        (&n.name, a.identity.name.as_deref().map(sanitize)),
        (&n.groups, (!groups.is_empty()).then_some(Cow::Owned(groups))),
        (&n.jwt, a.assertion.as_deref().map(Cow::Borrowed)),
    ];
    for (name, value) in optional {
        match value {
            Some(v) => set.push(header(name.clone(), text(v))),
            None => remove.push(name.clone()),
        }
    }
    match a.bearer {
        Some(b) if b.client => set.push(header(n.client.clone(), Bytes::from_static(b"true"))),
        _ => remove.push(n.client.clone()),
    }
    if a.bearer.is_some_and(|b| !b.pass) {
        remove.push(Bytes::from_static(b"authorization"));
    }
    // Only a route that asked gets one; a client-sent one is removed (Envoy strips it first too), and a
    // request without one costs nothing.
    match &a.delegated {
        Some(t) => set.push(header(n.delegated.clone(), text(t.as_str().into()))),
        None if input.header(&h.delegated).is_some() => remove.push(n.delegated.clone()),
        None => {}
    }
    ok(set, remove, input, n, s, security)
}

/// A dry-run pass of a request that would be denied: through to the upstream with no identity (every
/// identity header removed) and without the session cookie.
pub fn pass(input: &CheckInput, n: &Names, s: &SessionConfig, security: bool) -> CheckResponse {
    ok(Vec::new(), n.all().into_iter().cloned().collect(), input, n, s, security)
}

/// The OK answer: `set` and `remove` for the upstream request, the session cookie taken out of `cookie`,
/// the security headers for the browser when `security`.
fn ok(
    mut set: Vec<HeaderValueOption>,
    mut remove: Vec<Bytes>,
    input: &CheckInput,
    n: &Names,
    s: &SessionConfig,
    security: bool,
) -> CheckResponse {
    match input.header("cookie").and_then(|c| cookie::strip(c, &s.cookie_name)) {
        Some(rest) => set.push(header(COOKIE, rest.into())),
        None => remove.push(COOKIE),
    }
    CheckResponse {
        status: Some(Status { code: tonic::Code::Ok as i32, message: Bytes::new() }),
        http_response: Some(HttpResponse::Ok(OkHttpResponse {
            headers: set,
            headers_to_remove: remove,
            response_headers_to_add: if security { n.security.clone() } else { Vec::new() },
        })),
    }
}

/// One group in the comma-separated `x-auth-groups`: `%` and `,` are percent-encoded so a group named
/// `dev,admins` cannot read as two groups upstream.
fn encode_group(g: &str) -> Cow<'_, str> {
    if g.contains(['%', ',']) {
        Cow::Owned(g.replace('%', "%25").replace(',', "%2C"))
    } else {
        Cow::Borrowed(g)
    }
}

/// Header values come from IdP claims: keep them on one line (copied only when there is something to replace).
fn sanitize(v: &str) -> Cow<'_, str> {
    if v.chars().any(char::is_control) {
        Cow::Owned(v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect())
    } else {
        Cow::Borrowed(v)
    }
}

/// Deny, rendering the row of [`Deny::answer`]; a 401 to a browser navigation becomes the login redirect.
pub fn deny(d: Deny, input: &CheckInput<'_>, s: &SessionConfig) -> CheckResponse {
    let a = d.answer();
    let named = |k: &'static str, v: Bytes| header(Bytes::from_static(k.as_bytes()), v);
    let mut headers = vec![named("cache-control", Bytes::from_static(b"no-store"))];
    let presented = input.header("cookie").and_then(|c| cookie::find(c, &s.cookie_name)).is_some();
    if presented && a.clears_cookie {
        headers.push(named("set-cookie", cookie::clear(s).into()));
    }
    if let Some(secs) = a.retry_after {
        headers.push(named("retry-after", secs.to_string().into()));
    }
    if let Some(challenge) = a.www_authenticate {
        headers.push(named("www-authenticate", Bytes::from_static(challenge.as_bytes())));
    }
    let scope = a.names_scope.zip(input.extension(crate::delegate::DELEGATE));
    let (status, body) = if a.status == 401 && a.www_authenticate.is_none() && input.is_navigation() {
        let rd: String = url::form_urlencoded::byte_serialize(input.path.as_bytes()).collect();
        headers.push(named("location", format!("/oauth2/login?rd={rd}").into()));
        (302, Bytes::new())
    } else if let Some((error, scope)) = scope {
        (a.status, serde_json::json!({"error": error, "scope": scope}).to_string().into())
    } else {
        (a.status, Bytes::from_static(a.body.as_bytes()))
    };
    if !body.is_empty() {
        headers.push(named("content-type", Bytes::from_static(b"application/json")));
    }
    CheckResponse {
        status: Some(Status { code: a.grpc as i32, message: Bytes::from_static(d.reason().as_bytes()) }),
        http_response: Some(HttpResponse::Denied(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers,
            body,
        })),
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::ext_authz::v3::pb::{CheckResponse as EnvoyResponse, HttpResponse as EnvoyHttp};
    use envoy_types::pb::envoy::config::core::v3::HeaderValueOption as EnvoyHeader;
    use prost::Message;

    use super::*;
    use crate::idp::Identity;

    fn envoy_reads(r: &CheckResponse) -> EnvoyResponse {
        EnvoyResponse::decode(r.encode_to_vec().as_slice()).unwrap()
    }

    /// name: value, for headers Envoy overwrites (`append` false and `OVERWRITE_IF_EXISTS_OR_ADD`).
    #[allow(deprecated)]
    fn overwritten(hs: &[EnvoyHeader]) -> Vec<String> {
        hs.iter()
            .map(|o| {
                assert_eq!(o.append.map(|b| b.value), Some(false));
                assert_eq!(o.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
                let h = o.header.as_ref().unwrap();
                format!("{}: {}", h.key, h.value)
            })
            .collect()
    }

    #[test]
    fn an_allow_reads_in_envoys_messages_as_it_was_decided() {
        let h = HeadersConfig::default();
        let n = Names::new(&h, vec![("x-frame-options".into(), "DENY".into())]);
        let input =
            CheckInput { headers: vec![("cookie".into(), "a=1; GATEWAY_SESSION=abc".into())], ..Default::default() };
        let identity = Identity {
            user_id: "alice".into(),
            email: Some("alice@example.com".into()),
            name: None,
            groups: vec!["dev,admins".into(), "ops".into()],
        };
        let a = Allowed {
            identity,
            provider: "corp".into(),
            session_id: "s".into(),
            assertion: Some("e.y.j".into()),
            bearer: None,
            delegated: None,
        };
        let r = envoy_reads(&allow(&a, &input, &n, &h, &SessionConfig::default(), true));
        assert_eq!(r.status.map(|s| s.code), Some(0));
        let Some(EnvoyHttp::OkResponse(ok)) = r.http_response else { panic!("not an OK answer") };
        assert_eq!(
            overwritten(&ok.headers),
            [
                "x-auth-user-id: alice",
                "x-auth-provider: corp",
                "x-auth-email: alice@example.com",
                "x-auth-groups: dev%2Cadmins,ops",
                "x-auth-jwt: e.y.j",
                "cookie: a=1",
            ]
        );
        assert_eq!(ok.headers_to_remove, ["x-auth-name", "x-auth-client"]);
        assert_eq!(overwritten(&ok.response_headers_to_add), ["x-frame-options: DENY"]);

        let off = envoy_reads(&allow(&a, &input, &n, &h, &SessionConfig::default(), false));
        let Some(EnvoyHttp::OkResponse(ok)) = off.http_response else { panic!("not an OK answer") };
        assert!(ok.response_headers_to_add.is_empty(), "a route that opted out gets no security headers");
    }

    #[test]
    fn a_deny_reads_in_envoys_messages_with_its_status_reason_and_body() {
        let input = CheckInput {
            headers: vec![("cookie".into(), "GATEWAY_SESSION=abc".into())],
            path: "/api",
            ..Default::default()
        };
        let r = envoy_reads(&deny(Deny::UnknownSession, &input, &SessionConfig::default()));
        let status = r.status.unwrap();
        assert_eq!(
            (status.code, status.message.as_str()),
            (Deny::UnknownSession.answer().grpc as i32, "unknown_session")
        );
        let Some(EnvoyHttp::DeniedResponse(d)) = r.http_response else { panic!("not a denied answer") };
        assert_eq!(d.status.map(|s| s.code), Some(401));
        assert_eq!(d.body, Deny::UnknownSession.answer().body);
        let headers = overwritten(&d.headers);
        assert!(headers.contains(&"cache-control: no-store".to_string()), "{headers:?}");
        assert!(headers.iter().any(|h| h.starts_with("set-cookie: GATEWAY_SESSION=;")), "{headers:?}");
    }

    #[test]
    fn a_group_cannot_forge_another() {
        assert_eq!(encode_group("dev,admins"), "dev%2Cadmins");
        assert_eq!(encode_group("100%,x"), "100%25%2Cx");
        assert_eq!(encode_group("ops"), "ops");
    }
}
