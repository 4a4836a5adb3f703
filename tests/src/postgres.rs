//! A throwaway PostgreSQL cluster per test: `initdb` and `postgres` of the
//! installed PostgreSQL on a temporary directory, listening on a free
//! loopback port and a socket directory of its own, with one database
//! owned by a role that logs in with a password kept in a file (as the
//! controller's `password_file` reads it). Run as the `postgres` user when
//! the tests run as root (PostgreSQL refuses root). Stopped and removed on
//! drop. A missing PostgreSQL fails the test with the package to install:
//! never a skip. `cutover-sim bench migrate` starts its cluster here too.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The role the controller logs in as.
pub const ROLE: &str = "cutover";

pub struct Postgres {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The database made for the test.
    pub database: String,
    /// The role's password (random), also in [`Postgres::password_file`].
    pub password: String,
    pub password_file: PathBuf,
    bin: PathBuf,
    server: Option<Child>,
}

/// The directory of the installed PostgreSQL's programs.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file() && b.join("postgres").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): the migration tests need it; run scripts/install-test-deps (Debian package `postgresql`){}",
            if std::env::var("CI").as_deref() == Ok("true") { " — CI=true: failing, not skipping" } else { "" }
        )
    })
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `program` as the user PostgreSQL runs as: `postgres` under root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    /// A running cluster with database `database`, owned by [`ROLE`].
    pub fn start(database: &str) -> Postgres {
        Self::start_with(database, None)
    }

    /// As [`Postgres::start`], serving TLS with `cert` and `key` (PEM)
    /// and taking connections over TCP only with TLS (`hostssl`).
    pub fn start_tls(database: &str, cert: &Path, key: &Path) -> Postgres {
        Self::start_with(database, Some((cert, key)))
    }

    fn start_with(database: &str, tls: Option<(&Path, &Path)>) -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir_all(&sock).unwrap();
        if let Some((cert, key)) = tls {
            std::fs::copy(cert, dir.path().join("server.pem")).unwrap();
            std::fs::copy(key, dir.path().join("server-key.pem")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                dir.path().join("server-key.pem"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown the cluster's directory to postgres");
        }
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut settings = vec![
            "listen_addresses=127.0.0.1".to_string(),
            "fsync=off".into(),
            "max_connections=40".into(),
        ];
        if tls.is_some() {
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
            let only_tls: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, only_tls).expect("write pg_hba.conf");
            settings.push("ssl=on".into());
            settings.push(format!(
                "ssl_cert_file={}",
                dir.path().join("server.pem").display()
            ));
            settings.push(format!(
                "ssl_key_file={}",
                dir.path().join("server-key.pem").display()
            ));
        }
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        let server = as_postgres(&bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-k"])
            .arg(&sock)
            .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let password = format!("pw{:016x}", rand_u64());
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{password}\n")).unwrap();
        // The controller refuses a password file others can read.
        std::fs::set_permissions(
            &password_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let pg = Postgres {
            dir,
            port,
            database: database.into(),
            password,
            password_file,
            bin,
            server: Some(server),
        };
        crate::eventually(
            Duration::from_secs(60),
            "postgres to accept connections",
            || pg.try_psql("postgres", "SELECT 1").ok(),
        );
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN PASSWORD '{}'", pg.password),
        );
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE {database} OWNER {ROLE}"),
        );
        pg
    }

    /// The controller's `url` for the test's database (no password).
    pub fn url(&self) -> String {
        format!(
            "postgresql://{ROLE}@127.0.0.1:{}/{}",
            self.port, self.database
        )
    }

    /// A `[databases.NAME]` table for the controller's config, with
    /// `extra` keys.
    pub fn config(&self, name: &str, extra: &str) -> String {
        format!(
            "\n[databases.{name}]\nurl = \"{}\"\npassword_file = \"{}\"\n{extra}\n",
            self.url(),
            self.password_file.display()
        )
    }

    /// `psql` as the superuser over the socket; stdout (unaligned, tuples
    /// only) or stderr on failure.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command(database)
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `psql` on the test's database; panics on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.psql(&self.database, sql)
    }

    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql)
            .unwrap_or_else(|e| panic!("psql {sql:?}: {e}"))
    }

    /// Starts `psql` on the test's database reading SQL from its stdin,
    /// for a session a test holds open (a lock, a transaction).
    pub fn session(&self) -> Child {
        self.psql_command(&self.database)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start psql")
    }

    /// `psql` as the superuser over the socket on `database`: unaligned,
    /// tuples only, stopping at the first error.
    fn psql_command(&self, database: &str) -> Command {
        let mut psql = as_postgres(&self.bin.join("psql"));
        psql.arg("-h")
            .arg(self.dir.path().join("sock"))
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
        psql
    }

    /// A program of the installed PostgreSQL (`psql`, `pg_dump`, …).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown of the postmaster itself (runuser may not pass a
        // signal on), then the child is reaped.
        let pid_file = self.dir.path().join("data/postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if let Some(mut child) = self.server.take() {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        if let Some(pid) = pid {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
}
