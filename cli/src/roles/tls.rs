//! Mutual TLS between a cluster's roles. A node file's `[tls]` section names the node's
//! certificate, its key and the cluster's CA (`tally cert`); once installed for the process,
//! every gRPC server of its roles asks each client for a certificate the CA signed, and every
//! channel it dials (`super::channel`) presents its own and trusts only that CA. A gateway
//! then serves HTTPS with the same certificate, and forwards calls to its peers over HTTPS.
//! Without `[tls]`, roles speak plain gRPC, as on a trusted network.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use tonic::transport::ClientTlsConfig;

/// A node's certificate and key, and the CA that signs every node's: read once, as its
/// servers and its channels use them.
#[derive(Clone)]
pub struct RoleTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// Its gRPC servers' settings: its certificate, a client certificate of the CA required.
    server: std::sync::Arc<tokio_rustls::rustls::ServerConfig>,
    /// What its channels show and trust.
    client: logbook::rpc::ClientTls,
    ca_pem: String,
}

impl std::fmt::Debug for RoleTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The files, never the key's text.
        f.debug_struct("RoleTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

static INSTALLED: OnceLock<RoleTls> = OnceLock::new();

impl RoleTls {
    /// Reads the three PEM files; refuses a key that is not the certificate's and a CA file
    /// without a certificate.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> anyhow::Result<RoleTls> {
        let read = |path: &Path, what: &str| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the {what} {}", path.display()))
        };
        let (cert_pem, key_pem, ca_pem) = (
            read(cert, "certificate")?,
            read(key, "key")?,
            read(ca, "CA certificate")?,
        );
        // It also checks that the chain parses, the key is its, and the CA file holds CA
        // certificates.
        let server = ::gateway::serve::tls_server_config(cert, key, Some(ca), &[b"h2"])?;
        Ok(RoleTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            ca: ca.to_path_buf(),
            server,
            client: logbook::rpc::ClientTls::new(&ca_pem, &cert_pem, &key_pem),
            ca_pem,
        })
    }

    /// What a gRPC server of this node accepts connections with (`local::incoming`): its
    /// certificate, and a client certificate required, signed by the CA.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.clone())
    }

    /// What a channel this node dials presents (its certificate) and trusts (the CA alone).
    pub fn client(&self) -> ClientTlsConfig {
        self.client.config()
    }

    /// The CA as an HTTP client trusts it (a gateway forwarding to its peers over HTTPS).
    pub fn http_root(&self) -> anyhow::Result<reqwest::Certificate> {
        reqwest::Certificate::from_pem(self.ca_pem.as_bytes())
            .with_context(|| format!("{}: not a PEM certificate", self.ca.display()))
    }
}

/// Makes `tls` this process's: every role of it serves and dials with it. A process installs
/// one; installing another is refused (the roles of one `tally node` share its `[tls]`).
pub fn install(tls: RoleTls) -> anyhow::Result<()> {
    let files = |t: &RoleTls| (t.cert.clone(), t.key.clone(), t.ca.clone());
    let installed = INSTALLED.get_or_init(|| tls.clone());
    if files(installed) != files(&tls) {
        bail!(
            "this process already serves with {}; one process has one certificate",
            installed.cert.display()
        );
    }
    Ok(())
}

/// This process's TLS, if installed.
pub fn installed() -> Option<&'static RoleTls> {
    INSTALLED.get()
}
