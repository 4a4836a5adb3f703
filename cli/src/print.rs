//! Every byte the CLI prints goes through here: a reader that closes its
//! end of the pipe (`cutover events | head -1`) ends the command quietly
//! with exit 0; any other failed write to stdout (a full disk behind a
//! redirect) ends it at once with exit 1 and one line on stderr, so that
//! `cutover hosts -o json > f && use f` never trusts a cut-short file; a
//! closed stderr is not a crash either.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe fails with
//! `BrokenPipe`, and std's `println!` panics on it (exit 101 and a panic
//! message). Restoring SIGPIPE's default action instead would need
//! `unsafe` (forbidden in this workspace) and would end the process by the
//! signal, not with exit 0, skipping the demo's clean-up of its children.
//! So the crate's `println!`, `print!`, `eprintln!` and `eprint!` are
//! these macros (`#[macro_use]` before every other module in `lib.rs`,
//! they shadow std's, so no print site can forget), and a closed stdout unwinds with
//! [`OutputClosed`] (a failed one with [`OutputFailed`]), which runs
//! destructors (the demo stops its fleet) and which `main` turns into
//! exit 0 (exit 1) (as rust-analyzer's salsa cancels a query with
//! `resume_unwind`). `resume_unwind` calls no panic hook, so nothing is
//! printed but `main`'s one line.

use std::io::Write;

/// The payload of the unwind that a closed stdout starts.
#[derive(Debug)]
pub struct OutputClosed;

/// The payload of the unwind that any other failed write to stdout
/// starts: why, in words.
#[derive(Debug)]
pub struct OutputFailed(pub String);

/// Ends the command quietly: the reader of stdout has gone.
pub fn closed() -> ! {
    std::panic::resume_unwind(Box::new(OutputClosed))
}

/// Whether a caught unwind is [`closed`]'s.
pub fn is_output_closed(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<OutputClosed>()
}

/// What a failed write to stdout means: a closed pipe ends the command
/// quietly; anything else (a full disk behind a redirect) ends it with
/// [`OutputFailed`]: what was printed is incomplete.
pub fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        closed();
    }
    std::panic::resume_unwind(Box::new(OutputFailed(format!(
        "cannot write the output: {e}; what was written is incomplete (check the disk or file behind the redirect)"
    ))))
}

/// Why a caught unwind is [`stdout_failed`]'s, if it is.
pub fn output_failed(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<OutputFailed>().map(|f| f.0.as_str())
}

/// Writes to stdout ([`stdout_failed`] on failure).
pub fn out(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        drop(stdout);
        stdout_failed(&e);
    }
}

/// Writes to stderr; a failure is dropped, there is nowhere left to say it.
pub fn err(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

macro_rules! println {
    () => { $crate::print::out(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::out(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! print {
    ($($arg:tt)*) => { $crate::print::out(format_args!($($arg)*)) };
}

macro_rules! eprintln {
    () => { $crate::print::err(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::print::err(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! eprint {
    ($($arg:tt)*) => { $crate::print::err(format_args!($($arg)*)) };
}
