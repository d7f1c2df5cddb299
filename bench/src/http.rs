//! What every HTTP client of Tally starts from, the benchmarks' and the CLI's: it sends an API
//! token with each request, if given, and reaches https:// gateways trusting a CA alone, if
//! given. The benchmarks take them from `TALLY_TOKEN` and `TALLY_CA` (a PEM file), as the CLI
//! does by default.

use anyhow::Context;
use std::path::Path;

/// A client builder sending `token` (`Authorization: Bearer`) and trusting the CA certificate
/// at `ca` (PEM) alone, each if given.
pub fn client_builder_for(
    token: Option<&str>,
    ca: Option<&Path>,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .context("the token holds characters an HTTP header cannot carry")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(path) = ca {
        let pem = std::fs::read(path)
            .with_context(|| format!("reading the CA certificate {}", path.display()))?;
        let ca = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("{}: not a PEM certificate", path.display()))?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    Ok(builder)
}

/// `client_builder_for` with `TALLY_TOKEN` and `TALLY_CA`, when set.
pub(crate) fn client_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let token = std::env::var("TALLY_TOKEN").ok().filter(|t| !t.is_empty());
    let ca = std::env::var_os("TALLY_CA").filter(|p| !p.is_empty());
    client_builder_for(token.as_deref(), ca.as_deref().map(Path::new))
        .context("TALLY_TOKEN or TALLY_CA")
}
