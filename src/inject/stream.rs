//! A multi-document YAML stream kept as text: a document nobody changed is written back byte for byte.

use serde_json::Value;

use super::InjectError;

/// One Kubernetes object: a document, or one item of a `kind: List`.
pub struct Item {
    pub value: Value,
    pub changed: bool,
}

pub struct Doc {
    /// The `---` line that opened the document, verbatim (none for the first).
    sep: Option<String>,
    text: String,
    /// Not parsed (empty, comments only, or not a mapping): written back as it was.
    items: Vec<Item>,
    list: Option<Value>,
}

impl Doc {
    pub fn items_mut(&mut self) -> impl Iterator<Item = &mut Item> {
        self.items.iter_mut()
    }
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn item(value: Value) -> Item {
    Item { value, changed: false }
}

pub fn split(input: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    let mut sep = None;
    let mut text = String::new();
    for line in input.split_inclusive('\n') {
        if is_separator(line) {
            docs.push(parse(sep.take(), std::mem::take(&mut text)));
            sep = Some(line.to_string());
        } else {
            text.push_str(line);
        }
    }
    docs.push(parse(sep, text));
    docs
}

/// YAML as Kubernetes reads it (YAML 1.1): `defaultMode: 0444` is octal, which a YAML 1.2 parser leaves as
/// the string "0444".
pub fn from_yaml(text: &str) -> Result<Value, serde_norway::Error> {
    let mut v: Value = serde_norway::from_str(text)?;
    octal_modes(&mut v);
    Ok(v)
}

fn octal_modes(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "defaultMode" || k == "mode" {
                    let octal = child
                        .as_str()
                        .filter(|s| s.len() > 1 && s.starts_with('0'))
                        .and_then(|s| i64::from_str_radix(s.trim_start_matches("0o"), 8).ok());
                    if let Some(n) = octal {
                        *child = Value::from(n);
                        continue;
                    }
                }
                octal_modes(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

fn parse(sep: Option<String>, text: String) -> Doc {
    let value: Option<Value> = from_yaml(&text).ok();
    let mut doc = Doc { sep, text, items: Vec::new(), list: None };
    match value {
        Some(v) if v.get("kind").and_then(Value::as_str) == Some("List") => {
            let items = v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            doc.items = items.into_iter().map(item).collect();
            doc.list = Some(v);
        }
        Some(v @ Value::Object(_)) => doc.items.push(item(v)),
        _ => {}
    }
    doc
}

fn to_yaml(v: &Value) -> Result<String, InjectError> {
    serde_norway::to_string(v).map(|y| quote_timestamps(&y)).map_err(|e| InjectError::Object(e.to_string()))
}

/// serde_norway writes YAML 1.2, where `2026-11-30T09:12:44Z` is a plain string; YAML 1.1 readers
/// (kubernetes-validate, PyYAML, go-yaml into typed fields) read it as a timestamp, so `kubectl get -o yaml`
/// output (`creationTimestamp`, `restartedAt` annotations, conditions) would change meaning. Such plain
/// values are single-quoted; block scalars' contents are left alone.
fn quote_timestamps(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len());
    // The key column of the line that opened a block scalar: more-indented lines are its content.
    let mut block: Option<usize> = None;
    for line in yaml.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let mut rest = body.trim_start_matches(' ');
        let mut column = body.len() - rest.len();
        if let Some(open) = block {
            if rest.is_empty() || column > open {
                out.push_str(line);
                continue;
            }
            block = None;
        }
        while let Some(r) = rest.strip_prefix("- ") {
            rest = r.trim_start_matches(' ');
            column = body.len() - rest.len();
        }
        let value = rest.rsplit_once(": ").map_or(rest, |(_, v)| v);
        let indicator = value.strip_prefix(['|', '>']).is_some_and(|m| m.chars().all(|c| "+-0123456789".contains(c)));
        if indicator {
            block = Some(column);
        } else if yaml11_timestamp(value) {
            out.push_str(&body[..body.len() - value.len()]);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
            out.push_str(&line[body.len()..]);
            continue;
        }
        out.push_str(line);
    }
    out
}

/// YAML 1.1's timestamp: `YYYY-MM-DD`, or `YYYY-M-D` then `T`/`t`/spaces, `h:mm:ss`, an optional fraction and
/// an optional zone (`Z` or `±h[:mm]`, maybe after spaces).
fn yaml11_timestamp(s: &str) -> bool {
    fn digits(s: &str, min: usize, max: usize) -> Option<&str> {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (min..=max).contains(&n).then(|| &s[n..])
    }
    let date_only = s.len() == 10 && digits(s, 4, 4).and_then(|r| r.strip_prefix('-')).is_some();
    let date = (|| {
        let r = digits(s, 4, 4)?.strip_prefix('-')?;
        let r = digits(r, 1, 2)?.strip_prefix('-')?;
        digits(r, 1, 2)
    })();
    let Some(r) = date else { return false };
    if r.is_empty() {
        return date_only && s.as_bytes()[7] == b'-';
    }
    let time = (|| {
        let r = r.strip_prefix(['T', 't']).or_else(|| r.starts_with([' ', '\t']).then(|| r.trim_start()))?;
        let r = digits(r, 1, 2)?.strip_prefix(':')?;
        let r = digits(r, 2, 2)?.strip_prefix(':')?;
        let r = digits(r, 2, 2)?;
        let r = r.strip_prefix('.').map_or(Some(r), |f| digits(f, 0, usize::MAX))?;
        let zone = r.trim_start_matches([' ', '\t']);
        if zone.is_empty() || zone == "Z" {
            return Some(());
        }
        let z = digits(zone.strip_prefix(['+', '-'])?, 1, 2)?;
        let z = z.strip_prefix(':').map_or(Some(z), |m| digits(m, 2, 2))?;
        z.is_empty().then_some(())
    })();
    time.is_some()
}

pub fn join(docs: &[Doc]) -> Result<String, InjectError> {
    let mut out = String::new();
    let mut first = true;
    let mut emit = |out: &mut String, sep: Option<&str>, body: &str| {
        if !first || sep.is_some() {
            let s = sep.unwrap_or("---\n");
            out.push_str(s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        first = false;
        out.push_str(body);
    };
    for doc in docs {
        let changed = doc.items.iter().any(|i| i.changed);
        if !changed {
            emit(&mut out, doc.sep.as_deref(), &doc.text);
            continue;
        }
        if let Some(list) = &doc.list {
            let mut list = list.clone();
            let items: Vec<Value> = doc.items.iter().map(|i| i.value.clone()).collect();
            list["items"] = Value::Array(items);
            emit(&mut out, doc.sep.as_deref(), &to_yaml(&list)?);
            continue;
        }
        let mut sep = doc.sep.as_deref();
        for i in &doc.items {
            emit(&mut out, sep.take(), &to_yaml(&i.value)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unchanged_stream_round_trips_byte_for_byte() {
        let s = "# head\n---\na: 1 # c\n--- # x\nkind: Foo\n---\n\n";
        assert_eq!(join(&split(s)).unwrap(), s);
        assert_eq!(join(&split("a: 1")).unwrap(), "a: 1");
    }

    #[test]
    fn timestamps_are_quoted_for_yaml_1_1_readers() {
        let v = serde_json::json!({
            "creationTimestamp": "2026-11-30T09:12:44Z",
            "annotations": { "restartedAt": "2026-12-01T08:00:00.5+01:00", "day": "2026-12-01", "port": "3000" },
            "conditions": ["2001-12-14 21:59:43.10 -5", "not 2026-12-01"],
            "script": "a: 1\nwhen: 2026-12-01\n",
        });
        let y = to_yaml(&v).unwrap();
        for quoted in [
            "creationTimestamp: '2026-11-30T09:12:44Z'",
            "restartedAt: '2026-12-01T08:00:00.5+01:00'",
            "day: '2026-12-01'",
            "- '2001-12-14 21:59:43.10 -5'",
            "- not 2026-12-01\n",
            "  when: 2026-12-01\n",
        ] {
            assert!(y.contains(quoted), "{quoted} not in\n{y}");
        }
        assert_eq!(serde_norway::from_str::<Value>(&y).unwrap(), v, "the same values");
        for not in ["2026-1-1", "20261-12-01", "2026-12-01T", "2026-12-01T08:00", "2026-12-01T08:00:00X", "12:00:00"] {
            assert!(!yaml11_timestamp(not), "{not}");
        }
    }
}
