//! The HTTP service: `GET /healthz` on `--port` from the release directory
//! (the working directory): `200 ok` when the release's `HEALTH` file says
//! `ok`, `503` with the file's text otherwise; `GET /` answers with the
//! contents of `VERSION`. Standard library only, one request at a time.
//! A release whose `SHAPE` file says `A`, `B` or `C` also serves its
//! orders from the database `CUTOVER_SAMPLE_DATABASE_URL` names
//! ([`crate::orders`]); without one it touches no database.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

use crate::orders::{Orders, Request, Shape};

/// Serves until killed; `args` are the command line after the program
/// name. A bad argument or a port it cannot listen on exits 2.
pub fn serve(args: &[String]) {
    let mut port: u16 = 8080;
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--port", Some(p)) => match p.parse() {
                Ok(p) => port = p,
                Err(_) => fail(&format!("--port {p:?} is not a port number")),
            },
            _ => fail("usage: cutover-sample --port PORT"),
        }
    }
    let read = |name: &str| {
        std::fs::read_to_string(name)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let version = read("VERSION");
    let orders = match Shape::parse(&read("SHAPE")) {
        Ok(None) => None,
        Ok(Some(shape)) => match Orders::new(shape, &|name| std::env::var_os(name)) {
            Ok(o) => Some(o),
            Err(e) => fail(&format!("SHAPE {shape:?}: {e}")),
        },
        Err(e) => fail(&e),
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| fail(&format!("cannot listen on 127.0.0.1:{port}: {e}")));
    println!("cutover-sample {version} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        // HEALTH is read per request so a test can make a release sick.
        let health = read("HEALTH");
        if let Err(e) = answer(stream, &version, &health, orders.as_ref()) {
            eprintln!("request failed: {e}");
        }
    }
}

fn answer(
    stream: TcpStream,
    version: &str,
    health: &str,
    orders: Option<&Orders>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let method = request
        .split_whitespace()
        .next()
        .unwrap_or("GET")
        .to_string();
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let asked = orders.and_then(|o| Some((o, Request::parse(&method, &path)?)));
    let (status, body) = match (asked, path.as_str()) {
        (Some((orders, Ok(request))), _) => match orders.answer(request) {
            Ok(body) => ("200 OK", body),
            Err(e) => ("503 Service Unavailable", format!("{e}\n")),
        },
        (Some((_, Err(why))), _) => ("400 Bad Request", format!("{why}\n")),
        (None, path) => match path {
            "/healthz" if health == "ok" => ("200 OK", format!("ok {version}\n")),
            "/healthz" => ("503 Service Unavailable", format!("unhealthy: {health}\n")),
            "/" => ("200 OK", format!("{version}\n")),
            _ => ("404 Not Found", "not found\n".to_string()),
        },
    };
    let mut out = stream;
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()
}

fn fail(msg: &str) -> ! {
    eprintln!("cutover-sample: {msg}");
    std::process::exit(2)
}
