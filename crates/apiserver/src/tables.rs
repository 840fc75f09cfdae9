//! Server-side Tables for `kubectl get`: built-in printers, or a CRD's printer columns.

use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::rest::Ctx;

fn include(ctx: &Ctx<'_>) -> ApiResult<api::table::IncludeObject> {
    let p = ctx.req.query.get("includeObject").unwrap_or_default();
    api::table::IncludeObject::parse(p)
        .ok_or_else(|| ApiError::bad_request(format!("includeObject: unsupported value {p:?}")))
}

/// The Table of `objects` as bytes (fast path for lists: objects may be produced lazily).
pub fn table_bytes(
    ctx: &Ctx<'_>,
    objects: impl IntoIterator<Item = impl std::borrow::Borrow<Value>>,
    rv: &str,
    cont: Option<&str>,
    remaining: Option<u64>,
) -> ApiResult<Vec<u8>> {
    let meta = api::table::ListMeta {
        resource_version: rv,
        continue_token: cont,
        remaining_item_count: remaining,
    };
    let now = jiff::Timestamp::now();
    let include = include(ctx)?;
    let mut out = Vec::with_capacity(4096);
    let written = match &ctx.res.custom {
        Some(c) => {
            let cols = api::table::crd_columns(Some(&Value::Array(c.printer_columns.clone())));
            api::table::write_crd_table(&mut out, &cols, objects, include, &meta, now)
        }
        None => api::table::write_table(
            &mut out,
            &ctx.res.group,
            &ctx.res.kind,
            objects,
            include,
            &meta,
            now,
        ),
    };
    written.map_err(ApiError::internal)?;
    Ok(out)
}

/// The Table of `objects` as a value (single objects and watch events).
pub fn table(
    ctx: &Ctx<'_>,
    objects: &[Value],
    rv: &str,
    cont: Option<&str>,
    remaining: Option<u64>,
) -> Value {
    table_bytes(ctx, objects, rv, cont, remaining)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}
