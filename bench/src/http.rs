//! What every benchmark's HTTP client to Tally starts from: with `TALLY_TOKEN` set it sends
//! that API token with each request, and with `TALLY_CA` (a PEM file) it reaches https://
//! gateways trusting that CA alone, as the CLI does.

use anyhow::Context;

pub(crate) fn client_builder() -> anyhow::Result<reqwest::ClientBuilder> {
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(token) = std::env::var("TALLY_TOKEN").ok().filter(|t| !t.is_empty()) {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .context("TALLY_TOKEN is not a valid header value")?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        builder = builder.default_headers(headers);
    }
    if let Some(path) = std::env::var_os("TALLY_CA").filter(|p| !p.is_empty()) {
        let pem = std::fs::read(&path)
            .with_context(|| format!("reading TALLY_CA ({})", path.to_string_lossy()))?;
        let ca = reqwest::Certificate::from_pem(&pem).with_context(|| {
            format!(
                "TALLY_CA ({}) is not a PEM certificate",
                path.to_string_lossy()
            )
        })?;
        builder = builder
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
    }
    Ok(builder)
}
