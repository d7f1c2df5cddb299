//! The gateway's object runtime: one `libobject::Objects` with the example package, the
//! packages the gateway was started with, and those installed over HTTP (kept in book 0 of
//! the log, so every gateway learns them); `libobject.call`, through which every object call
//! runs, is one of its functions.

use crate::functions::{FunctionConfig, Registry};
use libobject::{Objects, Package, CALL_FUNCTION};
use logbook::{BookId, LogBook, Seqnum};
use std::sync::Arc;
use std::time::Duration;

/// How often a gateway looks for packages other gateways installed.
pub const PACKAGES_REFRESH_EVERY: Duration = Duration::from_secs(1);

/// `libobject.call` waits for the calls queued before its own, so it holds its slot longer
/// than the method runs: many may run at once. A message (`send`) that failed for want of a
/// worker is tried again.
const CALL_CONFIG: FunctionConfig = FunctionConfig {
    max_concurrency: 16_384,
    timeout: Duration::from_secs(300),
    retries: 5,
    backoff: Duration::from_millis(200),
};

/// An object runtime with the example package and `packages` installed (in that order: a
/// package of the same name replaces an earlier one), `libobject.call` and the example
/// classes' methods registered in `registry`.
pub fn objects(registry: &mut Registry, packages: &[Package]) -> Result<Objects, String> {
    let objects = Objects::new();
    objects
        .install(crate::examples::objects::package())
        .map_err(|e| e.to_string())?;
    for package in packages {
        objects
            .install(package.clone())
            .map_err(|e| format!("package {}: {e}", package.name))?;
    }
    crate::examples::objects::register(registry);
    for (name, handler) in libobject::builtin_functions() {
        registry.register(name, move |ctx, input| handler(ctx, input));
    }
    let handler = objects.handler();
    registry.register_with(CALL_FUNCTION, CALL_CONFIG, handler);
    Ok(objects)
}

/// Where a gateway is in book 0's package records.
#[derive(Default)]
pub struct PackageCursor {
    next: tokio::sync::Mutex<Seqnum>,
}

impl PackageCursor {
    /// Installs the packages appended since the last look, in log order; returns how many.
    /// A record that does not install (a class taken by another package) is skipped, as
    /// every gateway skips it.
    pub async fn refresh(
        &self,
        log: &dyn LogBook,
        objects: &Objects,
    ) -> Result<usize, logbook::LogError> {
        let mut next = self.next.lock().await;
        let tag = libobject::packages_tag();
        let mut installed = 0;
        while let Some(record) = log.read_next(BookId(0), tag, *next).await? {
            *next = Seqnum(record.seqnum.0 + 1);
            match Package::from_json(&record.data).and_then(|p| objects.install(p)) {
                Ok(()) => installed += 1,
                Err(e) => tracing::warn!(seqnum = record.seqnum.0, "package record skipped: {e}"),
            }
        }
        Ok(installed)
    }
}

/// Installs packages other gateways installed, every `PACKAGES_REFRESH_EVERY`, until the
/// state is dropped.
pub async fn refresh_packages(state: std::sync::Weak<crate::http::AppState>) {
    loop {
        let Some(s) = state.upgrade() else {
            return;
        };
        if let Err(e) = s.packages.refresh(&*s.log, &s.classes).await {
            tracing::debug!("looking for packages: {e}");
        }
        drop(s);
        tokio::time::sleep(PACKAGES_REFRESH_EVERY).await;
    }
}

/// Shared so the routes and the refresh loop use one cursor.
pub type Packages = Arc<PackageCursor>;
