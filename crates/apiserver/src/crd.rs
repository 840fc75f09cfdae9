//! CustomResourceDefinitions: the resources they serve, their status conditions, their OpenAPI
//! documents, and removal of their objects when the CRD goes.

use std::sync::Arc;

use anyhow::Result;
use serde_json::{Value, json};
use store::ListOptions;

use crate::resources::{self, Resource};
use crate::server::ApiServer;

const CRD_PREFIX: &str = "/registry/apiextensions.k8s.io/customresourcedefinitions/";

fn stored_crds(server: &ApiServer) -> Result<Vec<Value>> {
    let listed = server.store.list(&ListOptions {
        prefix: CRD_PREFIX,
        ..Default::default()
    })?;
    Ok(listed
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}

/// Rebuilds the served resource table from the stored CRDs.
pub fn reload(server: &ApiServer) -> Result<()> {
    let mut custom: Vec<Resource> = Vec::new();
    for crd in stored_crds(server)? {
        if crate::object::is_deleting(&crd) {
            continue;
        }
        for r in resources::from_crd(&crd) {
            // A CRD may not shadow a built-in resource.
            if api::registry::find(&r.group, &r.version, &r.plural).is_none() {
                custom.push(r);
            }
        }
    }
    server.resources.set_custom(custom);
    Ok(())
}

/// What the apiextensions controllers would report: names accepted, established.
pub fn set_status(crd: &mut Value) {
    let now = crate::object::now_rfc3339();
    let names = crd["spec"]["names"].clone();
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .filter(|v| v["storage"].as_bool() == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    crd["status"] = json!({
        "acceptedNames": names,
        "storedVersions": stored,
        "conditions": [
            { "type": "NamesAccepted", "status": "True", "lastTransitionTime": now, "reason": "NoConflicts", "message": "no conflicts found" },
            { "type": "Established", "status": "True", "lastTransitionTime": now, "reason": "InitialNamesAccepted", "message": "the initial names have been accepted" },
        ],
    });
}

/// Deletes every object of a removed CRD (upstream's customresourcecleanup finalizer).
pub fn remove_instances(server: &Arc<ApiServer>, crd: &Value) {
    let (Some(group), Some(plural)) = (
        crd["spec"]["group"].as_str(),
        crd["spec"]["names"]["plural"].as_str(),
    ) else {
        return;
    };
    let prefix = format!("/registry/{group}/{plural}/");
    let server = server.clone();
    tokio::spawn(async move {
        let Ok(listed) = server.store.list(&ListOptions {
            prefix: &prefix,
            ..Default::default()
        }) else {
            return;
        };
        for kv in listed.items {
            let last: Value = serde_json::from_slice(&kv.value).unwrap_or(json!({}));
            if let Err(e) = server.store.delete(&kv.key, last, None).await {
                tracing::warn!("removing {} after its CRD was deleted failed: {e}", kv.key);
            }
        }
    });
}

/// The OpenAPI document of a group-version served by CRDs.
pub fn openapi_document(
    group: &str,
    version: &str,
    customs: &[&Arc<Resource>],
) -> Option<(bytes::Bytes, String)> {
    let mut crds: Vec<&Value> = Vec::new();
    for c in customs.iter().filter_map(|r| r.custom.as_ref()) {
        if !crds
            .iter()
            .any(|x| x["metadata"]["name"] == c.crd["metadata"]["name"])
        {
            crds.push(c.crd.as_ref());
        }
    }
    let doc = api::schema::openapi::openapi_v3_for_crds(group, version, crds);
    let d = api::schema::openapi::Document::new(&doc);
    Some((bytes::Bytes::from_owner(d.bytes), d.hash))
}
