use super::*;

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn invalidate(keys: Value) -> PushInfo {
    PushInfo { kind: PushKind::Invalidate, data: vec![keys] }
}

#[test]
fn a_read_is_kept_and_served_for_the_same_command_only() {
    let e = Entries::new(10, Duration::from_secs(60));
    e.keep(e.epoch(), b"session:a", b"HGETALL".to_vec(), &bulk("v"));
    assert_eq!(e.get(b"session:a", b"HGETALL").map(|h| h.value.clone()), Some(bulk("v")));
    assert!(e.get(b"session:a", b"HMGET").is_none(), "another command on the key is a miss");
    assert!(e.get(b"session:b", b"HGETALL").is_none());
}

#[test]
fn an_invalidation_forgets_the_keys_it_names() {
    let e = Entries::new(10, Duration::from_secs(60));
    for k in ["a", "b", "c"] {
        e.keep(e.epoch(), k.as_bytes(), b"GET".to_vec(), &bulk(k));
    }
    e.on_push(invalidate(Value::Array(vec![bulk("a"), bulk("b")])));
    assert!(e.get(b"a", b"GET").is_none());
    assert!(e.get(b"b", b"GET").is_none());
    assert!(e.get(b"c", b"GET").is_some(), "a key not named stays");
}

#[test]
fn a_flush_a_lost_connection_or_an_unknown_push_shape_forgets_everything() {
    let shapes = [
        invalidate(Value::Nil),
        invalidate(Value::Array(vec![bulk("a"), Value::Int(1)])),
        PushInfo { kind: PushKind::Invalidate, data: vec![] },
        PushInfo { kind: PushKind::Disconnection, data: vec![] },
    ];
    for push in shapes {
        let e = Entries::new(10, Duration::from_secs(60));
        e.keep(e.epoch(), b"c", b"GET".to_vec(), &bulk("c"));
        let shown = format!("{push:?}");
        e.on_push(push);
        assert!(e.get(b"c", b"GET").is_none(), "{shown}");
    }
}

/// The lost-invalidation race: Redis answered a miss, then pushed an invalidation for a write after it,
/// and the push was applied before the reply was stored. The stale reply must not be kept.
#[test]
fn a_reply_crossed_by_an_invalidation_is_not_kept() {
    let e = Entries::new(10, Duration::from_secs(60));
    let before_the_read = e.epoch();
    e.on_push(invalidate(Value::Array(vec![bulk("a")])));
    e.keep(before_the_read, b"a", b"GET".to_vec(), &bulk("old"));
    assert!(e.get(b"a", b"GET").is_none());
    e.keep(e.epoch(), b"a", b"GET".to_vec(), &bulk("new"));
    assert_eq!(e.get(b"a", b"GET").map(|h| h.value.clone()), Some(bulk("new")));
}

#[test]
fn an_entry_is_not_served_past_its_ttl() {
    let e = Entries::new(10, Duration::from_millis(20));
    e.keep(e.epoch(), b"a", b"GET".to_vec(), &bulk("a"));
    assert!(e.get(b"a", b"GET").is_some());
    std::thread::sleep(Duration::from_millis(30));
    assert!(e.get(b"a", b"GET").is_none());
}

#[test]
fn other_pushes_change_nothing() {
    let e = Entries::new(10, Duration::from_secs(60));
    e.keep(e.epoch(), b"a", b"GET".to_vec(), &bulk("a"));
    e.on_push(PushInfo { kind: PushKind::Message, data: vec![bulk("channel"), bulk("hello")] });
    assert!(e.get(b"a", b"GET").is_some());
}
