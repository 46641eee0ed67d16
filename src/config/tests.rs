use std::time::Duration;

use secrecy::ExposeSecret;

use super::*;

fn minimal() -> String {
    format!(
        r#"
[server]
grpc_addr = "127.0.0.1:9001"
http_addr = "127.0.0.1:9002"
public_url = "https://app.example.com"

[redis]
url = "redis://127.0.0.1:6379"

[session]
cookie_secure = false
encryption_keys = ["{}"]

[revalidation]
mode = "every_request"

[providers.corp]
kind = "ping"
issuer = "https://idp.example.com"
client_id = "portcullis"
client_secret = "s3cret"
scopes = ["openid", "profile", "email", "offline_access"]
"#,
        crate::crypto::generate_key()
    )
}

#[test]
fn the_design_minimal_file_loads_with_defaults() {
    let c = Config::from_toml(&minimal()).unwrap();
    assert_eq!(c.session.cookie_name, "GATEWAY_SESSION");
    assert_eq!(c.session.idle_timeout, Duration::from_secs(1800));
    assert_eq!(c.session.absolute_timeout, Duration::from_secs(8 * 3600));
    assert_eq!(c.m2m.follower_retries, 15);
    assert_eq!(c.m2m.follower_delay, Duration::from_millis(300));
    assert_eq!(c.headers.user_id, "x-auth-user-id");
    assert_eq!(c.providers["corp"].kind, ProviderKind::Ping);
}

#[test]
fn bad_values_are_named_all_at_once() {
    let text = minimal()
        .replace("redis://127.0.0.1:6379", "http://nope")
        .replace("mode = \"every_request\"", "mode = \"max_staleness\"\nmax_staleness = \"0s\"")
        .replace("client_secret = \"s3cret\"", "");
    let err = Config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("redis.url"), "{err}");
    assert!(err.contains("revalidation.max_staleness"), "{err}");
    assert!(err.contains("providers.corp.client_secret"), "{err}");
}

#[test]
fn type_errors_name_the_key() {
    let text = minimal().replace("cookie_secure = false", "cookie_secure = false\nidle_timeout = \"soon\"");
    let err = Config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("session.idle_timeout"), "{err}");
    let text = minimal().replace("[revalidation]", "[revalidation]\nbogus = 1");
    let err = Config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}

#[test]
fn entra_defaults_follow_the_tenant() {
    let text = minimal()
        .replace("kind = \"ping\"\nissuer = \"https://idp.example.com\"", "kind = \"entra\"\ntenant = \"contoso\"");
    let c = Config::from_toml(&text).unwrap();
    let p = &c.providers["corp"];
    assert_eq!(p.issuer().as_deref(), Some("https://login.microsoftonline.com/contoso/v2.0"));
    assert_eq!(p.graph_url(), "https://graph.microsoft.com/v1.0");
    assert_eq!(p.m2m_scope().as_deref(), Some("https://graph.microsoft.com/.default"));
}

#[test]
fn circuit_breaker_keys_default_and_are_checked() {
    let c = Config::from_toml(&minimal()).unwrap();
    let p = &c.providers["corp"];
    assert_eq!(p.circuit_failure_threshold, 5);
    assert_eq!(p.circuit_open_duration, Duration::from_secs(30));
    let bad = format!("{}circuit_failure_threshold = 0\ncircuit_open_duration = \"0s\"\n", minimal());
    let msg = Config::from_toml(&bad).unwrap_err().to_string();
    assert!(msg.contains("providers.corp.circuit_failure_threshold"), "{msg}");
    assert!(msg.contains("providers.corp.circuit_open_duration"), "{msg}");
}

#[test]
fn zero_m2m_durations_are_named() {
    let text = minimal().replace(
        "[revalidation]",
        "[m2m]\nrefresh_interval = \"0s\"\nlock_ttl = \"0s\"\nfollower_delay = \"0s\"\n\n[revalidation]",
    );
    let err = Config::from_toml(&text).unwrap_err().to_string();
    for key in ["m2m.refresh_interval", "m2m.lock_ttl", "m2m.follower_delay"] {
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[test]
fn debug_never_prints_a_secret() {
    let text = minimal()
        .replace("[server]", "[server]\nadmin_token = \"admin-token-0123456789\"")
        .replace("[redis]", "[redis]\npassword = \"redis-pass-xyz\"");
    let c = Config::from_toml(&text).unwrap();
    let key = c.session.encryption_keys[0].expose_secret().to_string();
    let debug = format!("{c:?}");
    for secret in ["admin-token-0123456789", "redis-pass-xyz", "s3cret", key.as_str()] {
        assert!(!debug.contains(secret), "{secret} printed by Debug");
    }
}

#[test]
fn closed_sets_are_typed() {
    let text = minimal().replace(
        "url = \"redis://127.0.0.1:6379\"",
        "mode = \"sentinel\"\nurls = [\"redis://127.0.0.1:26379\"]\nsentinel_master = \"m\"",
    );
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.redis.mode, RedisMode::Sentinel);
    assert_eq!(c.server.log_format, LogFormat::Json);
    let c =
        Config::from_toml(&minimal().replace("cookie_secure = false", "cookie_secure = true\nsame_site = \"nONe\""))
            .unwrap();
    assert_eq!(c.session.same_site, SameSite::None);
    let err = Config::from_toml(&minimal().replace("[redis]", "[redis]\nmode = \"ring\"")).unwrap_err().to_string();
    assert!(err.contains("redis.mode"), "{err}");
    let err =
        Config::from_toml(&minimal().replace("[server]", "[server]\nlog_format = \"xml\"")).unwrap_err().to_string();
    assert!(err.contains("server.log_format"), "{err}");
}

#[test]
fn the_cookie_name_defaults_to_host_prefixed_when_the_browser_honours_it() {
    let secure = minimal().replace("cookie_secure = false", "cookie_secure = true");
    assert!(secure.contains("cookie_secure = true"), "the minimal file sets cookie_secure");
    assert_eq!(Config::from_toml(&secure).unwrap().session.cookie_name, "__Host-GATEWAY_SESSION");
    let wide = secure.replace("cookie_secure = true", "cookie_secure = true\ncookie_domain = \"example.com\"");
    assert_eq!(Config::from_toml(&wide).unwrap().session.cookie_name, "GATEWAY_SESSION");
    let named = secure.replace("cookie_secure = true", "cookie_secure = true\ncookie_name = \"SID\"");
    assert_eq!(Config::from_toml(&named).unwrap().session.cookie_name, "SID");
}

#[test]
fn trusted_proxies_are_cidrs_and_a_bad_one_is_named() {
    let text = minimal().replace("[redis]", "trusted_proxies = [\"127.0.0.1/32\", \"10.0.0.0/8\"]\n\n[redis]");
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert!(Config::from_toml(&minimal()).unwrap().server.trusted_proxies.is_empty(), "default: none");
    let bad = minimal().replace("[redis]", "trusted_proxies = [\"10.0.0.300/8\"]\n\n[redis]");
    let err = Config::from_toml(&bad).unwrap_err().to_string();
    assert!(err.contains("server.trusted_proxies"), "{err}");
}

#[test]
fn login_bounds_are_validated_by_name() {
    let text = minimal().replace(
        "[providers.corp]",
        "[login]\nmax_rd_bytes = 0\nmax_pending_per_client = 0\npending_window = \"0s\"\n\n[providers.corp]",
    );
    let err = Config::from_toml(&text).unwrap_err().to_string();
    for key in ["login.max_rd_bytes", "login.max_pending_per_client", "login.pending_window"] {
        assert!(err.contains(key), "{key} in {err}");
    }
    let c = Config::from_toml(&minimal()).unwrap();
    assert_eq!((c.login.max_rd_bytes, c.login.max_pending_per_client, c.login.max_pending_total), (2048, 30, 10_000));
}

#[test]
fn assertion_keys_come_from_config_and_file_and_bad_ones_are_named() {
    use crate::assertion::{generate_key, KeyAlg};
    let (es, ed) = (generate_key(KeyAlg::Es256).unwrap(), generate_key(KeyAlg::Eddsa).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, format!("# rotation\n{ed}\n")).unwrap();
    let text = format!(
        "{}\n[assertion]\nenabled = true\nsigning_keys = [\"{es}\"]\nsigning_keys_file = \"{}\"\n",
        minimal(),
        file.display()
    );
    let c = Config::from_toml(&text).unwrap();
    assert_eq!(c.assertion.signing_keys.len(), 2);
    assert_eq!(c.assertion.ttl, Duration::from_secs(60));
    assert_eq!(c.assertion.key_set().unwrap().jwks()["keys"].as_array().unwrap().len(), 2);

    for (section, key) in [
        ("enabled = true", "assertion.signing_keys: required"),
        ("enabled = true\nsigning_keys = [\"k1:bm90IGEga2V5\"]", "assertion.signing_keys: key \"k1\""),
        ("ttl = \"0s\"", "assertion.ttl"),
        ("ttl = \"11m\"", "assertion.ttl"),
        ("audience = \" \"", "assertion.audience"),
        ("signing_keys_file = \"/nonexistent/keys\"", "assertion.signing_keys_file"),
    ] {
        let err = Config::from_toml(&format!("{}\n[assertion]\n{section}\n", minimal())).unwrap_err().to_string();
        assert!(err.contains(key), "{section}: {err}");
        assert!(!err.contains("bm90IGEga2V5"), "the key itself is never echoed: {err}");
    }
}

#[test]
fn response_headers_merge_over_the_defaults_and_bad_ones_are_named() {
    let c = Config::from_toml(&minimal()).unwrap();
    let d = c.response_headers.effective();
    assert!(d.contains(&("strict-transport-security".into(), "max-age=31536000; includeSubDomains".into())));
    assert!(d.contains(&("x-frame-options".into(), "DENY".into())));
    assert_eq!(d.len(), 4);

    let text = format!(
        "{}\n[response_headers]\n\"Content-Security-Policy\" = \"default-src 'self'\"\n\"X-Frame-Options\" = \"\"\n\"referrer-policy\" = \"same-origin\"\n",
        minimal()
    );
    let e = Config::from_toml(&text).unwrap().response_headers.effective();
    assert!(e.contains(&("content-security-policy".into(), "default-src 'self'".into())), "{e:?}");
    assert!(e.contains(&("referrer-policy".into(), "same-origin".into())), "{e:?}");
    assert!(!e.iter().any(|(k, _)| k == "x-frame-options"), "an empty value removes a default: {e:?}");
    assert!(e.iter().any(|(k, _)| k == "strict-transport-security"));

    for (line, key) in [
        ("\"bad name\" = \"x\"", "response_headers.bad name"),
        ("\"x-ok\" = \"line\\nbreak\"", "response_headers.x-ok"),
        ("\"set-cookie\" = \"a=b\"", "response_headers.set-cookie"),
    ] {
        let err = Config::from_toml(&format!("{}\n[response_headers]\n{line}\n", minimal())).unwrap_err().to_string();
        assert!(err.contains(key), "{line}: {err}");
    }
}

#[test]
fn server_mode_is_enforce_unless_dry_run_and_a_typo_is_named() {
    assert_eq!(Config::from_toml(&minimal()).unwrap().server.mode, Mode::Enforce);
    let text = minimal().replace("[redis]", "mode = \"dry_run\"\n\n[redis]");
    assert_eq!(Config::from_toml(&text).unwrap().server.mode, Mode::DryRun);
    let err = Config::from_toml(&minimal().replace("[redis]", "mode = \"dryrun\"\n\n[redis]")).unwrap_err().to_string();
    assert!(err.contains("server.mode"), "{err}");
}

#[test]
fn audit_allow_sample_is_a_share() {
    assert_eq!(Config::from_toml(&minimal()).unwrap().server.audit_allow_sample, 1.0);
    for bad in ["1.5", "-0.1", "nan"] {
        let text = minimal().replace("[redis]", &format!("audit_allow_sample = {bad}\n\n[redis]"));
        let err = Config::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("server.audit_allow_sample"), "{bad}: {err}");
    }
    let text = minimal().replace("[redis]", "audit_allow_sample = 0.25\n\n[redis]");
    assert_eq!(Config::from_toml(&text).unwrap().server.audit_allow_sample, 0.25);
}

#[test]
fn worker_threads_is_one_unless_set_and_never_zero() {
    assert_eq!(Config::from_toml(&minimal()).unwrap().server.worker_threads, 1);
    let four = minimal().replace("[redis]", "worker_threads = 4\n\n[redis]");
    assert_eq!(Config::from_toml(&four).unwrap().server.worker_threads, 4);
    let zero = minimal().replace("[redis]", "worker_threads = 0\n\n[redis]");
    assert!(Config::from_toml(&zero).unwrap_err().to_string().contains("server.worker_threads"));
}

#[test]
fn bearer_names_a_configured_provider() {
    let c = Config::from_toml(&format!("{}\n[bearer]\nenabled = true\naudiences = [\"api\"]\n", minimal())).unwrap();
    assert_eq!(c.bearer.provider_name(&["corp"]), Some("corp"));
    for (section, key) in [("provider = \"nope\"", "bearer.provider"), ("audiences = [\"\"]", "bearer.audiences")] {
        let err = Config::from_toml(&format!("{}\n[bearer]\n{section}\n", minimal())).unwrap_err().to_string();
        assert!(err.contains(key), "{section}: {err}");
    }
    let two = minimal() + "\n[providers.other]\nkind = \"ping\"\nissuer = \"https://idp2.example.com\"\nclient_id = \"x\"\nclient_secret = \"y\"\n";
    let err = Config::from_toml(&format!("{two}\n[bearer]\nenabled = true\n")).unwrap_err().to_string();
    assert!(err.contains("bearer.provider"), "{err}");
}

#[test]
fn a_bad_log_level_is_refused_by_name() {
    let c = Config::from_toml(&minimal()).unwrap();
    assert_eq!(c.server.log_level, "info");
    let text = minimal().replacen(
        "public_url = \"https://app.example.com\"",
        "public_url = \"https://app.example.com\"\nlog_level = \"portcullis=loud\"",
        1,
    );
    let err = Config::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("server.log_level"), "{err}");
}

#[test]
fn delegation_keys_extend_the_login_scopes_and_are_checked_by_name() {
    let ok =
        Config::from_toml(&format!("{}delegation_scope = \"api://portcullis/access_as_user\"\n", minimal())).unwrap();
    let p = &ok.providers["corp"];
    assert_eq!(p.login_scopes(), ["openid", "profile", "email", "offline_access", "api://portcullis/access_as_user"]);
    assert_eq!(p.delegation_param, None, "auto unless set");
    let twice = Config::from_toml(&format!("{}delegation_scope = \"email\"\n", minimal())).unwrap();
    assert_eq!(twice.providers["corp"].login_scopes().len(), 4, "a scope already asked for is not repeated");
    let forced = Config::from_toml(&format!("{}delegation_param = \"audience\"\n", minimal())).unwrap();
    assert_eq!(forced.providers["corp"].delegation_param, Some(DelegationParam::Audience));

    let bad = format!(
        "{}delegation_scope = \"a b\"\n[providers.ms]\nkind = \"entra\"\ntenant = \"t\"\nclient_id = \"x\"\n\
         client_secret = \"s\"\ndelegation_param = \"scope\"\n",
        minimal()
    );
    let err = Config::from_toml(&bad).unwrap_err().to_string();
    assert!(err.contains("providers.corp.delegation_scope"), "{err}");
    assert!(err.contains("providers.ms.delegation_param"), "{err}");
    let typo = Config::from_toml(&format!("{}delegation_param = \"both\"\n", minimal())).unwrap_err().to_string();
    assert!(typo.contains("delegation_param"), "{typo}");
}

#[test]
fn pool_size_is_standalone_only_and_one_by_default() {
    assert_eq!(Config::from_toml(&minimal()).unwrap().redis.pool_size, None, "one connection");
    let with = |redis: &str| minimal().replace("url = \"redis://127.0.0.1:6379\"", redis);
    let c = Config::from_toml(&with("url = \"redis://127.0.0.1:6379\"\npool_size = 4")).unwrap();
    assert_eq!(c.redis.pool_size, Some(4));
    let err = Config::from_toml(&with("url = \"redis://127.0.0.1:6379\"\npool_size = 0")).unwrap_err().to_string();
    assert!(err.contains("redis.pool_size: must be at least 1"), "{err}");
    for other in [
        "mode = \"cluster\"\nurls = [\"redis://127.0.0.1:7000\"]",
        "mode = \"sentinel\"\nurls = [\"redis://127.0.0.1:26379\"]\nsentinel_master = \"m\"",
    ] {
        let err = Config::from_toml(&with(&format!("{other}\npool_size = 4"))).unwrap_err().to_string();
        assert!(err.contains("redis.pool_size: supported only with redis.mode = \"standalone\""), "{other}: {err}");
        assert!(Config::from_toml(&with(other)).is_ok(), "{other} without pool_size");
    }
}

#[test]
fn tls_files_are_read_at_load_and_refused_where_they_would_do_nothing() {
    let pki = portcullis_testkit::tls::Pki::new();
    let p = |f: &str| format!("{:?}", pki.path(f));
    let with = |redis: &str| minimal().replace("url = \"redis://127.0.0.1:6379\"", redis);
    let tls = format!(
        "url = \"rediss://127.0.0.1:6380\"\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}",
        p("ca.pem"),
        p("client.pem"),
        p("client.key")
    );
    let c = Config::from_toml(&with(&tls)).unwrap();
    assert!(c.redis.tls() && c.redis.ca.is_some() && c.redis.client_cert.is_some() && c.redis.client_key.is_some());
    let shown = format!("{c:?}");
    assert!(!shown.contains("BEGIN") && shown.contains("Pem(sha256:"), "no PEM text in a Debug: {shown}");

    let err = |redis: &str| Config::from_toml(&with(redis)).unwrap_err().to_string();
    let plain = err(&format!("url = \"redis://127.0.0.1:6379\"\nca_file = {}", p("ca.pem")));
    assert!(plain.contains("redis.ca_file: used only with rediss://"), "{plain}");
    let half = err(&format!("url = \"rediss://127.0.0.1:6380\"\nclient_cert_file = {}", p("client.pem")));
    assert!(half.contains("redis.client_cert_file, redis.client_key_file: set both"), "{half}");
    let key_as_ca = err(&format!("url = \"rediss://127.0.0.1:6380\"\nca_file = {}", p("client.key")));
    assert!(key_as_ca.contains("redis.ca_file") && key_as_ca.contains("holds no PEM certificate"), "{key_as_ca}");
    let ca_as_key = err(&format!(
        "url = \"rediss://127.0.0.1:6380\"\nclient_cert_file = {}\nclient_key_file = {}",
        p("client.pem"),
        p("ca.pem")
    ));
    assert!(ca_as_key.contains("redis.client_key_file") && ca_as_key.contains("not a PEM private key"), "{ca_as_key}");
    let missing = err("url = \"rediss://127.0.0.1:6380\"\nca_file = \"/nonexistent/ca.pem\"");
    assert!(missing.contains("redis.ca_file: cannot read /nonexistent/ca.pem"), "{missing}");
    let mixed = err("mode = \"sentinel\"\nurls = [\"rediss://a:26379\", \"redis://b:26379\"]\nsentinel_master = \"m\"");
    assert!(mixed.contains("mixes redis:// and rediss://"), "{mixed}");

    let provider = |issuer: &str| {
        minimal()
            .replace("issuer = \"https://idp.example.com\"", &format!("issuer = {issuer:?}\nca_file = {}", p("ca.pem")))
    };
    let c = Config::from_toml(&provider("https://idp.example.com")).unwrap();
    assert!(c.providers["corp"].ca.is_some());
    let http = Config::from_toml(&provider("http://idp.example.com")).unwrap_err().to_string();
    assert!(http.contains("providers.corp.ca_file: used only with an https:// issuer"), "{http}");
}
