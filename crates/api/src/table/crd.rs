//! Tables for custom resources: columns from a CRD version's `additionalPrinterColumns` and
//! cells evaluated with the simple JSONPath subset those columns allow (upstream's
//! apiextensions `tableconvertor`).

use jiff::Timestamp;
use serde_json::{Value, json};

use super::columns::CREATED_DOC;
use super::duration::{since, timestamp};
use super::format::{int, name, text};

/// One additional printer column of a CRD version.
#[derive(Clone, Debug, PartialEq)]
pub struct CrdColumn {
    pub name: String,
    pub ty: String,
    pub format: String,
    pub description: String,
    pub priority: i32,
    pub json_path: String,
}

/// The columns after NAME for a CRD version, given its `additionalPrinterColumns` (absent or
/// empty yields upstream's default single `Age` column over `.metadata.creationTimestamp`).
pub fn crd_columns(additional_printer_columns: Option<&Value>) -> Vec<CrdColumn> {
    let cols: Vec<CrdColumn> = additional_printer_columns
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| CrdColumn {
            name: text(c, &["name"]).to_owned(),
            ty: text(c, &["type"]).to_owned(),
            format: text(c, &["format"]).to_owned(),
            description: text(c, &["description"]).to_owned(),
            priority: int(c, &["priority"]).unwrap_or(0) as i32,
            json_path: text(c, &["jsonPath"]).to_owned(),
        })
        .collect();
    if !cols.is_empty() {
        return cols;
    }
    vec![CrdColumn {
        name: "Age".to_owned(),
        ty: "date".to_owned(),
        format: String::new(),
        description: CREATED_DOC.to_owned(),
        priority: 0,
        json_path: ".metadata.creationTimestamp".to_owned(),
    }]
}

/// Cells for one custom resource: its name, then one cell per column (`null` when the path
/// finds nothing or the value does not fit the column type).
pub fn crd_row(columns: &[CrdColumn], obj: &Value, now: Timestamp) -> Vec<Value> {
    let mut cells = Vec::with_capacity(columns.len() + 1);
    cells.push(Value::String(name(obj).to_owned()));
    for col in columns {
        let found = parse_path(&col.json_path).and_then(|steps| first_match(obj, &steps));
        cells.push(found.map_or(Value::Null, |v| cell(&col.ty, v, now)));
    }
    cells
}

fn cell(ty: &str, v: &Value, now: Timestamp) -> Value {
    match (ty, v) {
        (_, Value::Null) => Value::Null,
        // String columns print any value the way kubectl's JSONPath printer does.
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Array(_) | Value::Object(_)) => json!(v.to_string()),
        ("string", Value::Number(n)) if n.is_f64() => {
            json!(n.as_f64().map_or_else(String::new, go_float))
        }
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        // Empty and "null" decode to Go's zero time, which prints as `<unknown>`.
        ("date", Value::String(t))
            if t.is_empty() || t == "null" || t.parse::<Timestamp>().is_ok() =>
        {
            json!(since(timestamp(Some(v)), now))
        }
        ("date", Value::String(_)) => json!("<invalid>"),
        _ => Value::Null,
    }
}

/// A float as Go's `%v` prints it: shortest digits, exponent form below 1e-4 or from 1e6.
fn go_float(f: f64) -> String {
    let sci = format!("{f:e}");
    let exp: i32 = sci
        .split_once('e')
        .and_then(|(_, e)| e.parse().ok())
        .unwrap_or(0);
    if f == 0.0 || !f.is_finite() || (-4..6).contains(&exp) {
        return f.to_string();
    }
    let mantissa = sci.split_once('e').map_or(sci.as_str(), |(m, _)| m);
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exp.abs())
}

#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(i64),
    Wildcard,
    /// `[?(@.a.b == "v")]`, `!=`, or bare `[?(@.a)]` (existence).
    Filter {
        path: Vec<Step>,
        op: Option<(bool, Value)>,
    },
}

/// Parses `.a.b[0]['c.d'][*][?(@.type=="Ready")]`, with or without surrounding `{}`.
fn parse_path(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut steps = Vec::new();
    let mut rest = p;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let field = &r[..end];
            if field.is_empty() {
                return None;
            }
            steps.push(if field == "*" {
                Step::Wildcard
            } else {
                Step::Field(field.to_owned())
            });
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = bracket_end(r)?;
            steps.push(parse_bracket(r[..end].trim())?);
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(steps)
}

/// Index of the `]` closing a bracket, skipping quoted strings.
fn bracket_end(s: &str) -> Option<usize> {
    let mut quote = None;
    for (i, ch) in s.char_indices() {
        match (quote, ch) {
            (None, '\'' | '"') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            (None, ']') => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote(s: &str) -> Option<&str> {
    s.strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
}

fn parse_bracket(inner: &str) -> Option<Step> {
    if inner == "*" {
        return Some(Step::Wildcard);
    }
    if let Some(key) = unquote(inner) {
        return Some(Step::Field(key.to_owned()));
    }
    if let Some(expr) = inner.strip_prefix("?(").and_then(|e| e.strip_suffix(')')) {
        let expr = expr.trim();
        let (lhs, op) = match expr
            .find("==")
            .map(|i| (i, true))
            .or_else(|| expr.find("!=").map(|i| (i, false)))
        {
            Some((i, eq)) => {
                let rhs = expr[i + 2..].trim();
                let value = match unquote(rhs) {
                    Some(s) => json!(s),
                    None => serde_json::from_str(rhs).ok()?,
                };
                (expr[..i].trim(), Some((eq, value)))
            }
            None => (expr, None),
        };
        let path = parse_path(lhs.strip_prefix('@')?)?;
        return Some(Step::Filter { path, op });
    }
    inner.parse().ok().map(Step::Index)
}

/// The first value the path reaches, searching wildcard and filter branches in order.
fn first_match<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let Some((step, rest)) = steps.split_first() else {
        return Some(v);
    };
    match step {
        Step::Field(f) => first_match(v.get(f)?, rest),
        Step::Index(i) => {
            let arr = v.as_array()?;
            let idx = if *i < 0 {
                arr.len().checked_sub(i.unsigned_abs() as usize)?
            } else {
                *i as usize
            };
            first_match(arr.get(idx)?, rest)
        }
        Step::Wildcard => children(v).find_map(|c| first_match(c, rest)),
        Step::Filter { path, op } => children(v)
            .filter(|c| {
                let found = first_match(c, path);
                match op {
                    None => found.is_some(),
                    Some((eq, want)) => found.is_some_and(|got| filter_eq(got, want) == *eq),
                }
            })
            .find_map(|c| first_match(c, rest)),
    }
}

fn filter_eq(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => got == want,
    }
}

fn children(v: &Value) -> Box<dyn Iterator<Item = &Value> + '_> {
    match v {
        Value::Array(a) => Box::new(a.iter()),
        Value::Object(m) => Box::new(m.values()),
        _ => Box::new(std::iter::empty()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_cells() {
        let obj = json!({
            "metadata": {"name": "x", "labels": {"app.kubernetes.io/name": "web"}},
            "spec": {"replicas": 3, "ratio": 1.5, "float": 3.0, "big": 1000000.0, "small": 0.000025, "on": true, "list": ["a", "b"], "m": {"k": 1}},
            "status": {"conditions": [
                {"type": "Synced", "status": "False"},
                {"type": "Ready", "status": "True"}
            ]}
        });
        let cases: &[(&str, &str, Value)] = &[
            (".spec.replicas", "integer", json!(3)),
            (".spec.replicas", "string", json!("3")),
            (".spec.replicas", "number", json!(3.0)),
            (".spec.ratio", "integer", json!(1)),
            (".spec.ratio", "string", json!("1.5")),
            (".spec.float", "string", json!("3")),
            (".spec.big", "string", json!("1e+06")),
            (".spec.small", "string", json!("2.5e-05")),
            (".spec.on", "boolean", json!(true)),
            (".spec.on", "string", json!("true")),
            (".spec.list[1]", "string", json!("b")),
            (".spec.list[-1]", "string", json!("b")),
            (".spec.list", "string", json!("[\"a\",\"b\"]")),
            (".spec.m", "string", json!("{\"k\":1}")),
            (".spec.missing", "string", Value::Null),
            (".spec.replicas", "boolean", Value::Null),
            (
                ".status.conditions[?(@.type==\"Ready\")].status",
                "string",
                json!("True"),
            ),
            (
                ".status.conditions[?(@.type=='Synced')].status",
                "string",
                json!("False"),
            ),
            (
                ".status.conditions[?(@.type!=\"Synced\")].type",
                "string",
                json!("Ready"),
            ),
            (".status.conditions[*].type", "string", json!("Synced")),
            (
                ".metadata.labels['app.kubernetes.io/name']",
                "string",
                json!("web"),
            ),
            ("{.spec.list[0]}", "string", json!("a")),
            (".metadata.name", "date", json!("<invalid>")),
            (".bad[", "string", Value::Null),
        ];
        let now = Timestamp::UNIX_EPOCH;
        for (path, ty, want) in cases {
            let col = CrdColumn {
                name: "C".into(),
                ty: (*ty).into(),
                format: String::new(),
                description: String::new(),
                priority: 0,
                json_path: (*path).into(),
            };
            let row = crd_row(&[col], &obj, now);
            assert_eq!(&row[1], want, "{path} as {ty}");
        }
    }

    #[test]
    fn default_age_column() {
        let cols = crd_columns(Some(&json!([])));
        assert_eq!(cols.len(), 1);
        assert_eq!(
            (cols[0].name.as_str(), cols[0].ty.as_str()),
            ("Age", "date")
        );
        let now: Timestamp = "2024-01-01T00:10:00Z".parse().unwrap();
        let obj = json!({"metadata": {"name": "a", "creationTimestamp": "2024-01-01T00:00:00Z"}});
        assert_eq!(crd_row(&cols, &obj, now), vec![json!("a"), json!("10m")]);
    }
}
