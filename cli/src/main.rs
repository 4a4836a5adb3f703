//! `cutover`: parse, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cutover_cli::Cli::parse();
    cutover_runtime::init_logging(cutover_runtime::LogFormat::Text, "warn");
    let runtime = match cutover_runtime::start(Some(2)) {
        Ok(r) => r,
        Err(e) => {
            cutover_cli::print::err(format_args!("cutover: {e}\n"));
            return ExitCode::FAILURE;
        }
    };
    // A closed stdout unwinds out of the command (cutover_cli::print): the
    // reader chose to stop, so that is a quiet success; a failed one is a
    // failure, said once.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(cutover_cli::run(cli))
    }));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            // An error may quote the controller or a peer: escaped.
            cutover_cli::print::err(format_args!(
                "cutover: {}\n",
                cutover_cli::output::escape(&e.to_string())
            ));
            ExitCode::from(e.exit_code())
        }
        Err(payload) if cutover_cli::print::is_output_closed(&*payload) => ExitCode::SUCCESS,
        Err(payload) => match cutover_cli::print::output_failed(&*payload) {
            Some(why) => {
                cutover_cli::print::err(format_args!("cutover: {why}\n"));
                ExitCode::FAILURE
            }
            None => std::panic::resume_unwind(payload),
        },
    }
}
