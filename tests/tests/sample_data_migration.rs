//! `cutover-sample data-migrate` on a real PostgreSQL: the data migration
//! protocol of docs/data-migrations.md as the agent drives it. Release A's
//! `orders` (prices in a JSONB document) and release B's expand
//! (`order_prices`) are made with SQL, as a release's migrations would,
//! and the real binary moves, pauses, resumes, survives SIGKILL and
//! verifies, every outcome checked in the database itself.

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cutover_tests::postgres::{Postgres, ROLE};
use cutover_tests::{bin, eventually, free_port, Value};

const ID: &str = "backfill_prices";
const ORDERS: i64 = 5000;

/// The price of order `id` in the test data.
fn price(id: i64) -> i64 {
    (id % 97) * 10 + 5
}

/// The sum of every order's price.
fn total() -> i64 {
    (1..=ORDERS).map(price).sum()
}

/// A database with release A's `orders` (5,000 of them) and release B's
/// expand applied, owned by the service's role.
struct World {
    pg: Postgres,
}

/// One finished command.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The one JSON object on stdout of a command that answered.
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "the command did not answer: {self:?}");
        let v: Value = serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:?}"));
        assert!(v.is_object(), "not a JSON object: {v}");
        v
    }

    /// Asserts exit 2 with one line on stderr containing `needle`.
    fn refused_with(&self, needle: &str) {
        assert_eq!(self.code, 2, "expected exit 2: {self:?}");
        assert!(self.stdout.is_empty(), "printed on stdout: {self:?}");
        let msg = self.stderr.trim();
        assert!(!msg.contains('\n'), "the error is not one line: {msg}");
        assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    }
}

/// A `run` in the background, SIGKILLed if the test ends first.
struct Background(Option<Child>);

impl Background {
    fn running(&mut self) -> bool {
        let child = self.0.as_mut().expect("the run is ours");
        matches!(child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to clean up or record anything.
    fn kill(&mut self) {
        let mut child = self.0.take().expect("the run is ours");
        child.kill().expect("SIGKILL the run");
        child.wait().expect("reap the run");
    }

    /// Waits (bounded) for the run to exit by itself, and its output.
    fn finish(&mut self) -> Out {
        let child = self.0.as_mut().expect("the run is ours");
        eventually(Duration::from_secs(120), "the run to exit", || {
            child.try_wait().ok().flatten()
        });
        let child = self.0.take().expect("the run is ours");
        Out::from(child.wait_with_output().expect("the run's output"))
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl World {
    fn new() -> World {
        let pg = Postgres::start("billing");
        let world = World { pg };
        world.sql_as_role(&format!(
            "CREATE TABLE orders (id bigint PRIMARY KEY, doc jsonb NOT NULL); \
             INSERT INTO orders SELECT g, jsonb_build_object('price_cents', (g % 97) * 10 + 5, 'item', 'widget ' || g) \
             FROM generate_series(1, {ORDERS}) g; \
             CREATE TABLE order_prices (order_id bigint PRIMARY KEY, price_cents bigint NOT NULL)"
        ));
        world
    }

    /// SQL as the service's role, so what it makes the role owns.
    fn sql_as_role(&self, sql: &str) -> String {
        self.pg.sql(&format!("SET ROLE {ROLE}; {sql}"))
    }

    fn count(&self, sql: &str) -> i64 {
        let text = self.pg.sql(sql);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{sql:?} gave {text:?}, not a number"))
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(bin("cutover-sample"));
        c.arg("data-migrate")
            .args(args)
            .env_clear()
            .env("CUTOVER_SAMPLE_DATABASE_URL", self.pg.url())
            .env("CUTOVER_SAMPLE_PASSWORD_FILE", &self.pg.password_file)
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        c
    }

    fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Out {
        Out::from(
            self.command(args, env)
                .output()
                .expect("run cutover-sample"),
        )
    }

    fn status(&self) -> Value {
        self.cmd(&["status", ID], &[]).json()
    }

    /// A slow run in the background: batches of 100 with a pause after
    /// each, so a test can act while it works.
    fn slow_run(&self) -> Background {
        let child = self
            .command(
                &["run", ID],
                &[
                    ("CUTOVER_SAMPLE_BATCH", "100"),
                    ("CUTOVER_SAMPLE_BATCH_DELAY_MS", "60"),
                ],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a run");
        Background(Some(child))
    }

    /// Waits (bounded) until a run is working and has done some batches.
    fn until_running(&self, run: &mut Background) -> Value {
        eventually(Duration::from_secs(60), "the run to be working", || {
            assert!(run.running(), "the run exited early");
            let s = self.status();
            (s["state"] == "running" && s["done"].as_i64().unwrap_or(0) >= 500).then_some(s)
        })
    }

    /// The prices in the database: (rows, sum).
    fn prices(&self) -> (i64, i64) {
        (
            self.count("SELECT count(*) FROM order_prices"),
            self.count("SELECT coalesce(sum(price_cents), 0) FROM order_prices"),
        )
    }

    fn checkpoint_table_exists(&self) -> bool {
        self.pg
            .sql("SELECT to_regclass('cutover_sample_data_migrations') IS NOT NULL")
            .trim()
            == "t"
    }
}

fn check<'a>(verify: &'a Value, name: &str) -> &'a Value {
    verify["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {verify}"))
}

#[test]
fn list_names_the_migration_without_a_database() {
    let out = Out::from(
        Command::new(bin("cutover-sample"))
            .args(["data-migrate", "list"])
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .expect("run cutover-sample"),
    );
    let v = out.json();
    assert_eq!(v["migrations"][0]["id"], ID);
    assert_eq!(
        v["migrations"][0]["description"],
        "copy each order's price out of orders.doc (JSONB) into order_prices"
    );
}

#[test]
fn a_dry_run_reports_the_rows_to_move_and_changes_nothing() {
    let w = World::new();
    let s = w.status();
    assert_eq!((&s["state"], &s["done"]), (&"pending".into(), &0.into()));
    let v = w.cmd(&["run", ID, "--dry-run"], &[]).json();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["would_move"], ORDERS);
    assert_eq!(v["state"], "pending");
    assert_eq!(v["done"], 0);
    assert_eq!(w.prices(), (0, 0));
    assert!(
        !w.checkpoint_table_exists(),
        "status and a dry run are read-only: they made the checkpoint table"
    );
    // Verify reads only too, and fails before anything moved.
    let v = w.cmd(&["verify", ID], &[]).json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["state"], "pending");
    assert_eq!(check(&v, "orders without a price")["actual"], "5000");
    assert!(!w.checkpoint_table_exists());
}

#[test]
fn a_run_moves_every_price_and_verify_passes_with_the_exact_count_and_total() {
    let w = World::new();
    let s = w
        .cmd(&["run", ID], &[("CUTOVER_SAMPLE_BATCH", "700")])
        .json();
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["done"], ORDERS);
    assert_eq!(s["total"], ORDERS);
    assert_eq!(s["error"], Value::Null);
    assert_eq!(s["rate"], Value::Null);
    assert_eq!(w.prices(), (ORDERS, total()));
    assert_eq!(
        w.count("SELECT count(*) FROM orders o JOIN order_prices p ON p.order_id = o.id WHERE p.price_cents <> (o.doc->>'price_cents')::bigint"),
        0
    );
    let v = w.cmd(&["verify", ID], &[]).json();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["state"], "succeeded");
    assert_eq!(check(&v, "rows")["expected"], "5000");
    assert_eq!(check(&v, "rows")["actual"], "5000");
    assert_eq!(check(&v, "price total")["expected"], total().to_string());
    assert_eq!(check(&v, "price total")["actual"], total().to_string());
    assert_eq!(check(&v, "orders without a price")["actual"], "0");
    assert_eq!(check(&v, "prices that differ")["actual"], "0");
    // Succeeded: another run only prints the status.
    let again = w.cmd(&["run", ID], &[]).json();
    assert_eq!(
        (&again["state"], &again["done"]),
        (&"succeeded".into(), &ORDERS.into())
    );
    assert_eq!(
        w.cmd(&["run", ID, "--dry-run"], &[]).json()["would_move"],
        0
    );
}

#[test]
fn a_run_killed_mid_way_continues_from_its_checkpoint_and_copies_each_row_once() {
    let w = World::new();
    let mut run = w.slow_run();
    let s = w.until_running(&mut run);
    assert!(s["rate"].is_number(), "a working run reports its rate: {s}");
    run.kill();
    let s = eventually(
        Duration::from_secs(30),
        "the killed run's lock to go",
        || {
            let s = w.status();
            (s["state"] == "pending").then_some(s)
        },
    );
    assert_eq!(s["interrupted"], true, "{s}");
    let done = s["done"].as_i64().expect("done");
    assert!((500..ORDERS).contains(&done), "{s}");
    // What the checkpoint says is done is exactly what is in the table.
    assert_eq!(w.prices().0, done);
    let s = w.cmd(&["run", ID], &[]).json();
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(s["done"], ORDERS, "a row was counted twice or missed: {s}");
    assert!(s.get("interrupted").is_none(), "{s}");
    assert_eq!(w.prices(), (ORDERS, total()));
    assert_eq!(w.cmd(&["verify", ID], &[]).json()["ok"], true);
}

#[test]
fn pause_stops_a_working_run_and_a_paused_migration_runs_only_once_resumed() {
    let w = World::new();
    let mut run = w.slow_run();
    w.until_running(&mut run);
    let p = w.cmd(&["pause", ID], &[]).json();
    assert_eq!(p["pause_requested"], true, "{p}");
    let out = run.finish();
    let s = out.json();
    assert_eq!(s["state"], "paused", "{out:?}");
    let done = s["done"].as_i64().expect("done");
    assert!(done < ORDERS, "{s}");
    assert_eq!(w.status()["state"], "paused");
    // A paused migration is not run.
    let again = w.cmd(&["run", ID], &[]).json();
    assert_eq!(
        (&again["state"], &again["done"]),
        (&"paused".into(), &done.into())
    );
    assert_eq!(w.prices().0, done);
    let r = w.cmd(&["resume", ID], &[]).json();
    assert_eq!(r["state"], "pending", "{r}");
    assert!(r.get("pause_requested").is_none(), "{r}");
    let s = w.cmd(&["run", ID], &[]).json();
    assert_eq!(
        (&s["state"], &s["done"]),
        (&"succeeded".into(), &ORDERS.into())
    );
    assert_eq!(w.prices(), (ORDERS, total()));
}

#[test]
fn pause_with_no_run_working_pauses_at_once() {
    let w = World::new();
    let p = w.cmd(&["pause", ID], &[]).json();
    assert_eq!(p["state"], "paused", "{p}");
    assert_eq!(w.cmd(&["run", ID], &[]).json()["state"], "paused");
    assert_eq!(w.prices(), (0, 0));
    assert_eq!(w.cmd(&["resume", ID], &[]).json()["state"], "pending");
    assert_eq!(w.cmd(&["run", ID], &[]).json()["state"], "succeeded");
}

#[test]
fn a_second_run_while_one_works_prints_running_and_exits_at_once() {
    let w = World::new();
    let mut first = w.slow_run();
    w.until_running(&mut first);
    let second = w.cmd(&["run", ID], &[]).json();
    assert_eq!(second["state"], "running", "{second}");
    assert!(
        first.running(),
        "the second run waited for the first to end"
    );
    let done = second["done"].as_i64().expect("done");
    assert!(done < ORDERS, "{second}");
    // Both would have inserted: the table has each row once at the end.
    assert_eq!(first.finish().json()["state"], "succeeded");
    assert_eq!(w.prices(), (ORDERS, total()));
}

#[test]
fn two_runs_started_at_once_on_a_fresh_database_both_answer_and_one_does_the_work() {
    let w = World::new();
    // Neither the checkpoint table nor its row exists yet: both make them.
    let mut a = w.slow_run();
    let mut b = w.slow_run();
    let (a, b) = (a.finish().json(), b.finish().json());
    let mut states = [a["state"].as_str(), b["state"].as_str()];
    states.sort();
    assert_eq!(states, [Some("running"), Some("succeeded")], "{a} {b}");
    assert_eq!(w.prices(), (ORDERS, total()));
    assert_eq!(w.status()["done"], ORDERS);
}

#[test]
fn a_tampered_price_makes_verify_fail_naming_the_total_and_the_differing_prices() {
    let w = World::new();
    assert_eq!(w.cmd(&["run", ID], &[]).json()["state"], "succeeded");
    w.sql_as_role("UPDATE order_prices SET price_cents = price_cents + 1 WHERE order_id = 42");
    let v = w.cmd(&["verify", ID], &[]).json();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["state"], "succeeded");
    let failing: Vec<&str> = v["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().expect("name"))
        .collect();
    assert_eq!(failing, ["price total", "prices that differ"], "{v}");
    let t = check(&v, "price total");
    assert_eq!(t["expected"], total().to_string());
    assert_eq!(t["actual"], (total() + 1).to_string());
    assert_eq!(check(&v, "prices that differ")["actual"], "1");
}

#[test]
fn orders_written_during_a_run_are_moved_once_and_dual_written_prices_kept() {
    let w = World::new();
    let mut run = w.slow_run();
    w.until_running(&mut run);
    // A release B binary writes both tables; a late order lands above
    // the checkpoint.
    w.sql_as_role(&format!(
        "BEGIN; INSERT INTO orders VALUES (4990 + {ORDERS}, '{{\"price_cents\": 7}}'); \
         INSERT INTO order_prices VALUES (4990 + {ORDERS}, 7); COMMIT; \
         INSERT INTO orders VALUES (9000 + {ORDERS}, '{{\"price_cents\": 11}}')"
    ));
    let s = run.finish().json();
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(w.prices(), (ORDERS + 2, total() + 18));
    let v = w.cmd(&["verify", ID], &[]).json();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn a_batch_that_fails_records_failed_and_a_run_after_the_fix_succeeds() {
    let w = World::new();
    w.sql_as_role(r#"UPDATE orders SET doc = '{"price_cents": "twelve"}' WHERE id = 2500"#);
    let s = w.cmd(&["run", ID], &[]).json();
    assert_eq!(s["state"], "failed", "{s}");
    let error = s["error"].as_str().expect("an error");
    assert!(error.contains("twelve"), "{error}");
    assert_eq!(
        s["done"], 2000,
        "the batches before the bad row stay done: {s}"
    );
    assert_eq!(w.status()["state"], "failed");
    w.sql_as_role(r#"UPDATE orders SET doc = '{"price_cents": 2255}' WHERE id = 2500"#);
    let s = w.cmd(&["run", ID], &[]).json();
    assert_eq!(
        (&s["state"], &s["error"]),
        (&"succeeded".into(), &Value::Null)
    );
    assert_eq!(s["done"], ORDERS);
    assert_eq!(w.cmd(&["verify", ID], &[]).json()["ok"], true);
}

#[test]
fn missing_settings_an_unknown_id_or_an_unreachable_database_exit_2_with_one_line() {
    let sample = |args: &[&str], env: &[(&str, &str)]| {
        Out::from(
            Command::new(bin("cutover-sample"))
                .arg("data-migrate")
                .args(args)
                .env_clear()
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .output()
                .expect("run cutover-sample"),
        )
    };
    sample(&["status", ID], &[]).refused_with("CUTOVER_SAMPLE_DATABASE_URL is not set");
    sample(&["frobnicate", ID], &[]).refused_with("usage: cutover-sample data-migrate");
    sample(&["run", "backfill_emails"], &[]).refused_with("the known ones are: backfill_prices");
    let nobody = format!("postgres://cutover@127.0.0.1:{}/billing", free_port());
    sample(&["status", ID], &[("CUTOVER_SAMPLE_DATABASE_URL", &nobody)])
        .refused_with("cannot connect");
    sample(
        &["status", ID],
        &[(
            "CUTOVER_SAMPLE_DATABASE_URL",
            "postgres://cutover:hunter2@127.0.0.1/billing",
        )],
    )
    .refused_with("carries a password");
    let w = World::new();
    w.cmd(&["run", ID], &[("CUTOVER_SAMPLE_BATCH", "0")])
        .refused_with("CUTOVER_SAMPLE_BATCH");
    w.cmd(&["run", ID], &[("CUTOVER_SAMPLE_BATCH_DELAY_MS", "999999")])
        .refused_with("CUTOVER_SAMPLE_BATCH_DELAY_MS");
    // The wrong password: the server refuses it.
    let wrong = w.pg.dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write a password file");
    let out = w.cmd(
        &["status", ID],
        &[(
            "CUTOVER_SAMPLE_PASSWORD_FILE",
            wrong.to_str().expect("utf-8"),
        )],
    );
    out.refused_with("cannot connect");
    assert!(!out.stderr.contains("not-the-password"), "{out:?}");
    assert_eq!(w.prices(), (0, 0));
}

/// One HTTP request to the sample service: (status code, body).
fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.trim().to_string()))
}

/// The sample service of a release with `SHAPE` `shape`, on a port of
/// its own, killed when dropped.
fn serve(w: &World, shape: &str) -> (Background, u16) {
    let dir = w.pg.dir.path().join(format!("release-{shape}"));
    std::fs::create_dir_all(&dir).expect("release dir");
    for (file, text) in [("VERSION", "2.0.0"), ("HEALTH", "ok"), ("SHAPE", shape)] {
        std::fs::write(dir.join(file), format!("{text}\n")).expect("release file");
    }
    let port = free_port();
    let child = Command::new(bin("cutover-sample"))
        .args(["--port", &port.to_string()])
        .current_dir(&dir)
        .env_clear()
        .env("CUTOVER_SAMPLE_DATABASE_URL", w.pg.url())
        .env("CUTOVER_SAMPLE_PASSWORD_FILE", &w.pg.password_file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sample service");
    let mut service = Background(Some(child));
    eventually(Duration::from_secs(30), "the service to answer", || {
        assert!(service.running(), "the service exited");
        http(port, "GET", "/healthz").filter(|(code, _)| *code == 200)
    });
    (service, port)
}

#[test]
fn a_release_b_service_writes_both_tables_and_the_backfill_completes_what_it_did_not_write() {
    let w = World::new();
    let (mut b, port) = serve(&w, "B");
    assert_eq!(
        http(port, "GET", "/orders/total"),
        Some((200, total().to_string()))
    );
    // A new order and a changed price, each written to both tables.
    let id = ORDERS + 1;
    assert_eq!(
        http(port, "POST", &format!("/orders/{id}?price_cents=250")),
        Some((200, "ok".into()))
    );
    let old = price(42);
    assert_eq!(
        http(port, "POST", "/orders/42?price_cents=1"),
        Some((200, "ok".into()))
    );
    let expected = total() + 250 - old + 1;
    assert_eq!(
        http(port, "GET", "/orders/total"),
        Some((200, expected.to_string()))
    );
    assert_eq!(w.prices(), (2, 251));
    assert_eq!(http(port, "POST", "/orders/7").map(|r| r.0), Some(400));
    // Behaviour without orders is as without SHAPE.
    assert_eq!(http(port, "GET", "/"), Some((200, "2.0.0".into())));
    b.kill();
    let s = w.cmd(&["run", ID], &[]).json();
    assert_eq!(s["state"], "succeeded", "{s}");
    assert_eq!(w.prices(), (ORDERS + 1, expected));
    assert_eq!(w.cmd(&["verify", ID], &[]).json()["ok"], true);
    // Release C reads order_prices alone: the same total.
    let (_c, port) = serve(&w, "C");
    assert_eq!(
        http(port, "GET", "/orders/total"),
        Some((200, expected.to_string()))
    );
}
