//! Outcome to Envoy's CheckResponse: the one place a decision becomes statuses and headers.
//!
//! Injected headers carry both the deprecated `append=false` and `OVERWRITE_IF_EXISTS_OR_ADD`, because
//! Envoy versions differ in which they honour and an unset action means append. A header is never both set
//! and listed in `headers_to_remove` (Envoy applies removals after sets). What each denial answers is
//! [`Deny::answer`]; this module only renders it.

use std::borrow::Cow;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status;

use super::{Allowed, CheckInput, Deny};
use crate::config::{HeadersConfig, SessionConfig};
use crate::session::cookie;

/// Takes the value by `Into<String>` so a value built for the header moves in without another copy.
fn header(key: &str, value: impl Into<String>) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.into(), ..Default::default() }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Allow: identity headers overwrite whatever the client sent; absent claims remove the header; the
/// session cookie leaves the `cookie` header, other cookies stay.
/// `response` are the `[response_headers]` for the browser-facing answer (empty when the route opts out).
pub fn allow(
    a: &Allowed,
    input: &CheckInput<'_>,
    h: &HeadersConfig,
    s: &SessionConfig,
    response: &[(String, String)],
) -> CheckResponse {
    let mut set = Vec::with_capacity(6);
    set.extend([header(&h.user_id, a.identity.user_id.as_str()), header(&h.provider, a.provider.as_str())]);
    let mut remove = Vec::with_capacity(4);
    let mut groups = String::new();
    for g in &a.identity.groups {
        if !groups.is_empty() {
            groups.push(',');
        }
        groups.push_str(&encode_group(g));
    }
    let optional = [
        (&h.email, a.identity.email.as_deref()),
        (&h.name, a.identity.name.as_deref()),
        (&h.groups, (!groups.is_empty()).then_some(groups.as_str())),
    ];
    for (name, value) in optional {
        match value {
            Some(v) => set.push(header(name, sanitize(v))),
            None => remove.push(name.clone()),
        }
    }
    match &a.assertion {
        Some(jwt) => set.push(header(&h.jwt, jwt)),
        None => remove.push(h.jwt.clone()),
    }
    match a.bearer {
        Some(b) if b.client => set.push(header(&h.client, "true")),
        _ => remove.push(h.client.clone()),
    }
    if a.bearer.is_some_and(|b| !b.pass) {
        remove.push("authorization".into());
    }
    // Only a route that asked gets one; a client-sent one is removed (Envoy strips it first too), and a
    // request without one costs nothing.
    match &a.delegated {
        Some(t) => set.push(header(&h.delegated, t.as_str())),
        None if input.header(&h.delegated).is_some() => remove.push(h.delegated.clone()),
        None => {}
    }
    ok(set, remove, input, s, response)
}

/// A dry-run pass of a request that would be denied: through to the upstream with no identity (every
/// identity header removed) and without the session cookie.
pub fn pass(input: &CheckInput, h: &HeadersConfig, s: &SessionConfig, response: &[(String, String)]) -> CheckResponse {
    ok(Vec::new(), h.all().iter().map(|n| n.to_string()).collect(), input, s, response)
}

/// The OK answer: `set` and `remove` for the upstream request, the session cookie taken out of `cookie`,
/// `response` for the browser.
fn ok(
    mut set: Vec<HeaderValueOption>,
    mut remove: Vec<String>,
    input: &CheckInput,
    s: &SessionConfig,
    response: &[(String, String)],
) -> CheckResponse {
    match input.header("cookie").and_then(|c| cookie::strip(c, &s.cookie_name)) {
        Some(rest) => set.push(header("cookie", rest)),
        None => remove.push("cookie".to_string()),
    }
    CheckResponse {
        status: Some(Status { code: tonic::Code::Ok as i32, ..Default::default() }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set,
            headers_to_remove: remove,
            response_headers_to_add: response.iter().map(|(k, v)| header(k, v)).collect(),
            ..Default::default()
        })),
        ..Default::default()
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
    let mut headers = vec![header("cache-control", "no-store")];
    let presented = input.header("cookie").and_then(|c| cookie::find(c, &s.cookie_name)).is_some();
    if presented && a.clears_cookie {
        headers.push(header("set-cookie", cookie::clear(s)));
    }
    if let Some(secs) = a.retry_after {
        headers.push(header("retry-after", secs.to_string()));
    }
    if let Some(challenge) = a.www_authenticate {
        headers.push(header("www-authenticate", challenge));
    }
    let scope = a.names_scope.zip(input.extension(crate::delegate::DELEGATE));
    let (status, body) = if a.status == 401 && a.www_authenticate.is_none() && input.is_navigation() {
        let rd: String = url::form_urlencoded::byte_serialize(input.path.as_bytes()).collect();
        headers.push(header("location", format!("/oauth2/login?rd={rd}")));
        (302, Cow::Borrowed(""))
    } else if let Some((error, scope)) = scope {
        (a.status, Cow::Owned(serde_json::json!({"error": error, "scope": scope}).to_string()))
    } else {
        (a.status, Cow::Borrowed(a.body))
    };
    if !body.is_empty() {
        headers.push(header("content-type", "application/json"));
    }
    CheckResponse {
        status: Some(Status { code: a.grpc as i32, message: d.reason().to_string(), ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers,
            body: body.into_owned(),
        })),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::encode_group;

    #[test]
    fn a_group_cannot_forge_another() {
        assert_eq!(encode_group("dev,admins"), "dev%2Cadmins");
        assert_eq!(encode_group("100%,x"), "100%25%2Cx");
        assert_eq!(encode_group("ops"), "ops");
    }
}
