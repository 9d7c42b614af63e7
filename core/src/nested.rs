//! Paths into JSON text (`mappings.sources.walk`): event tables keep nested values as JSON, and
//! cookie headers as `a=1; b=2` text. Each row's text is parsed once for every path into it.

use serde_json::Value;

use crate::text;

/// A value a path reached, owned: the parsed JSON does not outlive the row.
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    Null,
    Str(String),
    Int(i128),
    Float(f64),
    Bool(bool),
}

impl Found {
    pub fn as_val(&self) -> crate::value::Val<'_> {
        use crate::value::Val;
        match self {
            Found::Null => Val::Null,
            Found::Str(text) => Val::Str(text),
            Found::Int(number) => Val::Int(*number),
            Found::Float(number) => Val::Float(*number),
            Found::Bool(flag) => Val::Bool(*flag),
        }
    }
}

/// What `walk` meets at one step: parsed JSON, or text (which may hold JSON or cookies).
enum Node<'a> {
    Json(&'a Value),
    Text(&'a str),
}

/// Every path's value for one cell of JSON text (None: a NULL cell). The outer None hands the
/// row back: a path ends on an object or a list, or the text parses differently in Python.
pub fn resolve(cell: Option<&str>, paths: &[&[String]]) -> Option<Vec<Found>> {
    let Some(cell) = cell else {
        return Some(vec![Found::Null; paths.len()]);
    };
    let root = parse(cell)?; // once per row, shared by every path into it
    paths
        .iter()
        .map(|parts| match (&root, parts.split_first()) {
            (Some(value), Some((part, rest))) => step(value, part, rest),
            _ => walk(Node::Text(cell), parts),
        })
        .collect()
}

/// `parse_nested`: text opening with `{` or `[` (after Python's whitespace) is parsed; text that
/// fails to parse stays text. Outer None: text orjson and serde_json could read differently.
fn parse(text: &str) -> Option<Option<Value>> {
    let stripped = text.trim_start_matches(text::is_space_char);
    if !(stripped.starts_with('{') || stripped.starts_with('[')) {
        return Some(None);
    }
    if has_surrogate_escape(stripped) {
        return None; // lone surrogates are where the two parsers may part ways
    }
    Some(serde_json::from_str(stripped).ok())
}

/// `\uD800`-`\uDFFF` anywhere (a pair in a JSON string, or a lone half).
fn has_surrogate_escape(text: &str) -> bool {
    text.as_bytes().windows(4).any(|w| {
        w[0] == b'\\'
            && w[1] == b'u'
            && (w[2] | 0x20) == b'd'
            && matches!(w[3] | 0x20, b'8'..=b'9' | b'a'..=b'f')
    })
}

/// `walk(value, parts)` from a value that is still to be parsed (text) or parsed JSON.
fn walk(node: Node<'_>, parts: &[String]) -> Option<Found> {
    let Some((part, rest)) = parts.split_first() else {
        return match node {
            Node::Text(text) => Some(Found::Str(text.to_owned())),
            Node::Json(value) => leaf(value),
        };
    };
    match node {
        Node::Json(value) => step(value, part, rest),
        Node::Text(text) => match parse(text)? {
            Some(value) => step(&value, part, rest),
            None if text.contains('=') => match cookie(text, part) {
                Some(found) => walk(Node::Text(&found), rest),
                None => Some(Found::Null),
            },
            None => Some(Found::Null),
        },
    }
}

/// One step into parsed JSON, then the rest of the path.
fn step(value: &Value, part: &str, rest: &[String]) -> Option<Found> {
    let next = match value {
        Value::Object(map) => map.get(part),
        Value::Array(items) => {
            if part == "length" {
                // an integer: a path that goes on past it reads None
                return Some(if rest.is_empty() {
                    Found::Int(items.len() as i128)
                } else {
                    Found::Null
                });
            }
            if !part.bytes().all(|b| b.is_ascii_digit()) {
                return Some(Found::Null);
            }
            part.parse::<usize>().ok().and_then(|i| items.get(i))
        }
        Value::String(text) => {
            let mut parts = vec![part.to_owned()];
            parts.extend_from_slice(rest);
            return walk(Node::Text(text), &parts);
        }
        Value::Null | Value::Number(_) | Value::Bool(_) => return Some(Found::Null),
    };
    match next {
        None => Some(Found::Null),
        Some(Value::String(text)) => walk(Node::Text(text), rest),
        Some(other) => walk(Node::Json(other), rest),
    }
}

fn leaf(value: &Value) -> Option<Found> {
    Some(match value {
        Value::Null => Found::Null,
        Value::Bool(flag) => Found::Bool(*flag),
        Value::String(text) => Found::Str(text.clone()),
        Value::Number(number) => {
            if let Some(n) = number.as_i64() {
                Found::Int(n.into())
            } else if let Some(n) = number.as_u64() {
                Found::Int(n.into())
            } else {
                let float = number.as_f64()?;
                if float == 0.0 && float.is_sign_negative() {
                    return None; // `-0` is the integer 0 to orjson, -0.0 to serde_json
                }
                Found::Float(float)
            }
        }
        Value::Object(_) | Value::Array(_) => return None, // a dict or list: the reference's
    })
}

/// `_cookies(text).get(part)`: `;`-separated `name=value` pairs, stripped, the last one wins.
fn cookie(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for pair in text.split(';') {
        if let Some((key, value)) = text::strip_space(pair).split_once('=') {
            if text::strip_space(key) == name {
                found = Some(text::strip_space(value).to_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(cell: &str, path: &str) -> Option<Found> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        resolve(Some(cell), &[&parts]).map(|mut found| found.remove(0))
    }

    #[test]
    fn paths_walk_as_python_walks() {
        let doc = r#" {"user": {"email": "a@b.co", "id": 7, "tags": ["x", "y"]},
                       "raw": "{\"deep\": true}", "cookie": "_fbp=fb.1.2; b = 3 ", "n": -0}"#;
        assert_eq!(one(doc, "user.email"), Some(Found::Str("a@b.co".into())));
        assert_eq!(one(doc, "user.id"), Some(Found::Int(7)));
        assert_eq!(one(doc, "user.tags.1"), Some(Found::Str("y".into())));
        assert_eq!(one(doc, "user.tags.length"), Some(Found::Int(2)));
        assert_eq!(one(doc, "user.tags.9"), Some(Found::Null));
        assert_eq!(one(doc, "raw.deep"), Some(Found::Bool(true)));
        assert_eq!(one(doc, "cookie._fbp"), Some(Found::Str("fb.1.2".into())));
        assert_eq!(one(doc, "cookie.b"), Some(Found::Str("3".into())));
        assert_eq!(one(doc, "user.missing"), Some(Found::Null));
        assert_eq!(
            one(doc, "n"),
            None,
            "-0 reads differently in the two parsers"
        );
        assert_eq!(one(doc, "user"), None, "an object is the reference's");
        assert_eq!(one("not json", "a"), Some(Found::Null));
        assert_eq!(one("{broken", "a"), Some(Found::Null));
        assert_eq!(one(r#"{"a": "\ud800"}"#, "a"), None);
    }
}
