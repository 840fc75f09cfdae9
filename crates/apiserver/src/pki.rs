//! The cluster's certificates and tokens: a CA, the serving certificate, the admin client
//! certificate and the join token, generated on first start and reused afterwards.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// Where the server keeps its credentials: `<data-dir>/server/tls/` and `<data-dir>/server/token`.
#[derive(Debug, Clone)]
pub struct Pki {
    pub ca_cert_pem: String,
    pub serving_cert_pem: String,
    pub serving_key_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
    /// What the API server presents to kubelets (CN `kube-apiserver-kubelet-client`, group
    /// `system:masters`, as upstream names it).
    pub kubelet_client_cert_pem: String,
    pub kubelet_client_key_pem: String,
    /// The join token agents present as a bearer token.
    pub token: String,
}

const CA_CN: &str = "skiff-ca";

impl Pki {
    /// Loads the credentials under `server_dir`, generating whatever is missing. The serving
    /// certificate names `localhost`, 127.0.0.1, the host name and `extra_sans`.
    pub fn load_or_create(server_dir: &Path, extra_sans: &[String]) -> Result<Pki> {
        let tls = server_dir.join("tls");
        fs::create_dir_all(&tls).with_context(|| format!("creating {}", tls.display()))?;
        let paths = Paths::new(&tls);

        let (ca_cert_pem, ca_key_pem) = match (read(&paths.ca_cert)?, read(&paths.ca_key)?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = generate_ca()?;
                write_secret(&paths.ca_key, &k)?;
                write_public(&paths.ca_cert, &c)?;
                (c, k)
            }
        };
        let ca_key = KeyPair::from_pem(&ca_key_pem).context("parsing the CA key")?;
        let issuer =
            Issuer::from_ca_cert_pem(&ca_cert_pem, ca_key).context("parsing the CA certificate")?;

        let (serving_cert_pem, serving_key_pem) =
            match (read(&paths.serving_cert)?, read(&paths.serving_key)?) {
                (Some(c), Some(k)) if serving_covers(&c, extra_sans) => (c, k),
                _ => {
                    let (c, k) = issue_serving(&issuer, extra_sans)?;
                    write_secret(&paths.serving_key, &k)?;
                    write_public(&paths.serving_cert, &c)?;
                    (c, k)
                }
            };
        let (admin_cert_pem, admin_key_pem) =
            match (read(&paths.admin_cert)?, read(&paths.admin_key)?) {
                (Some(c), Some(k)) => (c, k),
                _ => {
                    let (c, k) = issue_client(&issuer, "system:admin", &["system:masters"])?;
                    write_secret(&paths.admin_key, &k)?;
                    write_public(&paths.admin_cert, &c)?;
                    (c, k)
                }
            };

        let (kubelet_client_cert_pem, kubelet_client_key_pem) = match (
            read(&paths.kubelet_client_cert)?,
            read(&paths.kubelet_client_key)?,
        ) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let (c, k) = issue_client(
                    &issuer,
                    "kube-apiserver-kubelet-client",
                    &["system:masters"],
                )?;
                write_secret(&paths.kubelet_client_key, &k)?;
                write_public(&paths.kubelet_client_cert, &c)?;
                (c, k)
            }
        };

        // The token names the CA by its hash so an agent can trust what `/cacerts` serves
        // (k3s's format). An existing token keeps its secret: an old plain-hex token becomes
        // the secret, and a token naming another CA (regenerated) is rewritten with this one.
        let token_path = server_dir.join("token");
        let existing = read(&token_path)?
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        let secret = match existing.as_deref() {
            Some(t) => token_secret(t).to_string(),
            None => new_token(),
        };
        let token = format!("K10{}::server:{secret}", ca_hash(&ca_cert_pem));
        if existing.as_deref() != Some(token.as_str()) {
            write_secret(&token_path, &format!("{token}\n"))?;
        }
        Ok(Pki {
            ca_cert_pem,
            serving_cert_pem,
            serving_key_pem,
            admin_cert_pem,
            admin_key_pem,
            kubelet_client_cert_pem,
            kubelet_client_key_pem,
            token,
        })
    }

    /// A kubeconfig for the admin user that reaches the server at `server_url`.
    pub fn admin_kubeconfig(&self, server_url: &str) -> String {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: skiff\n  cluster:\n    server: {server_url}\n    certificate-authority-data: {}\nusers:\n- name: skiff-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: skiff\n  context:\n    cluster: skiff\n    user: skiff-admin\ncurrent-context: skiff\npreferences: {{}}\n",
            b64(&self.ca_cert_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem),
        )
    }
}

struct Paths {
    ca_cert: PathBuf,
    ca_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        Paths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            serving_cert: dir.join("serving.crt"),
            serving_key: dir.join("serving.key"),
            admin_cert: dir.join("admin.crt"),
            admin_key: dir.join("admin.key"),
            kubelet_client_cert: dir.join("kubelet-client.crt"),
            kubelet_client_key: dir.join("kubelet-client.key"),
        }
    }
}

fn read(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes a file readable only by its owner, atomically (a crash never leaves half a key).
fn write_secret(path: &Path, contents: &str) -> Result<()> {
    write_atomic(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &str) -> Result<()> {
    write_atomic(path, contents, 0o644)
}

fn write_atomic(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// The SHA-256 of the CA certificate PEM as lowercase hex: what a `K10` token pins.
pub fn ca_hash(ca_cert_pem: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, ca_cert_pem.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The secret part of a join token: `K10<hash>::<user>:<secret>` gives `<secret>`; anything
/// else (a plain secret) is the secret itself.
pub fn token_secret(token: &str) -> &str {
    token
        .strip_prefix("K10")
        .and_then(|rest| rest.split_once("::"))
        .map(|(_, creds)| creds.split_once(':').map_or(creds, |(_, secret)| secret))
        .unwrap_or(token)
}

fn new_token() -> String {
    let mut bytes = [0u8; 24];
    rand::rng().fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, cn);
    dn
}

/// Valid from today (midnight UTC, so a slightly slow clock elsewhere still accepts it) for
/// `years` years.
fn validity(params: &mut CertificateParams, years: i32) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let (y, m, d) = (
        i32::from(today.year()),
        today.month() as u8,
        today.day() as u8,
    );
    params.not_before = rcgen::date_time_ymd(y, m, d);
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

fn generate_ca() -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating the CA key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(CA_CN, &[]);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 10);
    let cert = params
        .self_signed(&key)
        .context("signing the CA certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn serving_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    for e in extra {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    names
}

/// Whether an existing serving certificate already names every requested address.
fn serving_covers(cert_pem: &str, extra: &[String]) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let have: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            x509_parser::extensions::GeneralName::IPAddress(ip) => match ip.len() {
                4 => Some(std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]).to_string()),
                16 => <[u8; 16]>::try_from(*ip)
                    .ok()
                    .map(|b| std::net::Ipv6Addr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    extra.iter().all(|e| have.contains(e))
}

fn issue_serving(issuer: &Issuer<'_, KeyPair>, extra: &[String]) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating the serving key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn("kube-apiserver", &[]);
    params.subject_alt_names = serving_names(extra)
        .into_iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n.try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()
        .context("building the serving certificate's names")?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, 10);
    let cert = params
        .signed_by(&key, issuer)
        .context("signing the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate: the common name is the user, organizations are its groups.
pub fn issue_client(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a client key")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(user, groups);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    validity(&mut params, 10);
    let cert = params
        .signed_by(&key, issuer)
        .context("signing a client certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = Pki::load_or_create(dir.path(), &[]).unwrap();
        let b = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(a.ca_cert_pem, b.ca_cert_pem);
        assert_eq!(a.serving_cert_pem, b.serving_cert_pem);
        assert_eq!(a.token, b.token);
        assert_eq!(a.kubelet_client_cert_pem, b.kubelet_client_cert_pem);
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(a.kubelet_client_cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let subject = cert.subject().to_string();
        assert!(
            subject.contains("CN=kube-apiserver-kubelet-client"),
            "{subject}"
        );
        assert!(subject.contains("O=system:masters"), "{subject}");
        assert_eq!(
            a.token,
            format!(
                "K10{}::server:{}",
                ca_hash(&a.ca_cert_pem),
                token_secret(&a.token)
            )
        );
        assert_eq!(token_secret(&a.token).len(), 48);
        let mode = fs::metadata(dir.path().join("tls/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A new address forces a new serving certificate under the same CA.
        let c = Pki::load_or_create(dir.path(), &["10.1.2.3".to_string()]).unwrap();
        assert_eq!(a.ca_cert_pem, c.ca_cert_pem);
        assert_ne!(a.serving_cert_pem, c.serving_cert_pem);
    }

    #[test]
    fn old_plain_token_becomes_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("token"), "abc123\n").unwrap();
        let a = Pki::load_or_create(dir.path(), &[]).unwrap();
        assert_eq!(
            a.token,
            format!("K10{}::server:abc123", ca_hash(&a.ca_cert_pem))
        );
        let on_disk = fs::read_to_string(dir.path().join("token")).unwrap();
        assert_eq!(on_disk.trim(), a.token);
        assert_eq!(token_secret("plain"), "plain");
        assert_eq!(token_secret("K10ab::node:s3cret"), "s3cret");
    }
}
