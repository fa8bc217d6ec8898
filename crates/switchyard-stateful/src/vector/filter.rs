//! Attribute filters of a vector store search (OpenAI's `ComparisonFilter` and
//! `CompoundFilter`), and the attributes they test.
//!
//! - `eq` / `ne`: same type and value (a number equals the same number written either
//!   way); a file without the key is not `eq` and is `ne`.
//! - `gt` / `gte` / `lt` / `lte`: numbers by value, strings in byte order; different
//!   types, or a missing key, never match.
//! - `in` / `nin`: the value is a list of strings and numbers.
//! - `and` / `or`: nested up to 8 deep, at most 64 filters in all.

use serde_json::{Map, Value};

/// A checked filter.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    Compare { key: String, op: Op, value: Value },
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Gte,
    Lt,
    Lte,
    In,
    Nin,
}

/// A bad filter: the path of the offending field (under `param`) and why.
pub type FilterError = (String, String);

const MAX_DEPTH: usize = 8;
const MAX_FILTERS: usize = 64;

impl Filter {
    /// Checks `v`; errors name the field, e.g. `filters.filters[1].type`.
    pub fn parse(v: &Value, param: &str) -> Result<Filter, FilterError> {
        let mut count = 0;
        parse_at(v, param, 0, &mut count)
    }

    /// Whether a file with these attributes passes.
    pub fn matches(&self, attrs: &Map<String, Value>) -> bool {
        match self {
            Filter::And(fs) => fs.iter().all(|f| f.matches(attrs)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(attrs)),
            Filter::Compare { key, op, value } => {
                let Some(a) = attrs.get(key) else {
                    return matches!(op, Op::Ne | Op::Nin);
                };
                match op {
                    Op::Eq => same(a, value),
                    Op::Ne => !same(a, value),
                    Op::In => value
                        .as_array()
                        .is_some_and(|l| l.iter().any(|v| same(a, v))),
                    Op::Nin => !value
                        .as_array()
                        .is_some_and(|l| l.iter().any(|v| same(a, v))),
                    Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
                        let Some(ord) = order(a, value) else {
                            return false;
                        };
                        match op {
                            Op::Gt => ord.is_gt(),
                            Op::Gte => ord.is_ge(),
                            Op::Lt => ord.is_lt(),
                            _ => ord.is_le(),
                        }
                    }
                }
            }
        }
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn parse_at(v: &Value, at: &str, depth: usize, count: &mut usize) -> Result<Filter, FilterError> {
    let bad = |field: &str, msg: &str| (format!("{at}{field}"), msg.to_string());
    *count += 1;
    if *count > MAX_FILTERS {
        return Err(bad("", "a filter holds at most 64 filters in all"));
    }
    if depth >= MAX_DEPTH {
        return Err(bad("", "filters nest at most 8 deep"));
    }
    let Some(o) = v.as_object() else {
        return Err(bad("", "a filter must be an object with `type`"));
    };
    let kind = o
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| bad(".type", "a filter needs a `type`"))?;
    let op = match kind {
        "and" | "or" => {
            let list = o
                .get("filters")
                .and_then(Value::as_array)
                .filter(|l| !l.is_empty())
                .ok_or_else(|| {
                    bad(
                        ".filters",
                        "a compound filter needs `filters`: a non-empty list of filters",
                    )
                })?;
            let parsed = list
                .iter()
                .enumerate()
                .map(|(i, f)| parse_at(f, &format!("{at}.filters[{i}]"), depth + 1, count))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(if kind == "and" {
                Filter::And(parsed)
            } else {
                Filter::Or(parsed)
            });
        }
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "in" => Op::In,
        "nin" => Op::Nin,
        _ => {
            return Err(bad(
                ".type",
                "`type` must be eq, ne, gt, gte, lt, lte, in, nin, and or or",
            ));
        }
    };
    let key = o
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            bad(
                ".key",
                "a comparison filter needs a `key`: a non-empty string",
            )
        })?;
    let value = o
        .get("value")
        .ok_or_else(|| bad(".value", "a comparison filter needs a `value`"))?;
    let scalar = |v: &Value| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_));
    let ok = match op {
        Op::In | Op::Nin => value.as_array().is_some_and(|l| {
            !l.is_empty()
                && l.iter()
                    .all(|v| matches!(v, Value::String(_) | Value::Number(_)))
        }),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => {
            matches!(value, Value::String(_) | Value::Number(_))
        }
        Op::Eq | Op::Ne => scalar(value),
    };
    if !ok {
        return Err(bad(
            ".value",
            match op {
                Op::In | Op::Nin => "`value` must be a non-empty list of strings and numbers",
                Op::Eq | Op::Ne => "`value` must be a string, a number or a boolean",
                _ => "`value` must be a string or a number",
            },
        ));
    }
    Ok(Filter::Compare {
        key: key.to_string(),
        op,
        value: value.clone(),
    })
}

/// A file's `attributes`: at most 16 keys of at most 64 characters; values strings of
/// at most 512 characters, numbers or booleans. Absent or null is empty.
pub fn attributes(v: Option<&Value>, param: &str) -> Result<Map<String, Value>, FilterError> {
    let bad = |msg: String| (param.to_string(), msg);
    match v {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(bad(format!("`{param}` holds at most 16 keys")));
            }
            for (k, v) in m {
                if k.is_empty() || k.chars().count() > 64 {
                    return Err(bad(format!(
                        "attribute key `{k}` must be 1 to 64 characters"
                    )));
                }
                let ok = match v {
                    Value::String(s) => s.chars().count() <= 512,
                    Value::Number(_) | Value::Bool(_) => true,
                    _ => false,
                };
                if !ok {
                    return Err(bad(format!(
                        "attribute `{k}` must be a string of at most 512 characters, a number or a boolean"
                    )));
                }
            }
            Ok(m.clone())
        }
        Some(_) => Err(bad(format!("`{param}` must be an object"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attrs(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn comparisons_and_compounds_match_as_documented() {
        let a = attrs(json!({"year": 2024, "team": "infra", "public": true}));
        let f = |v: Value| Filter::parse(&v, "filters").unwrap().matches(&a);
        assert!(f(json!({"type": "eq", "key": "year", "value": 2024.0})));
        assert!(f(json!({"type": "ne", "key": "team", "value": "ml"})));
        assert!(f(json!({"type": "ne", "key": "missing", "value": "x"})));
        assert!(!f(json!({"type": "eq", "key": "missing", "value": "x"})));
        assert!(f(json!({"type": "gte", "key": "year", "value": 2024})));
        assert!(!f(json!({"type": "gt", "key": "year", "value": 2024})));
        assert!(!f(json!({"type": "lt", "key": "team", "value": 3})));
        assert!(f(json!({"type": "lt", "key": "team", "value": "ml"})));
        assert!(f(
            json!({"type": "in", "key": "team", "value": ["ml", "infra"]})
        ));
        assert!(f(
            json!({"type": "nin", "key": "year", "value": [2023, 2025]})
        ));
        assert!(f(json!({"type": "eq", "key": "public", "value": true})));
        assert!(f(json!({"type": "and", "filters": [
            {"type": "eq", "key": "team", "value": "infra"},
            {"type": "or", "filters": [
                {"type": "lt", "key": "year", "value": 2000},
                {"type": "eq", "key": "public", "value": true}
            ]}
        ]})));
        assert!(!f(json!({"type": "and", "filters": [
            {"type": "eq", "key": "team", "value": "infra"},
            {"type": "eq", "key": "public", "value": false}
        ]})));
    }

    #[test]
    fn malformed_filters_name_the_field() {
        let err = |v: Value| Filter::parse(&v, "filters").unwrap_err().0;
        assert_eq!(err(json!("eq")), "filters");
        assert_eq!(err(json!({"key": "a", "value": 1})), "filters.type");
        assert_eq!(
            err(json!({"type": "like", "key": "a", "value": 1})),
            "filters.type"
        );
        assert_eq!(err(json!({"type": "eq", "value": 1})), "filters.key");
        assert_eq!(err(json!({"type": "eq", "key": "a"})), "filters.value");
        assert_eq!(
            err(json!({"type": "gt", "key": "a", "value": true})),
            "filters.value"
        );
        assert_eq!(
            err(json!({"type": "in", "key": "a", "value": []})),
            "filters.value"
        );
        assert_eq!(
            err(json!({"type": "and", "filters": []})),
            "filters.filters"
        );
        assert_eq!(
            err(
                json!({"type": "or", "filters": [{"type": "eq", "key": "a", "value": 1}, {"type": "eq", "key": "a", "value": {}}]})
            ),
            "filters.filters[1].value"
        );
        let mut deep = json!({"type": "eq", "key": "a", "value": 1});
        for _ in 0..8 {
            deep = json!({"type": "and", "filters": [deep]});
        }
        assert!(err(deep).starts_with("filters"));
    }

    #[test]
    fn attributes_are_bounded() {
        assert!(attributes(Some(&json!({"a": 1, "b": "x", "c": false})), "attributes").is_ok());
        assert_eq!(
            attributes(Some(&json!({"a": [1]})), "attributes")
                .unwrap_err()
                .0,
            "attributes"
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("k{i}"), json!(i))).collect();
        assert!(attributes(Some(&Value::Object(many)), "attributes").is_err());
        assert!(attributes(Some(&json!({"a": "x".repeat(513)})), "attributes").is_err());
    }
}
