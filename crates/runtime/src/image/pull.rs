//! Pulls from OCI registries (distribution API over HTTP(S)) with `oci-client`: manifest (an
//! index is narrowed to this machine's platform), config, then each missing layer downloaded to a
//! temp file and unpacked like an imported one, digests checked.

use std::io::Read;

use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use tokio::io::AsyncWriteExt;

use super::archive::{self, INDEX_DOCKER, INDEX_OCI, MANIFEST_DOCKER, MANIFEST_OCI, Manifest};
use super::digest::sha256_hex;
use super::index::{self, Lock};
use super::reference::Reference;
use super::{Error, ImageStore, Progress, ResolvedImage, Result};

/// Credentials for a registry (from `imagePullSecrets`, resolved by the kubelet).
#[derive(Clone)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `e` and its causes, `: `-separated (reqwest hides "connection refused" in a source).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

/// Config blobs above this are refused: a config is a few KiB.
const MAX_CONFIG: usize = 16 << 20;

impl ImageStore {
    /// Pulls `reference` from its registry (always contacting it: the kubelet decides from
    /// `imagePullPolicy` whether to call this), reusing layers already unpacked. Loopback
    /// registries and those in [`super::StoreOptions::insecure_registries`] are spoken to over
    /// plain HTTP, others over HTTPS. Every failure to reach the registry or to get a verified
    /// image from it is [`Error::Pull`] (the kubelet's `ErrImagePull`).
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&RegistryAuth>,
        progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<ResolvedImage> {
        let r = Reference::parse(reference)?;
        let shown = r.to_string();
        let fail = |reason: String| Error::Pull {
            reference: shown.clone(),
            reason,
        };
        // reqwest is built without a default crypto provider; ring is the workspace's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(ClientConfig {
            protocol: if self.insecure(&r.domain) {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..ClientConfig::default()
        });
        let oauth = match auth {
            Some(a) => {
                oci_client::secrets::RegistryAuth::Basic(a.username.clone(), a.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let mut oref = match (&r.tag, &r.digest) {
            (_, Some(d)) => {
                oci_client::Reference::with_digest(r.domain.clone(), r.path.clone(), d.clone())
            }
            (Some(t), None) => {
                oci_client::Reference::with_tag(r.domain.clone(), r.path.clone(), t.clone())
            }
            (None, None) => unreachable!("a parsed reference has a tag or a digest"),
        };

        let accepted = [MANIFEST_OCI, MANIFEST_DOCKER, INDEX_OCI, INDEX_DOCKER];
        let mut want_digest = r.digest.clone();
        let mut manifest_bytes;
        let mut depth = 0;
        loop {
            let (bytes, _) = client
                .pull_manifest_raw(&oref, &oauth, &accepted)
                .await
                .map_err(|e| fail(format!("fetching the manifest: {}", chain(&e))))?;
            manifest_bytes = bytes.to_vec();
            let actual = format!("sha256:{}", sha256_hex(&manifest_bytes));
            if let Some(want) = &want_digest
                && *want != actual
            {
                return Err(fail(format!(
                    "manifest digest is {actual}, expected {want}"
                )));
            }
            let v: serde_json::Value = serde_json::from_slice(&manifest_bytes)
                .map_err(|e| fail(format!("parsing the manifest: {}", chain(&e))))?;
            let Some(list) = v.get("manifests") else {
                break;
            };
            depth += 1;
            if depth > 3 {
                return Err(fail("image indexes nested too deep".into()));
            }
            let list: Vec<archive::Descriptor> = serde_json::from_value(list.clone())
                .map_err(|e| fail(format!("parsing the image index: {}", chain(&e))))?;
            let arch = archive::oci_arch();
            let chosen = list
                .iter()
                .find(|m| {
                    m.platform
                        .as_ref()
                        .is_some_and(|p| p.os == "linux" && p.architecture == arch)
                })
                .ok_or_else(|| fail(format!("the image index has no linux/{arch} image")))?;
            want_digest = Some(chosen.digest.clone());
            oref = oci_client::Reference::with_digest(
                r.domain.clone(),
                r.path.clone(),
                chosen.digest.clone(),
            );
        }
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| fail(format!("parsing the manifest: {}", chain(&e))))?;
        if manifest.config.size as usize > MAX_CONFIG {
            return Err(fail(format!(
                "config of {} bytes is too large",
                manifest.config.size
            )));
        }

        let mut config = Vec::new();
        client
            .pull_blob(&oref, &descriptor(&manifest.config), &mut config)
            .await
            .map_err(|e| {
                fail(format!(
                    "fetching the config {}: {}",
                    manifest.config.digest,
                    chain(&e)
                ))
            })?;
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        if config_digest != manifest.config.digest {
            return Err(fail(format!(
                "config digest is {config_digest}, expected {}",
                manifest.config.digest
            )));
        }
        let parsed = super::parse_config(&config, &config_digest)?;
        if parsed.diff_ids.len() != manifest.layers.len() {
            return Err(fail(format!(
                "manifest has {} layers but the config lists {} diff_ids",
                manifest.layers.len(),
                parsed.diff_ids.len()
            )));
        }

        // Held shared until the image is recorded, so gc cannot delete fresh layers meanwhile.
        let lock_path = self.layout().content_lock();
        let _content =
            tokio::task::spawn_blocking(move || Lock::acquire(&lock_path, index::Mode::Shared))
                .await
                .map_err(|e| fail(format!("locking: {}", chain(&e))))??;

        let total = manifest
            .layers
            .iter()
            .zip(&parsed.diff_ids)
            .filter(|(_, d)| !self.layer_complete(d))
            .map(|(l, _)| l.size)
            .sum();
        progress(Progress::Start { total });
        let mut done = 0u64;
        for (layer, diff_id) in manifest.layers.iter().zip(&parsed.diff_ids) {
            if self.layer_complete(diff_id) {
                progress(Progress::LayerExists {
                    layer: diff_id.clone(),
                });
                continue;
            }
            let tmp = tempfile::Builder::new()
                .prefix("pull-")
                .tempfile_in(self.layout().tmp())
                .map_err(|e| Error::io("creating a temp file in", &self.layout().tmp(), e))?;
            let (file, tmp_path) = tmp.into_parts();
            let mut out = tokio::fs::File::from_std(file);
            let mut stream = client
                .pull_blob_stream(&oref, &descriptor(layer))
                .await
                .map_err(|e| fail(format!("fetching layer {}: {}", layer.digest, chain(&e))))?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    fail(format!("downloading layer {}: {}", layer.digest, chain(&e)))
                })?;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io("writing", &tmp_path, e))?;
                done += chunk.len() as u64;
                progress(Progress::Advance {
                    layer: diff_id.clone(),
                    done,
                });
            }
            out.flush()
                .await
                .map_err(|e| Error::io("writing", &tmp_path, e))?;
            drop(out);
            let store = self.clone();
            let (diff_id2, digest, label) = (
                diff_id.clone(),
                layer.digest.clone(),
                format!("{shown} layer {}", layer.digest),
            );
            let unpacked = tokio::task::spawn_blocking(move || {
                let path = tmp_path.to_path_buf();
                let mut open = || -> std::io::Result<Box<dyn Read + Send>> {
                    Ok(Box::new(std::fs::File::open(&path)?))
                };
                let r =
                    store.ensure_layer(&diff_id2, &mut open, Some(&digest), &label, &mut |_| {});
                drop(tmp_path);
                r
            })
            .await
            .map_err(|e| fail(format!("unpacking: {}", chain(&e))))?;
            let size = match unpacked {
                Ok(s) => s.unwrap_or(0),
                Err(e @ Error::DigestMismatch { .. }) => return Err(fail(e.to_string())),
                Err(e) => return Err(e),
            };
            progress(Progress::LayerDone {
                layer: diff_id.clone(),
                size,
            });
        }

        let store = self.clone();
        let names: Vec<String> = r.tagged().into_iter().collect();
        let repos = vec![r.repository()];
        let info = tokio::task::spawn_blocking(move || {
            store.record(
                &config_digest,
                &config,
                &manifest_bytes,
                names,
                repos,
                false,
            )
        })
        .await
        .map_err(|e| fail(format!("recording: {}", chain(&e))))??;
        progress(Progress::Image(info));
        let store = self.clone();
        let key = shown.clone();
        tokio::task::spawn_blocking(move || store.resolve(&key))
            .await
            .map_err(|e| fail(format!("resolving: {}", chain(&e))))??
            .ok_or_else(|| Error::NotFound(shown.clone()))
    }
}

fn descriptor(d: &archive::Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.clone(),
        size: d.size as i64,
        ..OciDescriptor::default()
    }
}
