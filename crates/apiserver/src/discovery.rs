//! Discovery (legacy and aggregated v2/v2beta1) and the OpenAPI v3 documents kubectl reads for
//! `explain` and `apply` validation.

use std::sync::Arc;

use http::Response;
use serde_json::{Value, json};

use crate::http::{Body, Req, json as json_response, respond};
use crate::resources::{Resource, Table};
use crate::server::ApiServer;

/// Serves the non-resource GET paths; `None` is a 404.
pub fn route(server: &Arc<ApiServer>, req: &Req) -> Option<Response<Body>> {
    let table = server.resources.snapshot();
    let path = req.path.trim_end_matches('/');
    let aggregated = aggregated_version(req.header("accept"));
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api"] => Some(match aggregated {
            Some(v) => aggregated_response(v, vec![group_discovery(&table, "")]),
            None => json_response(
                200,
                &json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": req.header("host").unwrap_or("127.0.0.1") }],
                }),
            ),
        }),
        ["apis"] => Some(match aggregated {
            Some(v) => {
                let groups = table
                    .groups()
                    .into_iter()
                    .filter(|g| !g.is_empty())
                    .map(|g| group_discovery(&table, &g))
                    .collect();
                aggregated_response(v, groups)
            }
            None => {
                let groups: Vec<Value> = table
                    .groups()
                    .into_iter()
                    .filter(|g| !g.is_empty())
                    .map(|g| api_group(&table, &g))
                    .collect();
                json_response(
                    200,
                    &json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups }),
                )
            }
        }),
        ["api", version] => (table
            .group_versions
            .iter()
            .any(|(g, v)| g.is_empty() && v == version))
        .then(|| json_response(200, &resource_list(&table, "", version))),
        ["apis", group] => (!table.versions_of(group).is_empty()).then(|| {
            let mut g = api_group(&table, group);
            g["kind"] = json!("APIGroup");
            g["apiVersion"] = json!("v1");
            json_response(200, &g)
        }),
        ["apis", group, version] => (table
            .group_versions
            .iter()
            .any(|(g, v)| g == group && v == version))
        .then(|| json_response(200, &resource_list(&table, group, version))),
        ["openapi", "v3"] => Some(json_response(200, &openapi_index(&table))),
        // Schemas are published as OpenAPI v3 only. An empty v2 document (a valid, empty
        // protobuf message) tells clients that fall back to v2 (kubectl validating a `List`)
        // that no v2 schemas exist, so they skip client-side checks; the server validates.
        ["openapi", "v2"] => Some(respond(
            200,
            "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
            bytes::Bytes::new(),
        )),
        ["openapi", "v3", rest @ ..] => openapi_document(&table, &rest.join("/")),
        _ => None,
    }
}

/// The aggregated discovery version the client accepts, if any ("v2" or "v2beta1").
fn aggregated_version(accept: Option<&str>) -> Option<&'static str> {
    let accept = accept?;
    for item in accept.split(',') {
        let has = |p: &str| item.split(';').any(|x| x.trim() == p);
        if has("g=apidiscovery.k8s.io") && has("as=APIGroupDiscoveryList") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
    }
    None
}

fn aggregated_response(version: &str, items: Vec<Value>) -> Response<Body> {
    let body = json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{version}"),
        "metadata": {},
        "items": items,
    });
    let mut r = respond(
        200,
        &format!("application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"),
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    r.headers_mut()
        .insert(http::header::VARY, http::HeaderValue::from_static("Accept"));
    r
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

fn api_group(table: &Table, group: &str) -> Value {
    let versions: Vec<Value> = table
        .versions_of(group)
        .iter()
        .map(|v| json!({ "groupVersion": group_version(group, v), "version": v }))
        .collect();
    json!({ "name": group, "versions": versions, "preferredVersion": versions.first().cloned().unwrap_or(Value::Null) })
}

fn resource_list(table: &Table, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for r in table.resources_of(group, version) {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": r.verbs,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        resources.push(entry);
        for s in &r.subresources {
            let mut e = json!({
                "name": format!("{}/{}", r.plural, s.name),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": s.kind,
                "verbs": s.verbs,
            });
            if s.group != r.group || s.version != r.version {
                e["group"] = json!(s.group);
                e["version"] = json!(s.version);
            }
            resources.push(e);
        }
    }
    json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version(group, version), "resources": resources })
}

fn discovery_resource(r: &Resource) -> Value {
    let mut e = json!({
        "resource": r.plural,
        "responseKind": { "group": r.group, "version": r.version, "kind": r.kind },
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": r.verbs,
    });
    if !r.short_names.is_empty() {
        e["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        e["categories"] = json!(r.categories);
    }
    if !r.subresources.is_empty() {
        e["subresources"] = r
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": { "group": s.group, "version": s.version, "kind": s.kind },
                    "verbs": s.verbs,
                })
            })
            .collect();
    }
    e
}

fn group_discovery(table: &Table, group: &str) -> Value {
    let versions: Vec<Value> = table
        .versions_of(group)
        .iter()
        .map(|v| {
            let resources: Vec<Value> = table
                .resources_of(group, v)
                .map(|r| discovery_resource(r))
                .collect();
            json!({ "version": v, "resources": resources, "freshness": "Current" })
        })
        .collect();
    json!({ "metadata": { "name": group }, "versions": versions })
}

/// `api/v1` or `apis/<group>/<version>`.
fn openapi_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

fn openapi_index(table: &Table) -> Value {
    let mut paths = serde_json::Map::new();
    for (g, v) in &table.group_versions {
        if let Some((_, hash)) = document_for(table, g, v) {
            let p = openapi_path(g, v);
            paths.insert(
                p.clone(),
                json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash={hash}") }),
            );
        }
    }
    json!({ "paths": paths })
}

/// The OpenAPI document of a group-version with its hash: built-ins from the cached documents,
/// custom resources from their CRDs' schemas.
fn document_for(table: &Table, group: &str, version: &str) -> Option<(bytes::Bytes, String)> {
    let customs: Vec<&Arc<Resource>> = table
        .resources_of(group, version)
        .filter(|r| r.custom.is_some())
        .collect();
    if customs.is_empty() {
        return api::schema::openapi::document_bytes(group, version)
            .map(|d| (bytes::Bytes::from_owner(d.bytes), d.hash));
    }
    crate::crd::openapi_document(group, version, &customs)
}

fn openapi_document(table: &Table, path: &str) -> Option<Response<Body>> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => (String::new(), v.to_string()),
        ["apis", g, v] => (g.to_string(), v.to_string()),
        _ => return None,
    };
    let (bytes, _) = document_for(table, &group, &version)?;
    let mut r = respond(200, "application/json", bytes);
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("public, immutable"),
    );
    Some(r)
}
