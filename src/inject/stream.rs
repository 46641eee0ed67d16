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
    serde_norway::to_string(v).map_err(|e| InjectError::Object(e.to_string()))
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
}
