//! `cutover-sample`: the service the demo and the system tests roll out.
//! It serves `GET /healthz` on `--port` from its release directory: `200 ok`
//! when the release's `HEALTH` file says `ok`, `503` with the file's text
//! otherwise; `GET /` answers with the contents of `VERSION`. Standard
//! library only, so a release tarball is this one static-ish binary plus
//! two text files.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};

fn main() {
    let mut port: u16 = 8080;
    let mut args = std::env::args().skip(1);
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
    let listener = TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| fail(&format!("cannot listen on 127.0.0.1:{port}: {e}")));
    println!("cutover-sample {version} listening on 127.0.0.1:{port}");
    for stream in listener.incoming().flatten() {
        // HEALTH is read per request so a test can make a release sick.
        let health = read("HEALTH");
        if let Err(e) = answer(stream, &version, &health) {
            eprintln!("request failed: {e}");
        }
    }
}

fn answer(stream: TcpStream, version: &str, health: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let (status, body) = match path.as_str() {
        "/healthz" if health == "ok" => ("200 OK", format!("ok {version}\n")),
        "/healthz" => ("503 Service Unavailable", format!("unhealthy: {health}\n")),
        "/" => ("200 OK", format!("{version}\n")),
        _ => ("404 Not Found", "not found\n".to_string()),
    };
    let mut out = stream;
    write!(out, "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    out.flush()
}

fn fail(msg: &str) -> ! {
    eprintln!("cutover-sample: {msg}");
    std::process::exit(2)
}
