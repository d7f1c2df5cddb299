use super::StorageOptions;

pub async fn run(_options: StorageOptions) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
