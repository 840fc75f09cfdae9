//! Turns one protobuf message into the JSON Go's encoder would write for the same object.

use std::borrow::Cow;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Number, Value};

use super::ProtoError;
use super::schema::{Card, Field, Message, Shape, Ty, message};
use super::wire::{Reader, Wire, malformed};

/// Deeper nesting than any Kubernetes object needs; it bounds the recursion on hostile input.
const MAX_DEPTH: usize = 100;

/// `time.Time{}` as Unix seconds: Go writes it as JSON null.
const GO_ZERO_TIME: i64 = -62_135_596_800;

pub(super) fn decode(bytes: &[u8], index: u16, depth: usize) -> Result<Value, ProtoError> {
    if depth > MAX_DEPTH {
        return Err(malformed(format!("nesting deeper than {MAX_DEPTH}")));
    }
    let msg = message(index);
    match msg.shape {
        Shape::Object => {
            let mut out = Map::new();
            object_into(&mut out, bytes, msg, depth)?;
            Ok(Value::Object(out))
        }
        Shape::Time | Shape::MicroTime => {
            let (seconds, nanos) = (int_field(bytes, 1)?, int_field(bytes, 2)?);
            if bytes.is_empty() || (seconds == GO_ZERO_TIME && nanos == 0) {
                return Ok(Value::Null);
            }
            timestamp(seconds, nanos, msg.shape == Shape::MicroTime).map(Value::String)
        }
        Shape::Quantity => {
            let s = str_field(bytes, 1)?;
            // An empty Quantity is Go's zero value, which prints as "0".
            Ok(Value::String(if s.is_empty() { "0".to_owned() } else { s }))
        }
        Shape::IntOrString => match int_field(bytes, 1)? {
            // intVal is an int32 on the wire.
            0 => Ok(Value::from(int_field(bytes, 2)? as i32)),
            1 => Ok(Value::String(str_field(bytes, 3)?)),
            other => Err(malformed(format!("invalid IntOrString type {other}"))),
        },
        Shape::RawJson => {
            let raw = bytes_field(bytes, 1)?;
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(raw)
                .map_err(|e| malformed(format!("{}: embedded json: {e}", msg.name)))
        }
        Shape::Items => {
            let mut out = Map::new();
            object_into(&mut out, bytes, msg, depth)?;
            Ok(out
                .remove("items")
                .unwrap_or_else(|| Value::Array(Vec::new())))
        }
        Shape::SchemaOrArray | Shape::SchemaOrBool | Shape::SchemaOrStringArray => {
            let mut out = Map::new();
            object_into(&mut out, bytes, msg, depth)?;
            let schema = out.remove("schema");
            // The choices of the Go MarshalJSON methods of these apiextensions types.
            Ok(match msg.shape {
                Shape::SchemaOrArray => out
                    .remove("j_son_schemas")
                    .or(schema)
                    .unwrap_or(Value::Null),
                Shape::SchemaOrBool => schema.unwrap_or_else(|| {
                    Value::Bool(out.remove("allows") == Some(Value::Bool(true)))
                }),
                _ => out.remove("property").or(schema).unwrap_or(Value::Null),
            })
        }
    }
}

/// Decodes the fields of `msg` into `out`; inlined structs share their parent's object.
fn object_into(
    out: &mut Map<String, Value>,
    bytes: &[u8],
    msg: &Message,
    depth: usize,
) -> Result<(), ProtoError> {
    // A singular message field may occur more than once; protobuf merges the occurrences,
    // which is the same as decoding their concatenation.
    let mut nested: Vec<(&Field, Vec<&[u8]>)> = Vec::new();
    let mut reader = Reader::new(bytes);
    while let Some((num, wire)) = reader.next_field()? {
        let Some(field) = msg.field(num) else {
            continue; // an unknown field, as Go's decoder skips
        };
        match (field.card, field.ty) {
            (Card::Repeated, ty) => {
                let items = array_entry(out, field.json)?;
                match (ty, wire) {
                    (Ty::Bool | Ty::I32 | Ty::I64, Wire::Bytes(packed)) => {
                        let mut packed = Reader::new(packed);
                        while !packed.is_empty() {
                            items.push(scalar(field, Wire::Varint(packed.varint()?))?);
                        }
                    }
                    (Ty::Msg(index), wire) => {
                        items.push(decode(bytes_of(field, wire)?, index, depth + 1)?);
                    }
                    (_, wire) => items.push(scalar(field, wire)?),
                }
            }
            (Card::Map, ty) => {
                let (key, value) = map_entry(field, ty, bytes_of(field, wire)?, depth)?;
                let entries = out
                    .entry(field.json)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(entries) = entries {
                    entries.insert(key, value);
                }
            }
            (_, Ty::Msg(_)) => {
                let segment = bytes_of(field, wire)?;
                match nested.iter_mut().find(|(f, _)| f.num == num) {
                    Some((_, segments)) => segments.push(segment),
                    None => nested.push((field, vec![segment])),
                }
            }
            (card, _) => {
                let value = scalar(field, wire)?;
                // Go's encoder drops a zero of a non-pointer `omitempty` field; a later
                // occurrence overrides an earlier one, zero or not.
                if card == Card::Opt && is_zero(&value) {
                    out.remove(field.json);
                } else {
                    out.insert(field.json.to_owned(), value);
                }
            }
        }
    }
    for (field, segments) in nested {
        let Ty::Msg(index) = field.ty else { continue };
        let bytes: Cow<'_, [u8]> = match segments.as_slice() {
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        };
        if field.card == Card::Inline {
            if depth >= MAX_DEPTH {
                return Err(malformed(format!("nesting deeper than {MAX_DEPTH}")));
            }
            object_into(out, &bytes, message(index), depth + 1)?;
        } else {
            out.insert(field.json.to_owned(), decode(&bytes, index, depth + 1)?);
        }
    }
    Ok(())
}

fn array_entry<'m>(
    out: &'m mut Map<String, Value>,
    key: &str,
) -> Result<&'m mut Vec<Value>, ProtoError> {
    match out.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(items) => Ok(items),
        _ => Err(malformed(format!(
            "field {key} is both repeated and singular"
        ))),
    }
}

/// A `map<string, ty>` entry: a message with the key in field 1 and the value in field 2.
fn map_entry(
    field: &Field,
    ty: Ty,
    bytes: &[u8],
    depth: usize,
) -> Result<(String, Value), ProtoError> {
    let (mut key, mut value) = (String::new(), None);
    let mut reader = Reader::new(bytes);
    while let Some((num, wire)) = reader.next_field()? {
        match num {
            1 => key = string(bytes_of(field, wire)?),
            2 => value = Some(bytes_of(field, wire)?),
            _ => {}
        }
    }
    // A missing value is the Go zero value of its type.
    let value = value.unwrap_or_default();
    let value = match ty {
        Ty::Msg(index) => decode(value, index, depth + 1)?,
        Ty::Bytes => Value::String(STANDARD.encode(value)),
        _ => Value::String(string(value)),
    };
    Ok((key, value))
}

fn scalar(field: &Field, wire: Wire<'_>) -> Result<Value, ProtoError> {
    // Go casts varints to the field's width, so an int32 is the low 32 bits.
    Ok(match (field.ty, wire) {
        (Ty::Str, Wire::Bytes(b)) => Value::String(string(b)),
        (Ty::Bytes, Wire::Bytes(b)) => Value::String(STANDARD.encode(b)),
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        (Ty::I32, Wire::Varint(v)) => Value::from(v as i32),
        (Ty::I64, Wire::Varint(v)) => Value::from(v as i64),
        (Ty::F64, Wire::Fixed64(bits)) => Number::from_f64(f64::from_bits(bits))
            .map(Value::Number)
            .ok_or_else(|| malformed(format!("field {} is not a finite number", field.json)))?,
        _ => return Err(wrong_type(field)),
    })
}

fn bytes_of<'a>(field: &Field, wire: Wire<'a>) -> Result<&'a [u8], ProtoError> {
    match wire {
        Wire::Bytes(b) => Ok(b),
        _ => Err(wrong_type(field)),
    }
}

fn wrong_type(field: &Field) -> ProtoError {
    malformed(format!(
        "field {} ({}) has the wrong wire type",
        field.num, field.json
    ))
}

/// Go keeps invalid UTF-8 in strings and its JSON encoder writes U+FFFD for it.
fn string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The last varint in field `num` of a small fixed-layout message, or 0.
fn int_field(bytes: &[u8], num: u32) -> Result<i64, ProtoError> {
    let mut value = 0;
    let mut reader = Reader::new(bytes);
    while let Some((n, wire)) = reader.next_field()? {
        if n == num {
            let Wire::Varint(v) = wire else {
                return Err(malformed(format!("field {num} has the wrong wire type")));
            };
            value = v as i64;
        }
    }
    Ok(value)
}

/// The last length-delimited field `num` of a small fixed-layout message, or empty.
fn bytes_field(bytes: &[u8], num: u32) -> Result<&[u8], ProtoError> {
    let mut value: &[u8] = &[];
    let mut reader = Reader::new(bytes);
    while let Some((n, wire)) = reader.next_field()? {
        if n == num {
            let Wire::Bytes(b) = wire else {
                return Err(malformed(format!("field {num} has the wrong wire type")));
            };
            value = b;
        }
    }
    Ok(value)
}

fn str_field(bytes: &[u8], num: u32) -> Result<String, ProtoError> {
    bytes_field(bytes, num).map(string)
}

/// RFC 3339 in UTC as `metav1.Time` (whole seconds) or `metav1.MicroTime` writes it.
fn timestamp(seconds: i64, nanos: i64, micro: bool) -> Result<String, ProtoError> {
    // nanos is an int32 on the wire; Go's time.Unix normalises any value of it.
    let total = i128::from(seconds) * 1_000_000_000 + i128::from(nanos as i32);
    let zoned = jiff::Timestamp::from_nanosecond(total)
        .map_err(|e| malformed(format!("time out of range: {e}")))?
        .to_zoned(jiff::tz::TimeZone::UTC);
    let whole = zoned.strftime("%Y-%m-%dT%H:%M:%S");
    Ok(if micro {
        format!("{whole}.{:06}Z", zoned.subsec_nanosecond() / 1000)
    } else {
        format!("{whole}Z")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() -> Result<(), ProtoError> {
        assert_eq!(
            timestamp(1_704_164_705, 999, false)?,
            "2024-01-02T03:05:05Z"
        );
        assert_eq!(
            timestamp(1_704_164_705, 123_456_789, true)?,
            "2024-01-02T03:05:05.123456Z"
        );
        assert_eq!(timestamp(0, 0, false)?, "1970-01-01T00:00:00Z");
        assert_eq!(
            timestamp(-1, 500_000_000, true)?,
            "1969-12-31T23:59:59.500000Z"
        );
        assert!(timestamp(i64::MAX, 0, false).is_err());
        Ok(())
    }
}
