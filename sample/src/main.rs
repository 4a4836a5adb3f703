//! `cutover-sample`: the service the demo and the system tests roll out.
//! `cutover-sample --port PORT` serves HTTP (see [`cutover_sample::http`]);
//! `cutover-sample data-migrate …` is the data migration protocol of
//! `docs/data-migrations.md` on PostgreSQL (see
//! [`cutover_sample::data_migrate`]). This file only picks one.

fn main() {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(a) => args.push(a),
            Err(a) => {
                eprintln!("cutover-sample: argument {a:?} is not UTF-8; pass UTF-8 arguments");
                std::process::exit(2);
            }
        }
    }
    if let Some(("data-migrate", rest)) = args.split_first().map(|(a, r)| (a.as_str(), r)) {
        std::process::exit(cutover_sample::data_migrate::main(rest));
    }
    cutover_sample::http::serve(&args)
}
