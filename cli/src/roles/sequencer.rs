use super::SequencerOptions;

pub async fn run(_options: SequencerOptions) -> anyhow::Result<()> {
    anyhow::bail!("not built yet")
}
