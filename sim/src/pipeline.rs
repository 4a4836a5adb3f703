//! Benchmarks of one host rather than the fleet: the agent's install
//! pipeline against `sha256sum` + `tar xzf` of the same file, its SHA-256
//! (ring) against sha2 and `openssl speed`, and a real idle agent's memory and the release
//! binaries' sizes.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover_agent::identity::Identity;
use cutover_cli::bundle;

use crate::host::Behaviour;
use crate::lab::Lab;
use crate::swarm::{self, Result, Swarm};

const MIB: f64 = 1024.0 * 1024.0;

/// Fetch from the controller + verify + unpack, through the agent's own
/// one-pass pipeline, of a tarball of about `mb` MiB; then `sha256sum` and
/// `tar xzf` of that file.
/// Both sides read warm from the page cache.
pub async fn pipeline(lab: &Lab, mb: usize) -> Result<()> {
    swarm::enroll(&lab.setup, &swarm::names(1), 1).await?;
    // The patch number changes whenever the payload recipe does.
    let version = format!("9.{mb}.2");
    let dir = lab.dir.join(format!("release-{version}"));
    let manifest = dir.join(format!("release-{version}.toml"));
    if !manifest.exists() {
        let service = bundle::Service {
            name: "payload".into(),
            service_version: version.clone(),
            depends_on: vec![],
            databases: Vec::new(),
            data_migrations: Vec::new(),
            // Half noise, half text: the tarball comes out at about 60 %.
            files: payload((mb << 20) * 5 / 3),
        };
        lab.publish(&version, &[service])?;
    } else {
        // Written and signed by an earlier run; the controller's store
        // may be newer than the files.
        lab.cli(&["release", "import", &manifest.display().to_string()])?;
    }
    let tarball = dir.join(format!("payload-{version}.tar.gz"));
    let (sha, size) = cutover_core::digest::hash_file(&tarball).map_err(|e| e.to_string())?;

    let host = &swarm::names(1)[0];
    // The controller serves a host only what an install command sent on its
    // session names: roll the release out to one simulated host (which
    // reports success without fetching), then fetch as its agent would.
    let swarm = grant(lab, host, &version).await?;
    let data = lab.dir.join("pipeline-agent");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    let config = lab.setup.config(host)?;
    let identity = Identity::load(&config.data_dir)
        .map_err(|e| e.to_string())?
        .ok_or("sim host not enrolled")?;
    let source = cutover_agent::session::ControllerSource::new(&config, identity)
        .map_err(|e| e.to_string())?;
    // Both sides read the same bytes warm from the page cache: the
    // controller its stored copy, the tools the local one.
    let limits = cutover_agent::extract::Limits {
        max_bytes: 64 << 30,
        max_entries: 1_000_000,
    };
    let t = Instant::now();
    let (_, unpacked) = cutover_agent::pipeline::fetch_and_unpack(
        &source,
        &data,
        &sha,
        size,
        &data.join("unpacked"),
        limits,
    )
    .await
    .map_err(|e| format!("{}: {}", e.gate, e.detail))?;
    let agent = t.elapsed();
    swarm.stop().await;

    let tools = data.join("tools");
    std::fs::create_dir_all(&tools).map_err(|e| e.to_string())?;
    let t = Instant::now();
    run(Command::new("sha256sum").arg(&tarball))?;
    run(Command::new("tar")
        .arg("xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(&tools))?;
    let baseline = t.elapsed();
    println!(
        "install pipeline {:.0} MiB tarball ({:.0} MiB unpacked): agent fetch+verify+unpack in one pass {:.2} s; sha256sum + tar xzf (local file, no network) {:.2} s; ratio {:.2}",
        size as f64 / MIB,
        unpacked.bytes as f64 / MIB,
        agent.as_secs_f64(),
        baseline.as_secs_f64(),
        agent.as_secs_f64() / baseline.as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// Rolls `version` of the payload out to `host`, simulated, and returns
/// its swarm with the session (and so the grant to fetch) still open.
async fn grant(lab: &Lab, host: &str, version: &str) -> Result<Swarm> {
    lab.abort_unfinished()?;
    let fleet = lab.dir.join("fleet-pipeline.toml");
    std::fs::write(
        &fleet,
        format!(
            "[services.payload]\nhosts = [\"{host}\"]\nrunner = \"process\"\ncommand = \"data/0000.bin\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    // The host may enroll only below, when its swarm starts.
    lab.cli(&[
        "fleet",
        "apply",
        &fleet.display().to_string(),
        "--allow-empty",
    ])?;
    let swarm = Swarm::start(&lab.setup, &[host.to_string()], &[], Behaviour::default())?;
    if !swarm.wait_online(Duration::from_secs(60)).await {
        return Err(format!("{host} not online after 60 s"));
    }
    lab.cli(&["upgrade", "payload", "--version", version, "--yes"])?;
    let (id, status) = lab.newest_rollout_end(Duration::from_secs(120)).await?;
    if status != "succeeded" {
        return Err(format!("rollout {id} of payload {version} ended {status}"));
    }
    Ok(swarm)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| format!("{cmd:?} failed"))
}

/// Files of about `total` bytes: half incompressible, half text that
/// compresses like logs and configs.
fn payload(total: usize) -> Vec<bundle::File> {
    let chunk = 8 << 20;
    let mut files = Vec::new();
    let mut made = 0;
    while made < total {
        let n = chunk.min(total - made);
        let bytes = if files.len() % 2 == 0 {
            bundle::noise(n)
        } else {
            let mut b = Vec::with_capacity(n + 100);
            let mut i = 0u64;
            while b.len() < n {
                b.extend_from_slice(
                    format!(
                        "2026-11-22T10:{:02}:{:02}Z INFO request {i} served in {} us\n",
                        i % 60,
                        i % 59,
                        i % 977
                    )
                    .as_bytes(),
                );
                i += 1;
            }
            b.truncate(n);
            b
        };
        files.push(bundle::File::new(
            &format!("data/{:04}.bin", files.len()),
            bytes,
            0o644,
        ));
        made += n;
    }
    files
}

/// The agent's SHA-256 over 1 GiB in memory against `openssl speed`.
pub fn sha() -> Result<()> {
    use sha2::Digest as _;
    const ROUNDS: usize = 3;
    const MIBS: usize = 1024;
    let buf = vec![0x5au8; 1 << 20];
    let rate = |hash: &dyn Fn() -> [u8; 32]| {
        let t = Instant::now();
        let d = hash();
        (MIBS as f64 / t.elapsed().as_secs_f64(), d)
    };
    let ring = || {
        let mut h = cutover_core::digest::Hasher::new();
        for _ in 0..MIBS {
            h.update(&buf);
        }
        *h.finish().0.as_bytes()
    };
    let rust_crypto = || {
        let mut h = sha2::Sha256::new();
        for _ in 0..MIBS {
            h.update(&buf);
        }
        h.finalize().into()
    };
    // Alternated, best of each: a neighbour's burst on a shared machine
    // lowers one round, not one side.
    let (mut ours, mut theirs) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        let (a, da) = rate(&ring);
        let (b, db) = rate(&rust_crypto);
        if da != db {
            return Err("ring and sha2 disagree on the same bytes".into());
        }
        ours = ours.max(a);
        theirs = theirs.max(b);
    }
    let out = Command::new("openssl")
        .args([
            "speed", "-evp", "sha256", "-bytes", "16384", "-seconds", "3",
        ])
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // The last line: "sha256   123456.78k" (thousands of bytes per second).
    let openssl = text
        .lines()
        .rev()
        .find(|l| l.starts_with("sha256"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.trim_end_matches('k').parse::<f64>().ok())
        .map(|k| k * 1000.0 / MIB)
        .ok_or_else(|| format!("cannot read openssl speed output: {text}"))?;
    println!(
        "sha256 over {MIBS} MiB, best of {ROUNDS}: ring (the agent's) {ours:.0} MiB/s, sha2 {theirs:.0} MiB/s, \
         openssl speed -evp sha256 (16 KiB blocks) {openssl:.0} MiB/s; ring/sha2 {:.2}, ring/openssl {:.2}",
        ours / theirs,
        ours / openssl
    );
    Ok(())
}

/// A real agent enrolled and idle for 15 s: its RSS; and binary sizes.
pub async fn agent(lab: &Lab) -> Result<()> {
    let host = "idle-agent";
    let dir = lab.dir.join(host);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    // A kept lab enrolled it on an earlier run.
    let token = lab.cli(&["token", "create", host, "--replace"])?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "controller = \"{}\"\nca_cert = \"{}\"\ndata_dir = \"{}\"\n",
            lab.setup.controller,
            lab.setup.pki.join("ca.pem").display(),
            dir.join("data").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut child = Command::new(lab.bin_dir.join("cutover-agent"))
        .arg("--config")
        .arg(&config)
        .arg("--join-token")
        .arg(token.trim())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start cutover-agent: {e}"))?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let rss = crate::lab::rss_of(child.id());
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "agent idle RSS (enrolled, 15 s): {:.1} MiB",
        rss? as f64 / MIB
    );
    for name in [
        "cutover-agent",
        "cutover-controller",
        "cutover",
        "cutover-sim",
    ] {
        let len = std::fs::metadata(lab.bin_dir.join(name))
            .map(|m| m.len())
            .map_err(|e| format!("{name}: {e}"))?;
        println!("binary {name}: {:.1} MiB", len as f64 / MIB);
    }
    Ok(())
}
