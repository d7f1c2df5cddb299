use super::GatewayOptions;

pub async fn run(_options: GatewayOptions) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
