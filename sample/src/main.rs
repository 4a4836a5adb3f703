//! `cutover-sample`: the service the demo and the system tests roll out.
//! `cutover-sample --port PORT` serves HTTP (see [`cutover_sample::http`]);
//! `cutover-sample data-migrate …` is the data migration protocol of
//! `docs/data-migrations.md` on PostgreSQL (see
//! [`cutover_sample::data_migrate`]); `cutover-sample tables` counts the
//! database's tables (`cutover demo --postgres` asks it first). This
//! file only picks one.

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
    match args.split_first().map(|(a, r)| (a.as_str(), r)) {
        Some(("data-migrate", rest)) => {
            std::process::exit(cutover_sample::data_migrate::main(rest))
        }
        Some(("tables", [])) => std::process::exit(cutover_sample::db::tables_main()),
        _ => {}
    }
    cutover_sample::http::serve(&args)
}
