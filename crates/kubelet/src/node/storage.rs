//! Local persistent volumes (k3s's local-path provisioner, done by the node itself): the
//! default StorageClass `local-path` (`WaitForFirstConsumer`, reclaim `Delete`); when a pod on
//! this node uses a pending claim of that class (or of no class), the node creates a directory
//! under `<agent>/storage/`, a PersistentVolume for it pinned to this node, and binds the
//! claim. A reaper deletes the directories and volumes whose claims are gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::volumes::VolumeError;

pub const CLASS: &str = "local-path";
pub const PROVISIONER: &str = "skiff.dev/local-path";
/// On volumes this node provisioned: the node that holds the data.
const NODE_ANNOTATION: &str = "skiff.dev/local-path-node";

/// Creates the default StorageClass when the cluster has none of that name.
pub async fn ensure_class(client: &kube::Client) -> anyhow::Result<()> {
    let api: Api<StorageClass> = Api::all(client.clone());
    if api.get_opt(CLASS).await?.is_some() {
        return Ok(());
    }
    let class: StorageClass = serde_json::from_value(json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": CLASS,
            "annotations": { "storageclass.kubernetes.io/is-default-class": "true" },
        },
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }))?;
    match api.create(&PostParams::default(), &class).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn wait(msg: String) -> VolumeError {
    VolumeError::Wait(msg)
}

/// The host directory of the claim `ns/name` used by a pod on `node`: the bound volume's path,
/// after provisioning and binding one when the claim is pending and ours to provision.
pub async fn claim_path(
    client: &kube::Client,
    storage_dir: &Path,
    node: &str,
    ns: &str,
    name: &str,
) -> Result<PathBuf, VolumeError> {
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let claim = claims
        .get_opt(name)
        .await
        .map_err(|e| wait(format!("reading persistentvolumeclaim {name:?}: {e}")))?
        .ok_or_else(|| wait(format!("persistentvolumeclaim \"{name}\" not found")))?;
    if claim.metadata.deletion_timestamp.is_some() {
        return Err(wait(format!(
            "persistentvolumeclaim \"{name}\" is being deleted"
        )));
    }
    let spec = claim.spec.clone().unwrap_or_default();
    if let Some(pv_name) = spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
        let pv = volumes
            .get_opt(pv_name)
            .await
            .map_err(|e| wait(format!("reading persistentvolume {pv_name:?}: {e}")))?
            .ok_or_else(|| wait(format!("persistentvolume \"{pv_name}\" not found")))?;
        let pv_spec = pv.spec.unwrap_or_default();
        let holder = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_ANNOTATION).cloned());
        if let Some(h) = holder.filter(|h| h != node) {
            return Err(VolumeError::Config(format!(
                "persistentvolume {pv_name} holds its data on node {h}, not on {node}"
            )));
        }
        let path = pv_spec
            .host_path
            .map(|h| h.path)
            .or_else(|| pv_spec.local.map(|l| l.path))
            .ok_or_else(|| {
                VolumeError::Config(format!(
                    "persistentvolume {pv_name} is neither hostPath nor local; this node cannot mount it"
                ))
            })?;
        std::fs::create_dir_all(&path)
            .map_err(|e| VolumeError::Config(format!("creating {path}: {e}")))?;
        return Ok(PathBuf::from(path));
    }
    let class = spec
        .storage_class_name
        .clone()
        .unwrap_or_else(|| CLASS.to_string());
    if class != CLASS {
        return Err(wait(format!(
            "waiting for persistentvolumeclaim \"{name}\" of class {class:?} to be bound"
        )));
    }
    let uid = claim.metadata.uid.clone().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let dir = storage_dir.join(format!("{pv_name}_{ns}_{name}"));
    std::fs::create_dir_all(&dir)
        .map_err(|e| VolumeError::Config(format!("creating {}: {e}", dir.display())))?;
    // World-writable like local-path-provisioner's directories, so non-root pods can write.
    let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777));
    let request = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "1Gi".into());
    let modes = spec
        .access_modes
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| vec!["ReadWriteOnce".into()]);
    let pv: PersistentVolume = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": pv_name,
            "annotations": {
                "pv.kubernetes.io/provisioned-by": PROVISIONER,
                NODE_ANNOTATION: node,
            },
        },
        "spec": {
            "capacity": { "storage": request },
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": "Delete",
            "storageClassName": CLASS,
            "volumeMode": "Filesystem",
            "hostPath": { "path": dir.to_string_lossy(), "type": "DirectoryOrCreate" },
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": ns, "name": name, "uid": uid,
            },
            "nodeAffinity": { "required": { "nodeSelectorTerms": [{ "matchExpressions": [
                { "key": "kubernetes.io/hostname", "operator": "In", "values": [node] }
            ]}]}},
        },
    }))
    .map_err(|e| VolumeError::Config(format!("building the persistentvolume: {e}")))?;
    match volumes.create(&PostParams::default(), &pv).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
        Err(e) => return Err(wait(format!("creating persistentvolume {pv_name}: {e}"))),
    }
    let bound = json!({ "status": { "phase": "Bound" } });
    let _ = volumes
        .patch_status(&pv_name, &PatchParams::default(), &Patch::Merge(&bound))
        .await;
    let patch = json!({
        "metadata": { "annotations": {
            "pv.kubernetes.io/bind-completed": "yes",
            "pv.kubernetes.io/bound-by-controller": "yes",
            "volume.kubernetes.io/selected-node": node,
            "volume.kubernetes.io/storage-provisioner": PROVISIONER,
        }},
        "spec": { "volumeName": pv_name, "storageClassName": CLASS },
    });
    claims
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| wait(format!("binding persistentvolumeclaim {name:?}: {e}")))?;
    let status = json!({ "status": {
        "phase": "Bound",
        "accessModes": modes,
        "capacity": { "storage": request },
    }});
    claims
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|e| wait(format!("binding persistentvolumeclaim {name:?}: {e}")))?;
    Ok(dir)
}

/// Deletes volumes this node provisioned whose claims are gone (reclaim policy `Delete`), and
/// their directories.
pub async fn reap(client: &kube::Client, node: &str) {
    let volumes: Api<PersistentVolume> = Api::all(client.clone());
    let Ok(list) = volumes.list(&ListParams::default()).await else {
        return;
    };
    let mut claims_by_ns: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for pv in list.items {
        let ann = pv.metadata.annotations.clone().unwrap_or_default();
        if ann.get(NODE_ANNOTATION).map(String::as_str) != Some(node) {
            continue;
        }
        let spec = pv.spec.clone().unwrap_or_default();
        let Some(claim) = spec.claim_ref.clone() else {
            continue;
        };
        let ns = claim.namespace.clone().unwrap_or_default();
        let name = claim.name.clone().unwrap_or_default();
        if !claims_by_ns.contains_key(&ns) {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &ns);
            let Ok(l) = api.list(&ListParams::default()).await else {
                continue;
            };
            claims_by_ns.insert(
                ns.clone(),
                l.items
                    .into_iter()
                    .map(|c| {
                        (
                            c.metadata.name.unwrap_or_default(),
                            c.metadata.uid.unwrap_or_default(),
                        )
                    })
                    .collect(),
            );
        }
        let alive = claims_by_ns[&ns]
            .iter()
            .any(|(n, u)| *n == name && Some(u) == claim.uid.as_ref());
        if alive {
            continue;
        }
        if let Some(path) = spec.host_path.map(|h| h.path) {
            let _ = std::fs::remove_dir_all(&path);
        }
        let pv_name = pv.metadata.name.unwrap_or_default();
        tracing::info!(volume = %pv_name, "deleting a local volume whose claim is gone");
        let _ = volumes.delete(&pv_name, &DeleteParams::default()).await;
    }
}
