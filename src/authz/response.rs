//! Outcome to Envoy's CheckResponse: the one place a decision becomes statuses and headers.
//!
//! Injected headers carry both the deprecated `append=false` and `OVERWRITE_IF_EXISTS_OR_ADD`, because
//! Envoy versions differ in which they honour and an unset action means append. A header is never both set
//! and listed in `headers_to_remove` (Envoy applies removals after sets). Denials always use the gRPC codes
//! UNAUTHENTICATED or PERMISSION_DENIED: Envoy treats any other code as an error, which
//! `failure_mode_allow` could turn into an allow.

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
    OkHttpResponse,
};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status;

use super::{Allowed, CheckInput, Deny};
use crate::config::{HeadersConfig, SessionConfig};
use crate::session::cookie;

const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAUTHENTICATED: i32 = 16;
/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER: &str = "5";

fn header(key: &str, value: &str) -> HeaderValueOption {
    #[allow(deprecated)]
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        append: Some(BoolValue { value: false }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Allow: identity headers overwrite whatever the client sent; absent claims remove the header; the
/// session cookie leaves the `cookie` header, other cookies stay.
pub fn allow(a: &Allowed, input: &CheckInput, h: &HeadersConfig, s: &SessionConfig) -> CheckResponse {
    let mut set = vec![header(&h.user_id, &a.identity.user_id), header(&h.provider, &a.provider)];
    let mut remove = Vec::new();
    let groups = a.identity.groups.join(",");
    let optional = [
        (&h.email, a.identity.email.as_deref()),
        (&h.name, a.identity.name.as_deref()),
        (&h.groups, (!groups.is_empty()).then_some(groups.as_str())),
    ];
    for (name, value) in optional {
        match value {
            Some(v) => set.push(header(name, &sanitize(v))),
            None => remove.push(name.clone()),
        }
    }
    remove.push(h.jwt.clone());
    match input.header("cookie").and_then(|c| cookie::strip(c, &s.cookie_name)) {
        Some(rest) => set.push(header("cookie", &rest)),
        None => remove.push("cookie".to_string()),
    }
    CheckResponse {
        status: Some(Status { code: OK, ..Default::default() }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set,
            headers_to_remove: remove,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Header values come from IdP claims: keep them on one line.
fn sanitize(v: &str) -> String {
    v.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// Deny, as the design's status table says.
pub fn deny(d: Deny, input: &CheckInput, s: &SessionConfig) -> CheckResponse {
    let mut headers = vec![header("cache-control", "no-store")];
    let presented = input.header("cookie").and_then(|c| cookie::find(c, &s.cookie_name)).is_some();
    if presented && d.clears_cookie() {
        headers.push(header("set-cookie", &cookie::clear(s)));
    }
    let (status, body) = match d.status() {
        401 if input.is_navigation() => {
            let rd: String = url::form_urlencoded::byte_serialize(input.path.as_bytes()).collect();
            headers.push(header("location", &format!("/oauth2/login?rd={rd}")));
            (302, String::new())
        }
        401 => (401, r#"{"error":"unauthenticated"}"#.to_string()),
        403 => (403, r#"{"error":"forbidden"}"#.to_string()),
        503 => {
            headers.push(header("retry-after", RETRY_AFTER));
            (503, r#"{"error":"unavailable"}"#.to_string())
        }
        other => (other, r#"{"error":"bad_request"}"#.to_string()),
    };
    if !body.is_empty() {
        headers.push(header("content-type", "application/json"));
    }
    let code = if status == 401 || status == 302 { UNAUTHENTICATED } else { PERMISSION_DENIED };
    CheckResponse {
        status: Some(Status { code, message: d.reason().to_string(), ..Default::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers,
            body,
        })),
        ..Default::default()
    }
}
