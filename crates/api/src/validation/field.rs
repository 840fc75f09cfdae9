//! Field errors in upstream's shape: what a 422 Invalid `Status` lists as its causes.

use serde_json::Value;

/// The kind of a field error; each maps to upstream's cause `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Forbidden,
    Duplicate,
    TooLong,
    TooMany,
    NotFound,
    /// A value of the wrong JSON type (upstream reports these as `FieldValueTypeInvalid`).
    TypeInvalid,
    InternalError,
}

impl ErrorType {
    /// The `reason` of a `StatusCause`.
    pub fn reason(self) -> &'static str {
        match self {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid => "FieldValueInvalid",
            ErrorType::NotSupported => "FieldValueNotSupported",
            ErrorType::Forbidden => "FieldValueForbidden",
            ErrorType::Duplicate => "FieldValueDuplicate",
            ErrorType::TooLong => "FieldValueTooLong",
            ErrorType::TooMany => "FieldValueTooMany",
            ErrorType::NotFound => "FieldValueNotFound",
            ErrorType::TypeInvalid => "FieldValueTypeInvalid",
            ErrorType::InternalError => "InternalError",
        }
    }
}

/// One invalid field: `field` is a path like `spec.template.spec.containers[0].image`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub ty: ErrorType,
    pub field: String,
    /// The offending value, shown in the message for the kinds that show one.
    pub value: Option<Value>,
    pub detail: String,
}

impl FieldError {
    pub fn new(
        ty: ErrorType,
        field: impl Into<String>,
        value: Option<Value>,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            ty,
            field: field.into(),
            value,
            detail: detail.into(),
        }
    }
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Required, field, None, detail)
    }
    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Invalid, field, Some(value), detail)
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(ErrorType::Forbidden, field, None, detail)
    }
    pub fn duplicate(field: impl Into<String>, value: Value) -> Self {
        Self::new(ErrorType::Duplicate, field, Some(value), "")
    }
    pub fn not_supported(field: impl Into<String>, value: Value, supported: &[&str]) -> Self {
        let list = supported
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let detail = if supported.is_empty() {
            String::new()
        } else {
            format!("supported values: {list}")
        };
        Self::new(ErrorType::NotSupported, field, Some(value), detail)
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self::new(
            ErrorType::TooLong,
            field,
            None,
            format!("may not be more than {max} bytes"),
        )
    }

    /// The cause message exactly as upstream words it, without the field path.
    pub fn message(&self) -> String {
        let value = self.value.as_ref().map(render_value);
        let head = match self.ty {
            ErrorType::Required => "Required value".to_string(),
            ErrorType::Invalid => {
                format!("Invalid value: {}", value.unwrap_or_else(|| "null".into()))
            }
            ErrorType::TypeInvalid => {
                format!("Invalid value: {}", value.unwrap_or_else(|| "null".into()))
            }
            ErrorType::NotSupported => format!(
                "Unsupported value: {}",
                value.unwrap_or_else(|| "null".into())
            ),
            ErrorType::Forbidden => "Forbidden".to_string(),
            ErrorType::Duplicate => format!(
                "Duplicate value: {}",
                value.unwrap_or_else(|| "null".into())
            ),
            ErrorType::TooLong => "Too long".to_string(),
            ErrorType::TooMany => "Too many".to_string(),
            ErrorType::NotFound => format!("Not found: {}", value.unwrap_or_else(|| "null".into())),
            ErrorType::InternalError => "Internal error".to_string(),
        };
        if self.detail.is_empty() {
            head
        } else {
            format!("{head}: {}", self.detail)
        }
    }

    /// `field: message`, as in the Status message.
    pub fn full_message(&self) -> String {
        format!("{}: {}", self.field, self.message())
    }
}

/// Values as upstream prints them in messages: strings quoted, numbers bare, string maps and
/// string lists as Go's `%#v` of the typed fields they come from (labels, selectors, IP
/// lists), anything else as JSON.
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "null".into(),
        Value::Object(m) if m.values().all(Value::is_string) => {
            let mut pairs: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{k:?}:{:?}", v.as_str().unwrap_or("")))
                .collect();
            pairs.sort_unstable();
            format!("map[string]string{{{}}}", pairs.join(", "))
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_string) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| format!("{:?}", v.as_str().unwrap_or("")))
                .collect();
            format!("[]string{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}
