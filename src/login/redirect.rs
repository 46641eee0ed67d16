//! Where a login may send the browser back to: a relative path, or an allow-listed host. Nothing else,
//! so portcullis is never an open redirect.

/// `Some(rd)` when `rd` is safe to redirect to.
pub fn safe(rd: &str, allowed_hosts: &[String]) -> Option<String> {
    if rd.is_empty() {
        return Some("/".into());
    }
    if rd.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    if rd.starts_with('/') && !rd.starts_with("//") {
        return Some(rd.to_string());
    }
    let url = url::Url::parse(rd).ok()?;
    let host = url.host_str()?;
    let scheme_ok = matches!(url.scheme(), "https" | "http");
    (scheme_ok && url.username().is_empty() && allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
        .then(|| url.to_string())
}

#[cfg(test)]
mod tests {
    use super::safe;

    #[test]
    fn relative_paths_and_allowed_hosts_only() {
        let allowed = vec!["app.example.com".to_string()];
        assert_eq!(safe("/reports?q=1", &allowed).as_deref(), Some("/reports?q=1"));
        assert_eq!(safe("", &allowed).as_deref(), Some("/"));
        assert_eq!(safe("https://app.example.com/x", &allowed).as_deref(), Some("https://app.example.com/x"));
        for bad in [
            "https://evil.example",
            "//evil.example/x",
            "/\\evil.example",
            "javascript:alert(1)",
            "https://app.example.com@evil.example/",
            "https://user@app.example.com/",
            "evil.example",
            "/ok\r\nset-cookie: x",
        ] {
            assert_eq!(safe(bad, &allowed), None, "{bad}");
        }
    }
}
