//! JSON that keeps its keys in document order, and a printer that lays it
//! out for people: `cargo xtask new` adds a function to `infra/stack.json`
//! without reordering what is there (serde_json's map sorts its keys unless
//! its `preserve_order` feature is on, which would change the map type for
//! every crate of the workspace built beside xtask).

use std::fmt::Write as _;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects keep their keys in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses JSON text.
    pub fn parse(text: &str) -> serde_json::Result<Self> {
        serde_json::from_str(text)
    }

    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The member `key` of an object, to change it.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Object(members) => members.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Converts a `serde_json::Value` (whose object keys are sorted) into a
    /// [`Json`]; build new entries with `serde_json::json!` and order their
    /// keys with [`Json::object`] where the order matters.
    pub fn from_value(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Json::Null,
            serde_json::Value::Bool(b) => Json::Bool(b),
            serde_json::Value::Number(n) => Json::Number(n),
            serde_json::Value::String(s) => Json::String(s),
            serde_json::Value::Array(a) => Json::Array(a.into_iter().map(Json::from_value).collect()),
            serde_json::Value::Object(o) => match ordered_members(&o) {
                Some(members) => Json::Object(members.into_iter().map(|(k, v)| (k, Json::from_value(v))).collect()),
                None => Json::Object(o.into_iter().map(|(k, v)| (k, Json::from_value(v))).collect()),
            },
        }
    }

    /// An object with its members in the given order.
    pub fn object(members: impl IntoIterator<Item = (&'static str, serde_json::Value)>) -> Self {
        Json::Object(members.into_iter().map(|(k, v)| (k.to_owned(), Json::from_value(v))).collect())
    }

    /// The text, laid out for reading: a value that fits on its line (at
    /// most [`WIDTH`] characters) is written on one line, `{ "a": 1 }`;
    /// a larger object or array gets one member per line.
    pub fn pretty(&self) -> String {
        let mut out = String::new();
        write_pretty(self, 0, 0, &mut out);
        out.push('\n');
        out
    }

    /// The value on one line.
    pub fn compact(&self) -> String {
        let mut out = String::new();
        write_compact(self, &mut out);
        out
    }
}

impl Json {
    /// The value as a YAML block (objects and arrays one member per line,
    /// strings quoted unless plain is unambiguous, multi-line strings as
    /// literal blocks), for CloudFormation templates.
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        write_yaml(self, 0, &mut out);
        out
    }
}

/// Whether `text` reads back as the same string when written plain.
fn plain_yaml(text: &str) -> bool {
    const WORDS: [&str; 11] = ["true", "false", "null", "yes", "no", "on", "off", "y", "n", "~", ""];
    let first = text.chars().next();
    !WORDS.contains(&text.to_ascii_lowercase().as_str())
        && first.is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:*".contains(c))
        && !text.ends_with(':')
}

fn yaml_scalar(value: &Json) -> Option<String> {
    Some(match value {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) if plain_yaml(s) => s.clone(),
        Json::String(s) if !s.contains('\n') => serde_json::to_string(s).expect("a string serializes"),
        Json::Array(items) if items.is_empty() => "[]".into(),
        Json::Object(members) if members.is_empty() => "{}".into(),
        _ => return None,
    })
}

/// Writes `value`'s members at `indent` (the caller wrote the key).
fn write_yaml(value: &Json, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Json::Object(members) => {
            for (key, member) in members {
                let key = if plain_yaml(key) { key.clone() } else { serde_json::to_string(key).expect("a key") };
                write_yaml_member(&format!("{pad}{key}:"), member, indent, out);
            }
        }
        Json::Array(items) => {
            for item in items {
                match item {
                    Json::Object(members) if !members.is_empty() => {
                        // `- first: ...` then the other members under it.
                        let mut first = true;
                        for (key, member) in members {
                            let key =
                                if plain_yaml(key) { key.clone() } else { serde_json::to_string(key).expect("a key") };
                            let lead = if first { format!("{pad}- {key}:") } else { format!("{pad}  {key}:") };
                            first = false;
                            write_yaml_member(&lead, member, indent + 2, out);
                        }
                    }
                    _ => write_yaml_member(&format!("{pad}-"), item, indent, out),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(scalar).unwrap_or_default());
            out.push('\n');
        }
    }
}

/// `lead` (`key:` or `-`), then the value: on the same line when it is a
/// scalar or a short list of scalars, else below it, indented.
fn write_yaml_member(lead: &str, value: &Json, indent: usize, out: &mut String) {
    if let Some(scalar) = yaml_scalar(value) {
        out.push_str(&format!("{lead} {scalar}\n"));
        return;
    }
    match value {
        Json::String(text) => {
            out.push_str(&format!("{lead} |\n"));
            for line in text.lines() {
                if line.is_empty() {
                    out.push('\n');
                } else {
                    out.push_str(&format!("{}{line}\n", " ".repeat(indent + 2)));
                }
            }
        }
        Json::Array(items) if items.iter().all(|i| yaml_scalar(i).is_some()) => {
            let flow: Vec<String> = items.iter().filter_map(yaml_scalar).collect();
            let line = format!("{lead} [{}]", flow.join(", "));
            if line.len() <= WIDTH {
                out.push_str(&line);
                out.push('\n');
            } else {
                out.push_str(lead);
                out.push('\n');
                write_yaml(value, indent + 2, out);
            }
        }
        _ => {
            out.push_str(lead);
            out.push('\n');
            write_yaml(value, indent + 2, out);
        }
    }
}

/// The members of an object that `crate::sam` marked to keep its order:
/// `{"\u{0}ordered": [[key, value], ...]}`.
fn ordered_members(object: &serde_json::Map<String, serde_json::Value>) -> Option<Vec<(String, serde_json::Value)>> {
    let pairs = object.get(crate::sam::ORDERED)?.as_array()?;
    if object.len() != 1 {
        return None;
    }
    pairs
        .iter()
        .map(|pair| match pair.as_array()?.as_slice() {
            [serde_json::Value::String(k), v] => Some((k.clone(), v.clone())),
            _ => None,
        })
        .collect()
}

/// The longest line [`Json::pretty`] writes a value on, unless a single
/// scalar is longer.
pub const WIDTH: usize = 120;

fn write_compact(value: &Json, out: &mut String) {
    match value {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Json::String(s) => out.push_str(&serde_json::to_string(s).expect("a string serializes")),
        Json::Array(items) if items.is_empty() => out.push_str("[]"),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_compact(item, out);
            }
            out.push(']');
        }
        Json::Object(members) if members.is_empty() => out.push_str("{}"),
        Json::Object(members) => {
            out.push_str("{ ");
            for (i, (key, member)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&serde_json::to_string(key).expect("a string serializes"));
                out.push_str(": ");
                write_compact(member, out);
            }
            out.push_str(" }");
        }
    }
}

/// Writes `value` at `indent`, `used` characters of its line already taken
/// (by its key).
fn write_pretty(value: &Json, indent: usize, used: usize, out: &mut String) {
    let compact = value.compact();
    let fits = indent + used + compact.len() <= WIDTH;
    let pad = |n: usize| " ".repeat(n);
    match value {
        Json::Array(items) if !fits && !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                out.push_str(&pad(indent + 2));
                write_pretty(item, indent + 2, 0, out);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push(']');
        }
        Json::Object(members) if !fits && !members.is_empty() => {
            out.push_str("{\n");
            for (i, (key, member)) in members.iter().enumerate() {
                let key = format!("{}: ", serde_json::to_string(key).expect("a string serializes"));
                out.push_str(&pad(indent + 2));
                out.push_str(&key);
                write_pretty(member, indent + 2, key.len(), out);
                out.push_str(if i + 1 < members.len() { ",\n" } else { "\n" });
            }
            out.push_str(&pad(indent));
            out.push('}');
        }
        _ => out.push_str(&compact),
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_unit<E>(self) -> Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Json, E> {
                Ok(Json::Bool(b))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Json, E> {
                Ok(Json::Number(n.into()))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Json, E> {
                serde_json::Number::from_f64(n).map(Json::Number).ok_or_else(|| E::custom("not a finite number"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Json, E> {
                Ok(Json::String(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<Json, E> {
                Ok(Json::String(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Json::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut members = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, Json>()? {
                    members.push((key, value));
                }
                Ok(Json::Object(members))
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_order_and_short_values_stay_on_one_line() {
        let text = r#"{"z": 1, "a": {"y": [1, 2], "b": "x\"y"}, "long": ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]}"#;
        let json = Json::parse(text).unwrap();
        assert_eq!(
            json.pretty(),
            r#"{
  "z": 1,
  "a": { "y": [1, 2], "b": "x\"y" },
  "long": [
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
  ]
}
"#
        );
        assert_eq!(Json::parse(&json.pretty()).unwrap(), json);
    }

    #[test]
    fn yaml_is_block_style_and_quotes_what_would_read_back_differently() {
        let json = Json::parse(
            r#"{"Type": "AWS::SQS::Queue", "Version": "2012-10-17", "On": "true", "Empty": [], "Actions": ["a:b", "c:d"],
                "List": [{"Name": "x", "Value": 1}, "plain"], "Text": "line 1\nline 2\n", "Star": "*", "Spaced": "a b"}"#,
        )
        .unwrap();
        assert_eq!(
            json.yaml(),
            "Type: AWS::SQS::Queue\nVersion: \"2012-10-17\"\n\"On\": \"true\"\nEmpty: []\nActions: [a:b, c:d]\nList:\n  - Name: x\n    Value: 1\n  - plain\nText: |\n  line 1\n  line 2\nStar: \"*\"\nSpaced: \"a b\"\n"
        );
    }

    #[test]
    fn the_stack_definition_is_in_its_printed_layout() {
        // So `cargo xtask new` changes only the lines of what it adds.
        let path = crate::workspace::root().join("infra/stack.json");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            Json::parse(&text).unwrap().pretty(),
            text,
            "{} is not laid out as Json::pretty writes it",
            path.display()
        );
    }
}
