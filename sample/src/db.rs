//! The database a data migration works on: its settings read from the
//! environment and bounded where they enter (`CUTOVER_SAMPLE_DATABASE_URL`,
//! `CUTOVER_SAMPLE_PASSWORD_FILE`, `CUTOVER_SAMPLE_BATCH`,
//! `CUTOVER_SAMPLE_BATCH_DELAY_MS`), a connection made without TLS within
//! [`CONNECT_TIMEOUT`], and PostgreSQL errors told in one bounded line.
//! No message ever quotes the URL or the password.

use std::ffi::OsString;
use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

/// The connection string: `postgres://USER@HOST:PORT/DATABASE`.
pub const URL_VAR: &str = "CUTOVER_SAMPLE_DATABASE_URL";
/// A file holding the role's password (optional).
pub const PASSWORD_VAR: &str = "CUTOVER_SAMPLE_PASSWORD_FILE";
/// Rows per batch of a `run`.
pub const BATCH_VAR: &str = "CUTOVER_SAMPLE_BATCH";
/// A pause after each batch of a `run`, in milliseconds.
pub const DELAY_VAR: &str = "CUTOVER_SAMPLE_BATCH_DELAY_MS";

/// The longest connection string read.
pub const MAX_URL_BYTES: usize = 4096;
/// The largest password file read.
pub const MAX_PASSWORD_BYTES: u64 = 4096;
/// How long a connection may take to be made.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows per batch when [`BATCH_VAR`] is not set.
pub const DEFAULT_BATCH: i64 = 1000;
/// The largest batch [`BATCH_VAR`] may ask for.
pub const MAX_BATCH: i64 = 100_000;
/// The longest pause [`DELAY_VAR`] may ask for, in milliseconds.
pub const MAX_DELAY_MS: u64 = 60_000;
/// The longest error text kept or printed.
pub const MAX_ERROR_BYTES: usize = 1024;

/// Where to connect, checked.
pub struct Database {
    config: Config,
    /// `host:port`, as errors name the database.
    address: String,
}

/// How fast a `run` goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub batch: i64,
    pub delay: Duration,
}

/// The value of `name` in the environment `env` reads, as UTF-8 text
/// (`None` when unset).
fn text(env: &dyn Fn(&str) -> Option<OsString>, name: &str) -> Result<Option<String>> {
    match env(name) {
        None => Ok(None),
        Some(v) => v
            .into_string()
            .map(Some)
            .map_err(|_| Error::Settings(format!("{name} is not UTF-8; set it to UTF-8 text"))),
    }
}

impl Database {
    /// The database the environment names; `env` reads a variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<OsString>) -> Result<Database> {
        let url = text(env, URL_VAR)?.ok_or_else(|| {
            Error::Settings(format!(
                "{URL_VAR} is not set; set it to the service database's postgres://USER@HOST:PORT/DATABASE"
            ))
        })?;
        if url.len() > MAX_URL_BYTES {
            return Err(Error::Settings(format!(
                "{URL_VAR} is {} bytes; at most {MAX_URL_BYTES} are allowed",
                url.len()
            )));
        }
        // tokio-postgres's reason may quote a piece of the text, which
        // could be a piece of a password: it is not shown.
        let mut config = Config::from_str(&url).map_err(|_| {
            Error::Settings(format!(
                "{URL_VAR} is not a PostgreSQL connection string; set it to postgres://USER@HOST:PORT/DATABASE"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(Error::Settings(format!(
                "{URL_VAR} carries a password; take it out and put it in the file {PASSWORD_VAR} names"
            )));
        }
        if config.get_hosts().is_empty() {
            return Err(Error::Settings(format!(
                "{URL_VAR} names no host; set it to postgres://USER@HOST:PORT/DATABASE"
            )));
        }
        if let Some(file) = text(env, PASSWORD_VAR)? {
            config.password(read_password(&file)?);
        }
        config
            .application_name("cutover-sample data-migrate")
            .connect_timeout(CONNECT_TIMEOUT);
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let address = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => format!("{h}:{port}"),
            Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
            None => format!("localhost:{port}"),
        };
        Ok(Database { config, address })
    }

    /// `host:port` of the database.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A connection, its driver spawned on the current runtime.
    pub async fn connect(&self) -> Result<Client> {
        let refused = |why: String| {
            Error::Unavailable(format!(
                "database at {}: {why}; check {URL_VAR}, {PASSWORD_VAR} and that PostgreSQL is up",
                self.address
            ))
        };
        let (client, conn) = tokio::time::timeout(CONNECT_TIMEOUT, self.config.connect(NoTls))
            .await
            .map_err(|_| refused(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| refused(format!("cannot connect: {}", describe(&e))))?;
        let address = self.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!(
                    "cutover-sample data-migrate: the connection to {address} ended: {}",
                    describe(&e)
                );
            }
        });
        Ok(client)
    }
}

/// `cutover-sample tables`: how many tables the database the environment
/// names holds outside PostgreSQL's own schemas, printed; what `cutover
/// demo --postgres` asks before it touches a database. The exit code is
/// the data-migrate protocol's.
pub fn tables_main() -> i32 {
    let count = async {
        let db = Database::from_env(&|name| std::env::var_os(name))?;
        let client = db.connect().await?;
        let row = client
            .query_one(
                "SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                &[],
            )
            .await
            .map_err(|e| Error::Database(format!("counting tables at {}: {}", db.address(), describe(&e))))?;
        Ok::<i64, Error>(row.get(0))
    };
    let answer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Database(format!("cannot start the async runtime: {e}")))
        .and_then(|rt| rt.block_on(count));
    match answer {
        Ok(n) => {
            println!("{n}");
            0
        }
        Err(e) => {
            eprintln!("cutover-sample tables: {e}");
            e.exit_code()
        }
    }
}

impl Pace {
    /// The pace the environment asks for; `env` reads a variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<OsString>) -> Result<Pace> {
        let batch = match text(env, BATCH_VAR)? {
            None => DEFAULT_BATCH,
            Some(v) => v
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|b| (1..=MAX_BATCH).contains(b))
                .ok_or_else(|| {
                    Error::Settings(format!(
                        "{BATCH_VAR} {v:?} is not a number of rows from 1 to {MAX_BATCH}; set it to one or unset it (default {DEFAULT_BATCH})"
                    ))
                })?,
        };
        let delay_ms = match text(env, DELAY_VAR)? {
            None => 0,
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|d| *d <= MAX_DELAY_MS)
                .ok_or_else(|| {
                    Error::Settings(format!(
                        "{DELAY_VAR} {v:?} is not a number of milliseconds from 0 to {MAX_DELAY_MS}; set it to one or unset it (default 0)"
                    ))
                })?,
        };
        Ok(Pace {
            batch,
            delay: Duration::from_millis(delay_ms),
        })
    }
}

/// The password in `file`: at most [`MAX_PASSWORD_BYTES`], UTF-8, not
/// empty once trimmed.
fn read_password(file: &str) -> Result<String> {
    use std::io::Read;
    let bad = |why: String| Error::Settings(format!("{PASSWORD_VAR} {file}: {why}"));
    let f = std::fs::File::open(file).map_err(|e| bad(format!("cannot open it: {e}")))?;
    let mut bytes = Vec::new();
    f.take(MAX_PASSWORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PASSWORD_BYTES {
        return Err(bad(format!(
            "over {MAX_PASSWORD_BYTES} bytes; it should hold only the password"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let password = text.trim();
    if password.is_empty() {
        return Err(bad("empty; write the role's password in it".into()));
    }
    Ok(password.to_string())
}

/// The one-line reason a PostgreSQL call failed: its message (and
/// SQLSTATE) for a database error, the error and its causes otherwise;
/// at most [`MAX_ERROR_BYTES`].
pub fn describe(e: &tokio_postgres::Error) -> String {
    let text = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let s = cause.to_string();
                if !text.contains(&s) {
                    text.push_str(": ");
                    text.push_str(&s);
                }
                source = cause.source();
            }
            text
        }
    };
    one_line(&text)
}

/// `text` on one line, cut at a character boundary to at most
/// [`MAX_ERROR_BYTES`].
pub fn one_line(text: &str) -> String {
    let mut line = text.replace(['\n', '\r'], " ");
    if line.len() > MAX_ERROR_BYTES {
        let mut cut = MAX_ERROR_BYTES - 3;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
        line.push_str("...");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn settings_error(r: Result<Database>) -> String {
        match r {
            Err(Error::Settings(m)) => m,
            Err(e) => panic!("not a settings error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn the_url_is_required_and_never_carries_a_password() {
        let m = settings_error(Database::from_env(&env(&[])));
        assert!(m.contains(URL_VAR) && m.contains("not set"), "{m}");
        let m = settings_error(Database::from_env(&env(&[(
            URL_VAR,
            "postgres://u:secret@h/db",
        )])));
        assert!(
            m.contains("carries a password") && !m.contains("secret"),
            "{m}"
        );
        let m = settings_error(Database::from_env(&env(&[(
            URL_VAR,
            "postgres://u@h:xx/db",
        )])));
        assert!(m.contains("not a PostgreSQL connection string"), "{m}");
        let long = format!("postgres://u@h/{}", "d".repeat(MAX_URL_BYTES));
        let m = settings_error(Database::from_env(&env(&[(URL_VAR, &long)])));
        assert!(m.contains("at most"), "{m}");
        let db = Database::from_env(&env(&[(URL_VAR, "postgres://u@127.0.0.1:6543/db")]))
            .expect("a good url");
        assert_eq!(db.address(), "127.0.0.1:6543");
    }

    #[test]
    fn the_password_file_is_read_trimmed_and_bounded() {
        let dir = std::env::temp_dir().join(format!("cutover-sample-db-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "  hunter2\n").unwrap();
        assert_eq!(read_password(file.to_str().unwrap()).unwrap(), "hunter2");
        std::fs::write(&file, "\n").unwrap();
        assert!(read_password(file.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("empty"));
        std::fs::write(&file, vec![b'x'; MAX_PASSWORD_BYTES as usize + 1]).unwrap();
        assert!(read_password(file.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("over"));
        let missing = dir.join("missing");
        assert!(read_password(missing.to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("cannot open"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pace_is_bounded() {
        assert_eq!(
            Pace::from_env(&env(&[])).unwrap(),
            Pace {
                batch: DEFAULT_BATCH,
                delay: Duration::ZERO
            }
        );
        let p = Pace::from_env(&env(&[(BATCH_VAR, "100"), (DELAY_VAR, "25")])).unwrap();
        assert_eq!((p.batch, p.delay), (100, Duration::from_millis(25)));
        for bad in ["0", "-1", "100001", "ten", ""] {
            let e = Pace::from_env(&env(&[(BATCH_VAR, bad)])).unwrap_err();
            assert!(e.to_string().contains(BATCH_VAR), "{e}");
        }
        for bad in ["60001", "-5", "soon"] {
            let e = Pace::from_env(&env(&[(DELAY_VAR, bad)])).unwrap_err();
            assert!(e.to_string().contains(DELAY_VAR), "{e}");
        }
    }

    #[test]
    fn an_error_line_is_one_bounded_line() {
        let long = "é\n".repeat(1000);
        let line = one_line(&long);
        assert!(line.len() <= MAX_ERROR_BYTES && !line.contains('\n'));
        assert!(line.ends_with("..."));
        assert_eq!(one_line("a\nb"), "a b");
    }
}
