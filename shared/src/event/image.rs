//! DynamoDB items (stream images) read as a serde type of yours, numbers
//! exactly: a number attribute (`N`) becomes the number type a field asks
//! for, parsed from its text, or that text itself where the field takes a
//! string (a price into `String`, or into an exact decimal type, keeps every
//! digit). `serde_dynamo` reads a non-integer `N` through `f64`, which drops
//! digits an amount of money needs.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_dynamo::{AttributeValue, Item};

use super::EventError;

/// Reads `item` as a `T`; `what` names it in errors (`new image`): a field
/// of the wrong type is `invalid: {what}: {field}: {problem}`.
pub fn from_item<T: DeserializeOwned>(what: &str, item: &Item) -> Result<T, EventError> {
    serde_path_to_error::deserialize(Map(item.inner())).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { what.to_owned() } else { format!("{what}: {path}") };
        EventError::Invalid { path: field, message: e.into_inner().0 }
    })
}

/// Why an item does not read as the type asked for.
#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// The name of an attribute value's type, for errors.
fn kind(value: &AttributeValue) -> &'static str {
    match value {
        AttributeValue::N(_) => "a number (N)",
        AttributeValue::S(_) => "a string (S)",
        AttributeValue::Bool(_) => "a boolean (BOOL)",
        AttributeValue::B(_) => "binary (B)",
        AttributeValue::Null(_) => "null (NULL)",
        AttributeValue::M(_) => "a map (M)",
        AttributeValue::L(_) => "a list (L)",
        AttributeValue::Ss(_) => "a string set (SS)",
        AttributeValue::Ns(_) => "a number set (NS)",
        AttributeValue::Bs(_) => "a binary set (BS)",
    }
}

/// A top-level item: a map of attributes.
struct Map<'a>(&'a HashMap<String, AttributeValue>);

impl<'de> Deserializer<'de> for Map<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Members { iter: self.0.iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct Members<'a, I> {
    iter: I,
    value: Option<&'a AttributeValue>,
}

impl<'de, 'a, I: Iterator<Item = (&'a String, &'a AttributeValue)>> MapAccess<'de> for Members<'a, I> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.iter.next() {
            Some((key, value)) => {
                self.value = Some(value);
                seed.deserialize(key.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self.value.take().ok_or_else(|| Error("a value without its key".into()))?;
        seed.deserialize(attr(value))
    }
}

/// The elements of a list or a set.
struct Elements<I>(I);

impl<'de, 'a, I: Iterator<Item = Value<'a>>> SeqAccess<'de> for Elements<I> {
    type Error = Error;

    fn next_element_seed<T: de::DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.next().map(|value| seed.deserialize(value)).transpose()
    }
}

/// One attribute value, or a set's element: numbers, strings and binary
/// as themselves, everything else as its attribute value.
#[derive(Clone, Copy)]
enum Value<'a> {
    Attribute(&'a AttributeValue),
    Number(&'a str),
    Text(&'a str),
    Binary(&'a [u8]),
}

fn attr(value: &AttributeValue) -> Value<'_> {
    match value {
        AttributeValue::N(n) => Value::Number(n),
        AttributeValue::S(s) => Value::Text(s),
        AttributeValue::B(b) => Value::Binary(b),
        other => Value::Attribute(other),
    }
}

impl<'a> Value<'a> {
    fn number(self) -> Option<&'a str> {
        match self {
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Value::Attribute(a) => kind(a),
            Value::Number(_) => "a number (N)",
            Value::Text(_) => "a string (S)",
            Value::Binary(_) => "binary (B)",
        }
    }

    fn expected(self, what: &str) -> Error {
        Error(format!("expected {what}, found {}", self.describe()))
    }
}

macro_rules! parse_number {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                let text = self.number().ok_or_else(|| self.expected("a number (N)"))?;
                let n: $ty = text
                    .trim()
                    .parse()
                    .map_err(|_| Error(format!("{text:?} is not a {}", stringify!($ty))))?;
                visitor.$visit(n)
            }
        )*
    };
}

impl<'de> Deserializer<'de> for Value<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Number(n) => {
                // Integers as integers; anything else as its exact text (an
                // exact decimal type reads it; a float field asks for f64).
                if let Ok(i) = n.parse::<i64>() {
                    visitor.visit_i64(i)
                } else if let Ok(u) = n.parse::<u64>() {
                    visitor.visit_u64(u)
                } else {
                    visitor.visit_str(n)
                }
            }
            Value::Text(s) => visitor.visit_str(s),
            Value::Binary(b) => visitor.visit_bytes(b),
            Value::Attribute(AttributeValue::Bool(b)) => visitor.visit_bool(*b),
            Value::Attribute(AttributeValue::Null(_)) => visitor.visit_unit(),
            Value::Attribute(AttributeValue::M(map)) => visitor.visit_map(Members { iter: map.iter(), value: None }),
            Value::Attribute(AttributeValue::L(list)) => visitor.visit_seq(Elements(list.iter().map(attr))),
            Value::Attribute(AttributeValue::Ss(set)) => {
                visitor.visit_seq(Elements(set.iter().map(|s| Value::Text(s))))
            }
            Value::Attribute(AttributeValue::Ns(set)) => {
                visitor.visit_seq(Elements(set.iter().map(|n| Value::Number(n))))
            }
            Value::Attribute(AttributeValue::Bs(set)) => {
                visitor.visit_seq(Elements(set.iter().map(|b| Value::Binary(b))))
            }
            // Made by `attr` as the variants above.
            Value::Attribute(AttributeValue::N(n)) => visitor.visit_str(n),
            Value::Attribute(AttributeValue::S(s)) => visitor.visit_str(s),
            Value::Attribute(AttributeValue::B(b)) => visitor.visit_bytes(b),
        }
    }

    parse_number! {
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
        deserialize_f32 => f32, visit_f32;
        deserialize_f64 => f64, visit_f64;
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            // A number's exact text where a string is asked for.
            Value::Number(s) | Value::Text(s) => visitor.visit_str(s),
            other => Err(other.expected("a string (S) or a number (N)")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Attribute(AttributeValue::Bool(b)) => visitor.visit_bool(*b),
            other => Err(other.expected("a boolean (BOOL)")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Attribute(AttributeValue::Null(_)) => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Attribute(AttributeValue::Null(_)) => visitor.visit_unit(),
            other => Err(other.expected("null (NULL)")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Attribute(
                AttributeValue::L(_) | AttributeValue::Ss(_) | AttributeValue::Ns(_) | AttributeValue::Bs(_),
            ) => self.deserialize_any(visitor),
            other => Err(other.expected("a list (L) or a set")),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Attribute(AttributeValue::M(map)) => visitor.visit_map(Members { iter: map.iter(), value: None }),
            other => Err(other.expected("a map (M)")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self {
            // A unit variant by its name, as a string attribute holds it.
            Value::Text(s) => visitor.visit_enum(de::value::StrDeserializer::<Error>::new(s)),
            other => Err(other.expected("a string (S) naming a variant")),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self {
            Value::Binary(b) => visitor.visit_bytes(b),
            other => Err(other.expected("binary (B)")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        Item::from(pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect::<HashMap<_, _>>())
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payment {
        payment_id: String,
        amount: String,
        cents: u64,
        rate: f64,
        status: Status,
        note: Option<String>,
        tags: Vec<String>,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    enum Status {
        Captured,
    }

    #[test]
    fn numbers_keep_every_digit_where_a_string_is_asked_for() {
        let image = item(&[
            ("paymentId", AttributeValue::S("p-1".into())),
            ("amount", AttributeValue::N("12345678901234567.89".into())),
            ("cents", AttributeValue::N("1234".into())),
            ("rate", AttributeValue::N("0.5".into())),
            ("status", AttributeValue::S("CAPTURED".into())),
            ("note", AttributeValue::Null(true)),
            ("tags", AttributeValue::Ss(vec!["a".into(), "b".into()])),
            ("ignored", AttributeValue::M(HashMap::new())),
        ]);
        let payment: Payment = from_item("new image", &image).unwrap();
        assert_eq!(
            payment,
            Payment {
                payment_id: "p-1".into(),
                amount: "12345678901234567.89".into(),
                cents: 1234,
                rate: 0.5,
                status: Status::Captured,
                note: None,
                tags: vec!["a".into(), "b".into()],
            }
        );
        // Through serde_json's Value: integers as numbers, others as their text.
        let any: serde_json::Value =
            from_item("image", &item(&[("a", AttributeValue::N("7".into())), ("b", AttributeValue::N("0.10".into()))]))
                .unwrap();
        assert_eq!(any, serde_json::json!({"a": 7, "b": "0.10"}));
    }

    #[test]
    fn a_field_of_the_wrong_type_is_named() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Counted {
            count: u32,
        }
        let err = from_item::<Counted>("new image", &item(&[("count", AttributeValue::S("x".into()))])).unwrap_err();
        assert_eq!(err.to_string(), "invalid: new image: count: expected a number (N), found a string (S)");
        let err = from_item::<Counted>("new image", &item(&[("count", AttributeValue::N("-1".into()))])).unwrap_err();
        assert_eq!(err.to_string(), "invalid: new image: count: \"-1\" is not a u32");
        let err = from_item::<Counted>("old image", &item(&[])).unwrap_err();
        assert_eq!(err.to_string(), "invalid: old image: missing field `count`");
    }
}
