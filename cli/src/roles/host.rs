//! `tally node`: one process hosting several roles of a cluster (a sequencer member, a storage
//! node, a gateway), each run as `tally <role>` runs it, with their calls to each other going
//! through memory (`local`) instead of loopback TCP. The shape of a 3-server JetStream or a
//! KRaft-combined Kafka: three such processes make a cluster.

use super::local;
use crate::config::RoleOptions;
use anyhow::Context as _;

/// Runs every role in `roles` (each with the address the cluster dials it at) until one of
/// them stops; its error is the node's.
pub async fn run(roles: Vec<(RoleOptions, Option<String>)>) -> anyhow::Result<()> {
    // Before any role dials: a neighbour's channel must be the in-memory one from the start.
    for (options, dialled) in &roles {
        let listen = match options {
            RoleOptions::Sequencer(o) => o.listen,
            RoleOptions::Storage(o) => o.listen,
            RoleOptions::Gateway(_) => continue,
        };
        local::host(&listen.to_string(), dialled.as_slice());
    }
    let mut running = tokio::task::JoinSet::new();
    for (options, _) in roles {
        running.spawn(async move {
            let (name, result) = match options {
                RoleOptions::Sequencer(o) => (
                    format!("sequencer {}", o.id.0),
                    super::sequencer::run(o).await,
                ),
                RoleOptions::Storage(o) => {
                    (format!("storage {}", o.id.0), super::storage::run(o).await)
                }
                RoleOptions::Gateway(o) => {
                    (format!("gateway {}", o.id.0), super::gateway::run(o).await)
                }
            };
            (name, result)
        });
    }
    let (name, result) = running
        .join_next()
        .await
        .context("the node hosts no role")?
        .context("a role panicked")?;
    result.with_context(|| format!("{name} stopped"))?;
    anyhow::bail!("{name} stopped serving")
}
