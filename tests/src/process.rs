//! A controller process a test started itself (outside the [`crate::Fleet`]
//! fixture, to choose its arguments, environment or limits): signalled,
//! awaited, its log read, and killed when dropped (the log is printed if
//! the test panicked).

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::eventually;

pub struct ControllerProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl ControllerProcess {
    /// `child` writes its stderr to `log`.
    pub fn new(child: Child, log: PathBuf) -> ControllerProcess {
        ControllerProcess {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, signal: Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal)
            .expect("signal controller");
    }

    /// Waits for the process to exit on its own (the bound only keeps a
    /// controller that never exits from hanging the test).
    pub fn wait_exit(&mut self, bound: Duration, what: &str) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let status = eventually(bound, what, || child.try_wait().expect("try_wait"));
        self.child = None;
        status
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", self.log());
        }
    }
}
