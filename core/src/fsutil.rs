//! Durable file writes: write a temporary file, fsync it, rename it over the
//! target, fsync the directory. A crash leaves either the old or the new file.
//! And bounded reads of files that may be of any size.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// Atomically replaces `path` with `bytes`, with the given Unix mode.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Makes what changed in `dir`'s entries (a rename into it, a new name)
/// durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Reads a file to a string, naming the file on failure.
pub fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Reads the whole of `file` (opened from `path`, however the caller
/// chose to open it) if it holds at most `max` bytes: its size is checked
/// before it is read, and no more than `max + 1` bytes are ever read, so a
/// file that grows meanwhile (or a FIFO, whose size says nothing) is
/// refused too, with [`Error::TooLarge`].
pub fn read_bounded(file: fs::File, path: &Path, max: u64) -> Result<Vec<u8>> {
    let too_large = |len: u64| Error::TooLarge {
        path: path.to_path_buf(),
        len,
        max,
    };
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len > max {
        return Err(too_large(len));
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// The absolute directory a config file's relative paths are taken from:
/// the file's own directory, made absolute against the working directory
/// now, so that a relative `--config agent.toml` (whose parent is empty)
/// does not leave paths relative to whatever directory a service manager
/// later runs from.
pub fn config_dir(config: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = config
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    std::path::absolute(dir)
}

/// Checks that the file config key `key` names can be opened for reading:
/// the one line names the key, the path and what to do.
pub fn config_file_readable(key: &str, path: &Path) -> std::result::Result<(), String> {
    match fs::File::open(path) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "{key} = {:?}: cannot read it ({e}); fix the path in this file or put the file there",
            path.display().to_string()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_config_file_that_cannot_be_read_is_named_by_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let e = config_file_readable("tls.ca_cert", &missing).unwrap_err();
        assert!(
            e.starts_with("tls.ca_cert = \"") && e.contains("ca.pem") && e.contains("No such file"),
            "{e}"
        );
        std::fs::write(&missing, "x").unwrap();
        config_file_readable("tls.ca_cert", &missing).unwrap();
    }

    #[test]
    fn replaces_file_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_bounded_read_takes_a_file_up_to_its_bound_and_refuses_a_larger_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"12345").unwrap();
        let open = || fs::File::open(&path).unwrap();
        assert_eq!(read_bounded(open(), &path, 5).unwrap(), b"12345");
        match read_bounded(open(), &path, 4) {
            Err(Error::TooLarge { len: 5, max: 4, .. }) => {}
            other => panic!("{other:?}"),
        }
        let e = read_bounded(open(), &path, 4).unwrap_err().to_string();
        assert!(
            e.ends_with("f: 5 bytes, more than the 4 it may have"),
            "{e}"
        );
    }

    #[test]
    fn a_bounded_read_of_a_fifo_stops_after_its_bound() {
        // A FIFO's size says 0: only the bytes read can show it is too
        // long, and no more than the bound and one are read.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix_mkfifo(&path);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut w = fs::OpenOptions::new().write(true).open(&path).unwrap();
                // More than the pipe holds: the writer only finishes if
                // the reader keeps reading, so it may fail once it stops.
                let _ = w.write_all(&[b'x'; 4096]);
            })
        };
        let file = fs::File::open(&path).unwrap();
        match read_bounded(file, &path, 100) {
            Err(Error::TooLarge {
                len: 101, max: 100, ..
            }) => {}
            other => panic!("{other:?}"),
        }
        writer.join().unwrap();
    }

    fn nix_mkfifo(path: &Path) {
        let status = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}
