//! `cutover-sim bench migrate`: schema migrations on a real PostgreSQL
//! (a throwaway cluster, the system tests' `cutover_tests::postgres`).
//! N small migrations applied by the real `cutover migrate --phase expand`
//! through the lab's controller, against one `psql` applying the same
//! files, each in a transaction of its own, on a fresh database of the
//! same cluster; then `cutover migrate status` against a 10,000-row
//! ledger. Figures, never assertions: the only failures are a run that
//! does not leave the schema and ledger it must.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutover_tests::postgres::{Postgres, ROLE};

use crate::lab::Lab;
use crate::swarm::Result;

/// The database the controller's `[databases.bench]` names.
const DATABASE: &str = "bench";
/// The database `psql` applies the same files to.
const PSQL_DATABASE: &str = "bench_psql";
/// How many rows the ledger holds when `migrate status` is timed.
const LEDGER_ROWS: usize = 10_000;
/// Each side runs this many times, alternately.
const ROUNDS: usize = 2;
/// `migrate status` runs this many times.
const STATUS_RUNS: usize = 5;

/// The benchmark, with `n` migrations (at most [`LEDGER_ROWS`]).
pub fn migrate(dir: &Path, n: usize) -> Result<()> {
    if n == 0 || n > LEDGER_ROWS || n > 9999 {
        return Err(format!(
            "bench migrate: from 1 to 9999 migrations (at most {LEDGER_ROWS}), not {n}"
        ));
    }
    println!("load average before: {}", loadavg());
    let pg = Postgres::start(DATABASE);
    let mut lab = Lab::new(dir, Duration::from_secs(10))?;
    lab.add_config(&pg.config(DATABASE, ""))?;
    lab.start_controller()?;
    let release = Release::publish(&lab, n)?;
    let script = release.psql_script()?;
    let result = (|| {
        for round in 1..=ROUNDS {
            fresh(&pg, DATABASE)?;
            let ours = timed(|| {
                lab.cli(&[
                    "migrate",
                    "--phase",
                    "expand",
                    "--version",
                    &release.version,
                    "--database",
                    DATABASE,
                    "--yes",
                ])
            })?;
            check(&pg, DATABASE, n)?;
            let applied = sql(
                &pg,
                DATABASE,
                "SELECT count(*) FROM _migrations WHERE state = 'applied'",
            )?;
            if applied != n.to_string() {
                return Err(format!(
                    "the ledger holds {applied} applied rows after migrating {n}"
                ));
            }
            fresh(&pg, PSQL_DATABASE)?;
            let theirs = timed(|| psql_file(&pg, PSQL_DATABASE, &script))?;
            check(&pg, PSQL_DATABASE, n)?;
            println!(
                "migrate {n} migrations (CREATE TABLE + CREATE INDEX each), round {round}: \
                 cutover migrate --phase expand --yes {:.2} s ({:.2} ms each); \
                 psql -f, one session, BEGIN/\\i/COMMIT per file {:.2} s ({:.2} ms each); ratio {:.2} (goal <= 1.5)",
                ours.as_secs_f64(),
                ours.as_secs_f64() * 1000.0 / n as f64,
                theirs.as_secs_f64(),
                theirs.as_secs_f64() * 1000.0 / n as f64,
                ours.as_secs_f64() / theirs.as_secs_f64()
            );
        }
        status(&lab, &pg, &release.version, n)
    })();
    release.remove();
    println!("load average after: {}", loadavg());
    result
}

/// A release of service `web` owning database `bench`, carrying `n`
/// expand migrations, built by `cutover release build`, signed with the
/// lab's key and imported.
struct Release {
    version: String,
    /// The source tree (`web/`, `migrations/`) the release was built from.
    src: PathBuf,
    dist: PathBuf,
    /// The migration files in the order they run.
    files: Vec<PathBuf>,
}

impl Release {
    fn publish(lab: &Lab, n: usize) -> Result<Release> {
        // A kept lab imported earlier versions: each run's is new.
        let version = format!(
            "4.0.{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|e| e.to_string())?
                .as_millis()
        );
        let src = lab.dir.join(format!("migrate-src-{version}"));
        let dist = lab.dir.join(format!("migrate-dist-{version}"));
        let write = |path: &Path, text: &str| {
            std::fs::create_dir_all(path.parent().unwrap_or(path))
                .and_then(|()| std::fs::write(path, text))
                .map_err(|e| format!("{}: {e}", path.display()))
        };
        write(&src.join("web/VERSION"), &format!("{version}\n"))?;
        let phase_dir = src
            .join("migrations")
            .join(DATABASE)
            .join(&version)
            .join("expand");
        let mut files = Vec::with_capacity(n);
        for i in 1..=n {
            let path = phase_dir.join(format!("{i:04}_t{i}.sql"));
            write(
                &path,
                &format!(
                    "CREATE TABLE t{i} (\n    id bigserial PRIMARY KEY,\n    name text NOT NULL,\n    created_at timestamptz NOT NULL DEFAULT now()\n);\nCREATE INDEX t{i}_name ON t{i} (name);\n"
                ),
            )?;
            files.push(path);
        }
        let t = Instant::now();
        lab.cli(&[
            "release",
            "build",
            &src.display().to_string(),
            "--version",
            &version,
            "--service",
            "web",
            "--databases",
            &format!("web={DATABASE}"),
            "--out",
            &dist.display().to_string(),
        ])?;
        lab.sign_and_import(&dist.join(format!("release-{version}.toml")))?;
        println!(
            "release {version} with {n} migrations built, signed and imported in {:.2} s",
            t.elapsed().as_secs_f64()
        );
        Ok(Release {
            version,
            src,
            dist,
            files,
        })
    }

    /// The script `psql -f` runs: each file in a transaction of its own,
    /// as `cutover migrate` runs it (which adds its ledger row to it).
    fn psql_script(&self) -> Result<PathBuf> {
        let mut text = String::new();
        for f in &self.files {
            text.push_str(&format!("BEGIN;\n\\i '{}'\nCOMMIT;\n", f.display()));
        }
        let path = self.src.join("apply.psql");
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// The controller keeps its own copies; the lab need not.
    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.src);
        let _ = std::fs::remove_dir_all(&self.dist);
    }
}

/// SQL as the superuser (over the cluster's socket); stdout, unaligned.
pub(crate) fn sql(pg: &Postgres, database: &str, sql: &str) -> Result<String> {
    pg.try_psql(database, sql)
        .map_err(|e| format!("psql on {database}: {sql}: {}", e.trim()))
}

/// Drops `database` and makes it again, empty, owned by the role.
fn fresh(pg: &Postgres, database: &str) -> Result<()> {
    sql(
        pg,
        "postgres",
        &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
    )?;
    sql(
        pg,
        "postgres",
        &format!("CREATE DATABASE {database} OWNER {ROLE}"),
    )?;
    Ok(())
}

/// Fails unless `database` has the `n` tables (and their indexes) made.
fn check(pg: &Postgres, database: &str, n: usize) -> Result<()> {
    let got = sql(
        pg,
        database,
        "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename ~ '^t[0-9]+$') \
         || ' ' || (SELECT count(*) FROM pg_indexes WHERE schemaname = 'public' AND indexname ~ '^t[0-9]+_name$')",
    )?;
    if got != format!("{n} {n}") {
        return Err(format!(
            "database {database}: tables and indexes made: {got}, not {n} {n}"
        ));
    }
    Ok(())
}

/// `psql -f script` as the controller connects: the role, over TCP on
/// loopback, with its password; stops at the first error.
fn psql_file(pg: &Postgres, database: &str, script: &Path) -> Result<String> {
    let out = Command::new(pg.program("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", ROLE, "-d", database, "-f"])
        .arg(script)
        .env("PGPASSWORD", &pg.password)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "psql -f {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub(crate) fn timed(f: impl FnOnce() -> Result<String>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// Fills the ledger of `bench` (holding the release's `n` applied rows)
/// up to [`LEDGER_ROWS`] with applied rows of older versions that no
/// release carries any more (a long history whose early files were
/// squashed), then times `cutover migrate status` on it.
fn status(lab: &Lab, pg: &Postgres, version: &str, n: usize) -> Result<()> {
    let old = LEDGER_ROWS - n;
    let args = [
        "migrate",
        "status",
        "--database",
        DATABASE,
        "--version",
        version,
    ];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    // The same release against its own n rows alone: what does not grow
    // with the ledger (signatures, the release's files, the connection).
    let (alone, _) = runs(lab, &args)?;
    println!(
        "migrate status, {n}-row ledger (the release's own rows): best {:.1} ms, median {:.1} ms of {STATUS_RUNS}",
        ms(alone[0]),
        ms(alone[STATUS_RUNS / 2])
    );
    // The columns `ledger::insert` writes, as it writes them.
    sql(
        pg,
        DATABASE,
        &format!(
            "INSERT INTO _migrations (database, version, phase, name, checksum, state, applied_by, started_at, finished_at, duration_ms) \
             SELECT '{DATABASE}', '0.' || ((g - 1) / 100 + 1) || '.0', 'expand', \
             lpad(((g - 1) % 100 + 1)::text, 3, '0') || '_old' || g || '.sql', \
             encode(sha256(('old ' || g)::bytea), 'hex'), 'applied', \
             'operator admin via cutover-controller on bench', \
             now() - make_interval(mins => {old} - g + 60), now() - make_interval(mins => {old} - g + 60) + interval '40 ms', 40 \
             FROM generate_series(1, {old}) g"
        ),
    )?;
    let rows = sql(pg, DATABASE, "SELECT count(*) FROM _migrations")?;
    if rows != LEDGER_ROWS.to_string() {
        return Err(format!("the ledger holds {rows} rows, not {LEDGER_ROWS}"));
    }
    let (times, out) = runs(lab, &args)?;
    let count = |label: &str| {
        out.lines()
            .filter(|l| l.trim_start().starts_with(label))
            .count()
    };
    // The text lists the release's rows and sums up the others by version.
    let (applied, earlier, pending) = (count("applied "), count("earlier "), count("pending "));
    let versions = old.div_ceil(100);
    if applied != n || earlier != versions || pending != 0 {
        return Err(format!(
            "migrate status listed {applied} applied, {earlier} earlier versions and {pending} pending rows, not {n}, {versions} and 0"
        ));
    }
    println!(
        "migrate status, {LEDGER_ROWS}-row ledger ({n} rows of the release, {old} that no release carries), release of {n} migrations: \
         best {:.1} ms, median {:.1} ms of {STATUS_RUNS} (goal < 100 ms); {} lines printed",
        ms(times[0]),
        ms(times[STATUS_RUNS / 2]),
        out.lines().count()
    );
    // Where the time goes: the same with `-o json` (no text to format),
    // and the CLI's floor (start, TLS, one small call).
    let json = [&args[..], &["--output", "json"]].concat();
    let (json_times, doc) = runs(lab, &json)?;
    let listed = serde_json::from_str::<serde_json::Value>(&doc)
        .map_err(|e| format!("migrate status --output json: {e}"))?["databases"][0]["unknown"]
        .as_array()
        .map_or(0, Vec::len);
    if listed != old {
        return Err(format!(
            "migrate status --output json listed {listed} rows the release does not carry, not {old}"
        ));
    }
    let (floor, _) = runs(lab, &["hosts", "--output", "json"])?;
    println!(
        "  same with --output json: best {:.1} ms, median {:.1} ms ({:.1} MiB); the CLI's floor (cutover hosts --output json): best {:.1} ms",
        ms(json_times[0]),
        ms(json_times[STATUS_RUNS / 2]),
        doc.len() as f64 / (1024.0 * 1024.0),
        ms(floor[0])
    );
    Ok(())
}

/// `cutover ARGS` [`STATUS_RUNS`] times: the times sorted, the last output.
fn runs(lab: &Lab, args: &[&str]) -> Result<(Vec<Duration>, String)> {
    let mut times = Vec::with_capacity(STATUS_RUNS);
    let mut out = String::new();
    for _ in 0..STATUS_RUNS {
        let t = Instant::now();
        out = lab.cli(args)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((times, out))
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
