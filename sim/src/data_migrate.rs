//! `cutover-sim bench data-migrate`: the sample service's data migration
//! (`backfill_prices`, keyset batches with a checkpoint committed in each)
//! over N orders (default 1,000,000) on a real PostgreSQL (a throwaway
//! cluster, the system tests' `cutover_tests::postgres`), against one
//! `INSERT … SELECT` of the same rows in `psql`: first the binary alone,
//! then through cutover (`cutover data-migrate run --wait`: the lab's
//! controller, a real agent that runs it and reports its progress). The
//! overhead per progress report is the agent's and the controller's CPU
//! time over the run divided by the reports, beside the cost of the one
//! `data-migrate status` command each report runs. Figures, never
//! assertions: the only failures are runs that do not move every row.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cutover_core::manifest::DataMigration;
use cutover_tests::postgres::{Postgres, ROLE};

use crate::lab::{cpu_of, Lab};
use crate::migrate::{loadavg, sql, timed};
use crate::swarm::Result;

const DATABASE: &str = "shop";
const ID: &str = "backfill_prices";
const KEY: &str = "shop.backfill_prices";
/// The agent's `data_migrate_poll` default: one report a second.
const POLL: Duration = Duration::from_secs(1);
/// The sample's default batch, and a larger one.
const BATCHES: [u32; 2] = [1000, 10_000];
/// `data-migrate status` is timed this many times.
const STATUS_RUNS: usize = 20;

/// The benchmark over `rows` orders.
pub fn data_migrate(dir: &Path, rows: usize) -> Result<()> {
    if !(1000..=20_000_000).contains(&rows) {
        return Err(format!(
            "bench data-migrate: from 1,000 to 20,000,000 rows, not {rows}"
        ));
    }
    println!("load average before: {}", loadavg());
    let pg = Postgres::start(DATABASE);
    seed(&pg, rows)?;
    let expected = expected(&pg)?;

    let baseline = timed(|| {
        sql(
            &pg,
            DATABASE,
            "INSERT INTO order_prices SELECT id, (doc->>'price_cents')::bigint FROM orders",
        )
    })?;
    check(&pg, &expected)?;
    reset(&pg)?;
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    println!(
        "psql, one INSERT ... SELECT of {rows} rows: {:.2} s ({:.0} rows/s)",
        baseline.as_secs_f64(),
        per_s(baseline)
    );

    let sample = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("cutover-sample");
    let mut direct = Duration::ZERO;
    for batch in BATCHES {
        let took = timed(|| run_sample(&sample, &pg, &["run", ID], batch))?;
        check(&pg, &expected)?;
        reset(&pg)?;
        println!(
            "cutover-sample data-migrate run, batches of {batch}, alone: {:.2} s ({:.0} rows/s); ratio to INSERT ... SELECT {:.2}",
            took.as_secs_f64(),
            per_s(took),
            took.as_secs_f64() / baseline.as_secs_f64()
        );
        if batch == BATCHES[0] {
            direct = took;
        }
    }
    let mut status = Vec::new();
    for _ in 0..STATUS_RUNS {
        status.push(timed(|| {
            run_sample(&sample, &pg, &["status", ID], BATCHES[0])
        })?);
    }
    status.sort();
    let status_ms = status[STATUS_RUNS / 2].as_secs_f64() * 1000.0;
    println!(
        "cutover-sample data-migrate status (what each progress report runs): median {status_ms:.1} ms of {STATUS_RUNS}"
    );

    through_cutover(dir, &pg, &expected, rows, (baseline, direct), status_ms)
}

/// `orders` with `rows` prices inside their documents, `order_prices`
/// empty: the database after release B's expand.
fn seed(pg: &Postgres, rows: usize) -> Result<()> {
    sql(
        pg,
        DATABASE,
        // As the role, so that it owns what the service reads and writes.
        &format!(
            "SET ROLE {ROLE};
             CREATE TABLE orders (id bigint PRIMARY KEY, doc jsonb NOT NULL);
             INSERT INTO orders SELECT g, jsonb_build_object('price_cents', (g % 997) + 100) FROM generate_series(1, {rows}) g;
             CREATE TABLE order_prices (order_id bigint PRIMARY KEY, price_cents bigint NOT NULL);"
        ),
    )?;
    sql(pg, DATABASE, "VACUUM ANALYZE orders").map(drop)
}

/// The count and total every run must leave in `order_prices`.
fn expected(pg: &Postgres) -> Result<String> {
    sql(
        pg,
        DATABASE,
        "SELECT count(*) || ' ' || sum((doc->>'price_cents')::bigint) FROM orders",
    )
}

fn check(pg: &Postgres, expected: &str) -> Result<()> {
    let got = sql(
        pg,
        DATABASE,
        "SELECT count(*) || ' ' || coalesce(sum(price_cents), 0) FROM order_prices",
    )?;
    if got == expected {
        Ok(())
    } else {
        Err(format!(
            "order_prices holds {got} (count, total), not {expected}"
        ))
    }
}

/// Back to before the backfill: no prices moved, no checkpoint.
fn reset(pg: &Postgres) -> Result<()> {
    sql(
        pg,
        DATABASE,
        &format!(
            "TRUNCATE order_prices; DROP TABLE IF EXISTS {}",
            cutover_sample::checkpoint::TABLE
        ),
    )
    .map(drop)
}

fn run_sample(sample: &Path, pg: &Postgres, args: &[&str], batch: u32) -> Result<String> {
    let out = Command::new(sample)
        .arg("data-migrate")
        .args(args)
        .env("CUTOVER_SAMPLE_DATABASE_URL", pg.url())
        .env("CUTOVER_SAMPLE_PASSWORD_FILE", &pg.password_file)
        .env("CUTOVER_SAMPLE_BATCH", batch.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", sample.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "cutover-sample data-migrate {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A real agent, stopped (SIGKILL) when dropped.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The same run through cutover: a lab of its own (controller, one real
/// agent running the sample), `cutover data-migrate run --wait` timed,
/// the agent's and the controller's CPU over it.
fn through_cutover(
    dir: &Path,
    pg: &Postgres,
    expected: &str,
    rows: usize,
    (baseline, direct): (Duration, Duration),
    status_ms: f64,
) -> Result<()> {
    let dir = dir.join("data-migrate");
    // A fresh lab: its one host enrolls anew.
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&dir, Duration::from_secs(10))?;
    lab.start_controller()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())?;
    let token = lab.cli(&["token", "create", "h1", "--ttl", "5m"])?;
    let config = write(
        &dir,
        "agent.toml",
        &format!(
            "controller = \"{}\"\nca_cert = \"{}\"\ndata_dir = \"{}\"\n",
            lab.setup.controller,
            lab.setup.pki.join("ca.pem").display(),
            dir.join("agent").display()
        ),
    )?;
    let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
    let agent = Agent(
        Command::new(lab.bin_dir.join("cutover-agent"))
            .args(["--config", &config, "--join-token", token.trim()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start cutover-agent: {e}"))?,
    );
    let fleet = write(
            &dir,
            "fleet.toml",
            &format!(
                "[hosts.h1]\nlabels = [\"shop\"]\n\n[services.shop]\nlabels = [\"shop\"]\nrunner = \"process\"\ncommand = \"bin/cutover-sample\"\nargs = [\"--port\", \"{port}\"]\nmin_healthy_time = \"1s\"\n\n[[services.shop.checks]]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/healthz\"\ninterval = \"250ms\"\n\n[services.shop.env]\nCUTOVER_SAMPLE_DATABASE_URL = \"{}\"\nCUTOVER_SAMPLE_PASSWORD_FILE = \"{}\"\nCUTOVER_SAMPLE_BATCH = \"{}\"\n",
                pg.url(),
                pg.password_file.display(),
                BATCHES[0]
            ),
    )?;
    let t = Instant::now();
    // Once the agent has enrolled.
    while lab.cli(&["fleet", "apply", &fleet]).is_err() {
        if t.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "h1 did not enroll within 60 s; see {}",
                dir.join("agent.log").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let binary = std::fs::read(lab.bin_dir.join("cutover-sample")).map_err(|e| e.to_string())?;
    let shop = cutover_cli::bundle::Service {
        name: "shop".into(),
        service_version: "2.0.0".into(),
        depends_on: Vec::new(),
        databases: vec![DATABASE.into()],
        data_migrations: vec![DataMigration {
            id: ID.into(),
            database: DATABASE.into(),
            description: "copy prices out of orders.doc".into(),
            required_before_contract: false,
            required_before_upgrade_to: None,
        }],
        files: cutover_cli::bundle::sample_files(&binary, "2.0.0", true),
    };
    lab.publish("2.0.0", &[shop])?;
    let t = Instant::now();
    while lab
        .cli(&["upgrade", "shop", "--version", "2.0.0", "--yes", "--wait"])
        .is_err()
    {
        // The agent may not be online yet.
        if t.elapsed() > Duration::from_secs(60) {
            return Err("the shop was not installed on h1 within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(500));
    }

    let (agent_before, controller_before) = (cpu_of(agent.0.id())?, lab.cpu()?);
    let took = timed(|| lab.cli(&["data-migrate", "run", KEY, "--wait"]))?;
    let (agent_cpu, controller_cpu) = (
        cpu_of(agent.0.id())? - agent_before,
        lab.cpu()? - controller_before,
    );
    check(pg, expected)?;
    // One status poll, and one report, each POLL while it runs.
    let reports = (took.as_secs_f64() / POLL.as_secs_f64()).floor().max(1.0);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "cutover data-migrate run --wait, batches of {}, through the agent: {:.2} s ({:.0} rows/s); ratio to INSERT ... SELECT {:.2}, to the binary alone {:.2}",
        BATCHES[0],
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64(),
        took.as_secs_f64() / direct.as_secs_f64()
    );
    println!(
        "overhead per progress report (~{reports:.0} reports, one per {} s poll): agent {:.2} ms CPU, controller {:.2} ms CPU, plus the status command {status_ms:.1} ms on the host",
        POLL.as_secs(),
        ms(agent_cpu) / reports,
        ms(controller_cpu) / reports,
    );
    drop(agent);
    lab.terminate_controller(Duration::from_secs(10))?;
    Ok(())
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}
