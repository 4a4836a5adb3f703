//! One agent per data directory: an exclusive `flock` on
//! `DATA_DIR/agent.lock`, taken before anything else reads or writes the
//! directory and held for the agent's whole life, with the holder's pid
//! written in the file so that a second agent can name it.
//!
//! The lock is on the open file, not on its contents: the kernel drops it
//! when the holder exits, however it exits, so a stale file never blocks a
//! restart. The file is opened close-on-exec, so service processes the
//! agent starts (which outlive it by design) never hold it. The pid is
//! written in place, not through `fsutil::write_atomic`: a rename would
//! put a new, unlocked file under the name.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::{Error, Result};

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "agent.lock";

/// The most bytes of a lock file read for the holder's pid.
const MAX_PID_BYTES: u64 = 32;

/// Held while the agent runs; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: Flock<File>,
    pub path: PathBuf,
}

/// Creates `data_dir` if needed and takes its lock, or says which process
/// holds it.
pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    let path = data_dir.join(LOCK_FILE);
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?
    };
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            return Err(Error::DataDirInUse {
                data_dir: data_dir.to_path_buf(),
                holder: holder_pid(&mut file),
            })
        }
        Err((_, errno)) => {
            return Err(Error::Io {
                path: path.clone(),
                source: std::io::Error::other(format!(
                    "cannot lock it ({errno}); the data directory must be on a file system with flock(2)"
                )),
            })
        }
    };
    let pid = format!("{}\n", std::process::id());
    let written = (|| -> std::io::Result<()> {
        locked.set_len(0)?;
        locked.rewind()?;
        locked.write_all(pid.as_bytes())?;
        locked.sync_data()
    })();
    written.map_err(|e| Error::io(&path, e))?;
    Ok(DataDirLock {
        _file: locked,
        path,
    })
}

/// The pid the holder wrote, if the file holds one (it may not yet).
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(MAX_PID_BYTES).read_to_string(&mut text).ok()?;
    text.trim().parse().ok().filter(|p| *p > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_data_dir_is_refused_naming_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let held = acquire(&data).unwrap();
        let pid = std::fs::read_to_string(data.join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        // flock(2) locks belong to the open file: a second open in this
        // very process is refused as a second agent would be.
        let e = acquire(&data).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && !e.contains('\n'),
            "{e}"
        );
        assert!(e.contains(&data.display().to_string()), "{e}");
        drop(held);
        let again = acquire(&data).unwrap();
        assert_eq!(again.path, data.join(LOCK_FILE));
    }

    #[test]
    fn a_holder_whose_pid_cannot_be_read_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let file = File::create(&path).unwrap();
        let _held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        std::fs::write(&path, "not a pid").unwrap();
        let e = acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains("unknown pid") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_lock_file_that_cannot_be_opened_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(LOCK_FILE)).unwrap();
        let e = acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(LOCK_FILE), "{e}");
    }

    #[test]
    fn a_stale_lock_file_left_by_a_dead_agent_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "999999\n").unwrap();
        acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid, format!("{}\n", std::process::id()));
    }
}
