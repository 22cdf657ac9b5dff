//! Lambda event filtering, the subset the stack uses: a pattern is a JSON
//! object whose leaves are lists of exact strings; a record matches when,
//! for every leaf, the value at that path is a string equal to one of the
//! list's entries. Several patterns are OR-ed, as Lambda does.
//! <https://docs.aws.amazon.com/lambda/latest/dg/invocation-eventfiltering.html>
//!
//! Other pattern syntax (numeric, prefix, `exists`, ...) is rejected when the
//! pattern is parsed, so a new pattern in stack.json cannot be silently
//! mis-applied by the local driver.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// One parsed pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    /// (path, allowed strings) for each leaf.
    leaves: Vec<(Vec<String>, Vec<String>)>,
}

impl Pattern {
    /// Parses a pattern string of stack.json.
    pub fn parse(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).with_context(|| format!("filter pattern {text:?} is not JSON"))?;
        let mut leaves = Vec::new();
        collect(&value, &mut Vec::new(), &mut leaves).with_context(|| format!("filter pattern {text}"))?;
        if leaves.is_empty() {
            bail!("filter pattern {text} has no conditions");
        }
        Ok(Self { leaves })
    }

    /// Whether `record` matches.
    pub fn matches(&self, record: &Value) -> bool {
        self.leaves.iter().all(|(path, allowed)| {
            let mut at = record;
            for segment in path {
                match at.get(segment) {
                    Some(v) => at = v,
                    None => return false,
                }
            }
            at.as_str().is_some_and(|s| allowed.iter().any(|a| a == s))
        })
    }
}

fn collect(value: &Value, path: &mut Vec<String>, leaves: &mut Vec<(Vec<String>, Vec<String>)>) -> Result<()> {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                collect(v, path, leaves)?;
                path.pop();
            }
            Ok(())
        }
        Value::Array(items) => {
            let strings: Option<Vec<String>> = items.iter().map(|i| i.as_str().map(str::to_owned)).collect();
            match strings {
                Some(s) if !s.is_empty() => {
                    leaves.push((path.clone(), s));
                    Ok(())
                }
                _ => bail!("at {}: only lists of exact strings are supported by the local driver", path.join(".")),
            }
        }
        _ => bail!("at {}: a leaf must be a list", path.join(".")),
    }
}

/// Whether `record` passes the mapping's filters (no patterns: everything).
pub fn passes(patterns: &[Pattern], record: &Value) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(record))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ORDER_ONLY: &str = r#"{"dynamodb":{"Keys":{"sk":{"S":["ORDER"]}}}}"#;

    #[test]
    fn exact_string_pattern_selects_order_records() {
        let p = Pattern::parse(ORDER_ONLY).unwrap();
        let order = json!({"dynamodb": {"Keys": {"pk": {"S": "ORDER#1"}, "sk": {"S": "ORDER"}}}});
        let totals = json!({"dynamodb": {"Keys": {"pk": {"S": "CUSTOMER#c"}, "sk": {"S": "TOTALS"}}}});
        let no_keys = json!({"dynamodb": {}});
        assert!(p.matches(&order));
        assert!(!p.matches(&totals));
        assert!(!p.matches(&no_keys));
        assert!(passes(&[], &totals));
        assert!(passes(&[p], &order));
    }

    #[test]
    fn unsupported_syntax_is_rejected() {
        for bad in [r#"{"a":[{"prefix":"x"}]}"#, r#"{"a":"x"}"#, r#"{"a":[]}"#, r#"{}"#] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
