//! `tally cert`: a certificate authority of one's own and the certificates of nodes it signs,
//! for HTTPS on a test cluster or a private network. `ca` makes `ca.pem` and `ca-key.pem` in a
//! directory; `node NAME` makes `NAME.pem` (the node's certificate, then the CA's) and
//! `NAME-key.pem`, valid for the host names and addresses given. Keys are written readable by
//! their owner only, and nothing is overwritten.

use anyhow::{bail, Context as _};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};

/// The files of a CA in `dir`.
pub fn ca_files(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

/// The files of node `name` in `dir`.
pub fn node_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// Makes a CA in `dir` (created if need be); its certificate's path.
pub fn make_ca(dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let (cert_path, key_path) = ca_files(dir);
    refuse_existing(&[&cert_path, &key_path])?;
    let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().context("generating the CA's key")?;
    let cert = params.self_signed(&key).context("signing the CA")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok(cert_path)
}

/// Makes node `name`'s certificate for `hosts` (names or IP addresses), signed by the CA in
/// `dir`; its certificate's path.
pub fn make_node(dir: &Path, name: &str, hosts: &[String]) -> anyhow::Result<PathBuf> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("a node's name is letters, digits, '-' and '_': {name:?}");
    }
    if hosts.is_empty() {
        bail!("a node certificate names at least one host (--host)");
    }
    let (ca_cert_path, ca_key_path) = ca_files(dir);
    let read = |path: &Path| {
        std::fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (make the CA first: tally cert ca --dir DIR)",
                path.display()
            )
        })
    };
    let ca_pem = read(&ca_cert_path)?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)
        .with_context(|| format!("{}: not a private key", ca_key_path.display()))?;
    // The CA as an issuer: its own parameters, signed again by its own key (the same name and
    // key, so what it signs verifies against the CA file).
    let ca = CertificateParams::from_ca_cert_pem(&ca_pem)
        .with_context(|| format!("{}: not a CA certificate", ca_cert_path.display()))?
        .self_signed(&ca_key)
        .context("loading the CA")?;
    let (cert_path, key_path) = node_files(dir, name);
    refuse_existing(&[&cert_path, &key_path])?;
    let mut params =
        CertificateParams::new(hosts.to_vec()).with_context(|| format!("host names {hosts:?}"))?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().context("generating the node's key")?;
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .context("signing the node's certificate")?;
    write(&cert_path, &format!("{}{}", cert.pem(), ca_pem), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok(cert_path)
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    if let Some(existing) = paths.iter().find(|p| p.exists()) {
        bail!(
            "{} exists; remove it first to make a new one",
            existing.display()
        );
    }
    Ok(())
}

fn write(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_is_signed_by_the_ca_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca(dir.path(), "test CA").unwrap();
        let node = make_node(dir.path(), "gw", &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let chain = std::fs::read_to_string(&node).unwrap();
        assert_eq!(
            chain.matches("BEGIN CERTIFICATE").count(),
            2,
            "the node's, then the CA's"
        );
        assert!(chain.ends_with(&std::fs::read_to_string(&ca).unwrap()));
        let key = node_files(dir.path(), "gw").1;
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(make_ca(dir.path(), "again").is_err());
        assert!(make_node(dir.path(), "gw", &["localhost".into()]).is_err());
        assert!(make_node(dir.path(), "bad/name", &["localhost".into()]).is_err());
        assert!(make_node(dir.path(), "none", &[]).is_err());
        let other = tempfile::tempdir().unwrap();
        assert!(
            make_node(other.path(), "gw", &["localhost".into()]).is_err(),
            "no CA there"
        );
    }
}
