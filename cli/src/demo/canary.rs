//! The default act of `cutover demo`: two releases of a sample web
//! service, the good one rolled out everywhere, then one whose health
//! check fails, stopped at the canary and rolled back.

use std::path::Path;

use super::{apply_fleet, publish, Started};
use crate::client::ConnectArgs;
use crate::error::{Error, Result};
use crate::output::Format;

/// Builds, signs and imports a release of the sample service.
async fn sample_release(
    dir: &Path,
    connect: &ConnectArgs,
    binary: &[u8],
    version: &str,
    healthy: bool,
) -> Result<()> {
    let service = crate::bundle::Service {
        name: "web".into(),
        service_version: version.strip_suffix(".0").unwrap_or(version).into(),
        depends_on: vec![],
        databases: Vec::new(),
        data_migrations: Vec::new(),
        files: crate::bundle::sample_files(binary, version, healthy),
    };
    let bundle = crate::bundle::bundle(version, &[service], &Default::default(), &[])?;
    publish(dir, connect, version, &bundle).await
}

/// The main act: a good release rolled out, a bad one stopped at the canary.
pub(super) async fn rollouts(dir: &Path, started: &Started) -> Result<()> {
    use crate::commands::{fleet, rollout};
    let connect = &started.connect;
    let binary =
        std::fs::read(&started.sample_bin).map_err(|e| Error::io(&started.sample_bin, e))?;
    apply_fleet(dir, started, "web", "").await?;

    println!("\n$ cutover release import  (web 1.0, healthy; web 1.1, fails its health check)");
    sample_release(dir, connect, &binary, "1.0.0", true).await?;
    sample_release(dir, connect, &binary, "1.1.0", false).await?;

    let target = |version: &str| rollout::PlanArgs {
        services: vec!["web".into()],
        version: version.into(),
        allow_offline: false,
    };
    println!("\n$ cutover plan web --version 1.0.0");
    rollout::plan(connect, &target("1.0.0"), Format::Text).await?;
    println!("\n$ cutover upgrade web --version 1.0.0 --yes --wait");
    let upgrade = |version: &str| rollout::UpgradeArgs {
        plan: target(version),
        dry_run: false,
        yes: true,
        no_rollback: false,
        wait: true,
    };
    rollout::upgrade(connect, upgrade("1.0.0"), Format::Text).await?;

    println!("\n$ cutover upgrade web --version 1.1.0 --yes --wait");
    match rollout::upgrade(connect, upgrade("1.1.0"), Format::Text).await {
        Err(Error::Failed(why)) => println!("demo: as expected, {why}"),
        Ok(()) => return Err(Error::Failed("the failing release was not stopped".into())),
        Err(e) => return Err(e),
    }
    println!("\n$ cutover status");
    fleet::status(connect, Format::Text).await?;
    println!("\n$ cutover rollout show 2");
    rollout::show(connect, 2, Format::Text).await?;
    println!("\n$ cutover diag edge-1");
    fleet::diag(connect, "edge-1", Format::Text).await?;
    Ok(())
}
