//! Reading image tarballs: compression detected by magic bytes, the outer tar indexed by file
//! offsets, and the two layouts understood: OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) and docker-archive (`docker save`: `manifest.json`, `<id>.json`, layer tars).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::digest::sha256_hex;
use super::reference::{Reference, is_sha256_hex};
use super::{Error, Result};

/// How a stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Looks at the first bytes of `r` without consuming them.
pub fn detect(r: &mut impl BufRead, input: &str) -> Result<Compression> {
    let head = r
        .fill_buf()
        .map_err(|e| Error::io("reading", Path::new(input), e))?;
    let unsupported = |what: &str| Error::Unsupported {
        input: input.to_string(),
        reason: format!("{what} compression is not supported (plain, gzip or zstd)"),
    };
    Ok(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'B', b'Z', b'h', ..] => return Err(unsupported("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => return Err(unsupported("xz")),
        _ => Compression::None,
    })
}

/// Wraps `r` in the decompressor its magic bytes call for.
pub fn decompress<'a>(r: impl BufRead + 'a, input: &str) -> Result<Box<dyn Read + 'a>> {
    let mut r = r;
    Ok(match detect(&mut r, input)? {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(r)
                .map_err(|e| Error::io("starting zstd on", Path::new(input), e))?,
        ),
    })
}

/// The regular files of a plain (uncompressed) tar, by normalized name, read in place.
pub struct TarIndex {
    path: PathBuf,
    files: HashMap<String, (u64, u64)>,
}

impl TarIndex {
    pub fn build(path: &Path, display: &str) -> Result<TarIndex> {
        let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
        let bad = |e: io::Error| Error::Invalid {
            input: display.to_string(),
            reason: format!("not a tar archive: {e}"),
        };
        let mut archive = tar::Archive::new(file);
        let mut files = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            if !matches!(
                entry.header().entry_type(),
                tar::EntryType::Regular | tar::EntryType::Continuous
            ) {
                continue;
            }
            let name = normalize(&entry.path_bytes());
            files.insert(name, (entry.raw_file_position(), entry.size()));
        }
        if files.is_empty() {
            return Err(Error::Unsupported {
                input: display.to_string(),
                reason: "not an image archive (no files in it)".into(),
            });
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            files,
        })
    }

    pub fn size(&self, name: &str) -> Option<u64> {
        self.files.get(name).map(|(_, s)| *s)
    }

    /// A reader over the file `name` inside the archive.
    pub fn open(&self, name: &str) -> Option<io::Result<io::Take<File>>> {
        let (off, size) = *self.files.get(name)?;
        Some((|| {
            let mut f = File::open(&self.path)?;
            f.seek(SeekFrom::Start(off))?;
            Ok(f.take(size))
        })())
    }

    /// Reads a small file (manifest, config) whole; at most 16 MiB.
    pub fn read_small(&self, name: &str, display: &str) -> Result<Vec<u8>> {
        let size = self.size(name).ok_or_else(|| Error::Invalid {
            input: display.to_string(),
            reason: format!("{name} is missing"),
        })?;
        if size > 16 << 20 {
            return Err(Error::Invalid {
                input: display.to_string(),
                reason: format!("{name} is {size} bytes, too large for metadata"),
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open(name)
            .expect("present: size was found")
            .and_then(|mut r| r.read_to_end(&mut buf))
            .map_err(|e| Error::io("reading", &self.path, e))?;
        Ok(buf)
    }
}

fn normalize(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    s.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// One image found in an archive, not yet verified against its blobs' contents.
#[derive(Debug)]
pub struct FoundImage {
    pub names: Vec<String>,
    /// The manifest as stored (OCI) or synthesized (docker-archive).
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    /// `sha256:<hex>` of `config`, checked.
    pub config_digest: String,
    pub layers: Vec<FoundLayer>,
}

#[derive(Debug)]
pub struct FoundLayer {
    /// File name inside the archive.
    pub file: String,
    /// Bytes of the blob in the archive.
    pub size: u64,
    /// The digest the blob must have, when the layout names one (OCI).
    pub digest: Option<String>,
    /// `sha256:<hex>` of the uncompressed tar, from the config.
    pub diff_id: String,
}

#[derive(Deserialize)]
struct OciIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub annotations: HashMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

#[derive(Deserialize)]
struct ConfigRootfs {
    rootfs: Rootfs,
}

#[derive(Deserialize)]
struct Rootfs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

pub const MANIFEST_OCI: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MANIFEST_DOCKER: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const INDEX_OCI: &str = "application/vnd.oci.image.index.v1+json";
pub const INDEX_DOCKER: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// This machine's architecture as OCI names it.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// The images described by the archive indexed in `tar`.
pub fn find_images(tar: &TarIndex, display: &str) -> Result<Vec<FoundImage>> {
    if tar.size("index.json").is_some() {
        oci_images(tar, display)
    } else if tar.size("manifest.json").is_some() {
        docker_images(tar, display)
    } else {
        Err(Error::Unsupported {
            input: display.to_string(),
            reason: "neither an OCI image layout (index.json) nor a docker archive (manifest.json)"
                .into(),
        })
    }
}

fn invalid(display: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        input: display.to_string(),
        reason: reason.into(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str, display: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| invalid(display, format!("{what}: {e}")))
}

/// `blobs/sha256/<hex>` for a digest, refusing anything else (a digest names a file).
fn blob_path(digest: &str, display: &str) -> Result<String> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if is_sha256_hex(hex) => Ok(format!("blobs/sha256/{hex}")),
        _ if digest.contains(':') && !digest.starts_with("sha256:") => Err(Error::Unsupported {
            input: display.to_string(),
            reason: format!("digest algorithm of {digest} (only sha256)"),
        }),
        _ => Err(invalid(display, format!("malformed digest {digest:?}"))),
    }
}

/// Reads a blob named by a descriptor and checks its digest.
fn read_blob(tar: &TarIndex, digest: &str, display: &str) -> Result<Vec<u8>> {
    let data = tar.read_small(&blob_path(digest, display)?, display)?;
    let actual = format!("sha256:{}", sha256_hex(&data));
    if actual != digest {
        return Err(Error::DigestMismatch {
            what: format!("blob {digest} in {display}"),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(data)
}

fn oci_images(tar: &TarIndex, display: &str) -> Result<Vec<FoundImage>> {
    let index: OciIndex = parse(
        &tar.read_small("index.json", display)?,
        "index.json",
        display,
    )?;
    let mut out = Vec::new();
    for desc in index.manifests {
        let names = name_from_annotations(&desc.annotations);
        let manifest_desc = select_manifest(tar, desc, display, 0)?;
        let manifest = read_blob(tar, &manifest_desc.digest, display)?;
        let m: Manifest = parse(&manifest, "manifest", display)?;
        let config = read_blob(tar, &m.config.digest, display)?;
        let diff_ids = diff_ids(&config, display)?;
        if diff_ids.len() != m.layers.len() {
            return Err(invalid(
                display,
                format!(
                    "manifest {} has {} layers but its config lists {} diff_ids",
                    manifest_desc.digest,
                    m.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in m.layers.iter().zip(diff_ids) {
            let file = blob_path(&l.digest, display)?;
            let size = tar
                .size(&file)
                .ok_or_else(|| invalid(display, format!("layer blob {} is missing", l.digest)))?;
            layers.push(FoundLayer {
                file,
                size,
                digest: Some(l.digest.clone()),
                diff_id,
            });
        }
        out.push(FoundImage {
            names,
            manifest,
            config_digest: m.config.digest.clone(),
            config,
            layers,
        });
    }
    if out.is_empty() {
        return Err(invalid(display, "index.json lists no images"));
    }
    Ok(out)
}

/// Follows nested indexes down to the manifest for this machine's platform.
fn select_manifest(
    tar: &TarIndex,
    desc: Descriptor,
    display: &str,
    depth: u32,
) -> Result<Descriptor> {
    let is_index = match desc.media_type.as_str() {
        INDEX_OCI | INDEX_DOCKER => true,
        MANIFEST_OCI | MANIFEST_DOCKER => false,
        "" => {
            let blob = read_blob(tar, &desc.digest, display)?;
            let v: serde_json::Value = parse(&blob, "manifest", display)?;
            v.get("manifests").is_some()
        }
        other => {
            return Err(Error::Unsupported {
                input: display.to_string(),
                reason: format!("manifest media type {other}"),
            });
        }
    };
    if !is_index {
        return Ok(desc);
    }
    if depth >= 4 {
        return Err(invalid(display, "image indexes nested too deep"));
    }
    let blob = read_blob(tar, &desc.digest, display)?;
    let index: OciIndex = parse(&blob, "image index", display)?;
    let arch = oci_arch();
    let found = index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    });
    // An index without platforms (a single image wrapped in an index) is taken as it is.
    let found = found.or_else(|| {
        (index.manifests.len() == 1 && index.manifests[0].platform.is_none())
            .then(|| &index.manifests[0])
    });
    match found {
        Some(m) => select_manifest(tar, m.clone(), display, depth + 1),
        None => Err(Error::Unsupported {
            input: display.to_string(),
            reason: format!("image index {} has no linux/{arch} image", desc.digest),
        }),
    }
}

fn name_from_annotations(a: &HashMap<String, String>) -> Vec<String> {
    let containerd = a.get("io.containerd.image.name");
    // `ref.name` is often a bare tag ("latest"), which names no repository: only a full
    // reference (with '/' or ':') is taken as a name; otherwise the image stays unnamed.
    let oci = a
        .get("org.opencontainers.image.ref.name")
        .filter(|v| v.contains('/') || v.contains(':'));
    containerd
        .into_iter()
        .chain(oci)
        .find_map(|v| Reference::parse(v).ok()?.tagged())
        .into_iter()
        .collect()
}

fn diff_ids(config: &[u8], display: &str) -> Result<Vec<String>> {
    let c: ConfigRootfs = parse(config, "image config", display)?;
    for d in &c.rootfs.diff_ids {
        match d.strip_prefix("sha256:") {
            Some(hex) if is_sha256_hex(hex) => {}
            _ => {
                return Err(invalid(
                    display,
                    format!("config has a malformed diff_id {d:?}"),
                ));
            }
        }
    }
    Ok(c.rootfs.diff_ids)
}

fn docker_images(tar: &TarIndex, display: &str) -> Result<Vec<FoundImage>> {
    let entries: Vec<DockerEntry> = parse(
        &tar.read_small("manifest.json", display)?,
        "manifest.json",
        display,
    )?;
    let mut out = Vec::new();
    for e in entries {
        let config_file = normalize(e.config.as_bytes());
        let config = tar.read_small(&config_file, display)?;
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        // The file is named after its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        let stem = config_file.rsplit('/').next().unwrap_or("");
        let stem = stem.strip_suffix(".json").unwrap_or(stem);
        if is_sha256_hex(stem) && config_digest != format!("sha256:{stem}") {
            return Err(Error::DigestMismatch {
                what: format!("config {config_file} in {display}"),
                expected: format!("sha256:{stem}"),
                actual: config_digest,
            });
        }
        let diff_ids = diff_ids(&config, display)?;
        if diff_ids.len() != e.layers.len() {
            return Err(invalid(
                display,
                format!(
                    "manifest.json lists {} layers but the config has {} diff_ids",
                    e.layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        let mut layers = Vec::new();
        let mut descs = Vec::new();
        for (file, diff_id) in e.layers.iter().zip(diff_ids) {
            let file = normalize(file.as_bytes());
            let size = tar
                .size(&file)
                .ok_or_else(|| invalid(display, format!("layer {file} is missing")))?;
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": diff_id,
                "size": size,
            }));
            layers.push(FoundLayer {
                file,
                size,
                digest: None,
                diff_id,
            });
        }
        // docker-archive has no manifest; the one we keep is synthesized, deterministically.
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_OCI,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": descs,
        }))
        .map_err(|e| invalid(display, e.to_string()))?;
        let mut names = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            match Reference::parse(&t).ok().and_then(|r| r.tagged()) {
                Some(n) => names.push(n),
                None => {
                    let input = display.to_string();
                    tracing::warn!(tag = %t, %input, "ignoring an invalid RepoTag")
                }
            }
        }
        out.push(FoundImage {
            names,
            manifest,
            config,
            config_digest,
            layers,
        });
    }
    if out.is_empty() {
        return Err(invalid(display, "manifest.json lists no images"));
    }
    Ok(out)
}

/// Opens `path`, decompressing it into a temporary plain tar under `tmp_dir` when it is
/// compressed. Returns the plain tar's path and the temp file to drop afterwards.
pub fn plain_tar(
    path: &Path,
    tmp_dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(PathBuf, Option<tempfile::TempPath>)> {
    let display = path.display().to_string();
    let file = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut r = BufReader::with_capacity(256 * 1024, file);
    if detect(&mut r, &display)? == Compression::None {
        return Ok((path.to_path_buf(), None));
    }
    let tmp = tempfile::Builder::new()
        .prefix("import-")
        .suffix(".tar")
        .tempfile_in(tmp_dir)
        .map_err(|e| Error::io("creating a temp file in", tmp_dir, e))?;
    let counting = super::digest::Counting::new(r, |n| progress(n, total));
    let mut dec = decompress(BufReader::with_capacity(256 * 1024, counting), &display)?;
    let (f, tmp_path) = tmp.into_parts();
    let mut w = io::BufWriter::with_capacity(256 * 1024, f);
    io::copy(&mut dec, &mut w).map_err(|e| Error::Invalid {
        input: display.clone(),
        reason: format!("decompressing: {e}"),
    })?;
    drop(w);
    Ok((tmp_path.to_path_buf(), Some(tmp_path)))
}
