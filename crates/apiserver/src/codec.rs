//! Request bodies in (JSON, YAML, protobuf; the patch types) and the response form a client
//! asked for in `Accept` (JSON, YAML, Table, PartialObjectMetadata).

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

/// The media type of a request body, without parameters.
pub fn media_type(content_type: Option<&str>) -> String {
    content_type
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn parse_json(body: &[u8]) -> ApiResult<Value> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding body as JSON: {e}")))
}

fn parse_yaml(body: &[u8]) -> ApiResult<Value> {
    // JSON is YAML, but the JSON parser is faster and gives better errors for JSON bodies.
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let v: Value = serde_yaml_ng::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding body as YAML: {e}")))?;
    Ok(v)
}

/// Decodes an object body (create/update) of the given content type.
pub fn decode_object(content_type: Option<&str>, body: &[u8]) -> ApiResult<Value> {
    let mt = media_type(content_type);
    let v = match mt.as_str() {
        "application/json" | "" | "*/*" => parse_json(body)?,
        "application/yaml" | "application/x-yaml" | "text/yaml" => parse_yaml(body)?,
        "application/vnd.kubernetes.protobuf" => {
            api::protobuf::decode(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}")))?
                .object
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    if !v.is_object() {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(v)
}

/// The kinds of patch a PATCH may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub fn patch_type(content_type: Option<&str>) -> ApiResult<PatchType> {
    match media_type(content_type).as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => Ok(PatchType::Apply),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn decode_patch(ty: PatchType, body: &[u8]) -> ApiResult<Value> {
    let v = match ty {
        PatchType::Apply => parse_yaml(body)?,
        _ => parse_json(body)?,
    };
    match (ty, &v) {
        (PatchType::Json, Value::Array(_)) => Ok(v),
        (PatchType::Json, _) => Err(ApiError::bad_request(
            "json patch must be an array of operations",
        )),
        (_, Value::Object(_)) => Ok(v),
        _ => Err(ApiError::bad_request("patch body must be a JSON object")),
    }
}

/// What form the client wants objects in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
    Table,
    /// `as=PartialObjectMetadata` / `PartialObjectMetadataList`: metadata only.
    Metadata,
}

/// Picks the first acceptable form from `Accept`; `None` means 406.
pub fn negotiate(accept: Option<&str>) -> Option<Output> {
    let accept = match accept {
        Some(a) if !a.trim().is_empty() => a,
        _ => return Some(Output::Json),
    };
    for item in accept.split(',') {
        let mut parts = item.split(';').map(str::trim);
        let mt = parts.next().unwrap_or_default().to_ascii_lowercase();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |k: &str| params.iter().find(|(pk, _)| *pk == k).map(|(_, v)| *v);
        match mt.as_str() {
            "application/json" | "application/*" | "*/*" => match param("as") {
                None => return Some(Output::Json),
                Some("Table") if param("g") == Some("meta.k8s.io") => return Some(Output::Table),
                Some("PartialObjectMetadata" | "PartialObjectMetadataList")
                    if param("g") == Some("meta.k8s.io") =>
                {
                    return Some(Output::Metadata);
                }
                _ => continue,
            },
            "application/yaml" => return Some(Output::Yaml),
            _ => continue,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers() {
        let cases = [
            (None, Some(Output::Json)),
            (
                Some(
                    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json",
                ),
                Some(Output::Table),
            ),
            (
                Some("application/vnd.kubernetes.protobuf,application/json"),
                Some(Output::Json),
            ),
            (
                Some("application/vnd.kubernetes.protobuf, */*"),
                Some(Output::Json),
            ),
            (
                Some("application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"),
                Some(Output::Metadata),
            ),
            (Some("application/yaml"), Some(Output::Yaml)),
            (Some("text/html"), None),
        ];
        for (accept, want) in cases {
            assert_eq!(negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn bodies() {
        assert!(decode_object(Some("application/json"), b"{\"a\":1}").is_ok());
        assert_eq!(
            decode_object(Some("application/json"), b"{bad")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_object(Some("application/json"), b"[1]")
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            decode_object(Some("text/plain"), b"{}").unwrap_err().code,
            415
        );
        assert!(decode_object(Some("application/yaml"), b"a: 1\nb: [x]\n").is_ok());
        assert!(decode_patch(PatchType::Apply, b"{\"a\":1}").is_ok());
        assert_eq!(decode_patch(PatchType::Json, b"{}").unwrap_err().code, 400);
    }
}
