//! One writer at a time where writes must merge: advisory file locks (`flock(2)`).
//!
//! ```text
//! <study>/.rho-lock                          study lock: study.json, tokens.parquet, losses files and parts,
//!                                            trajectories and categories are published under it (never held
//!                                            while a checkpoint is scored)
//! <study>/losses/<name>.lock                 claim of checkpoint <name> while one process scores it
//! <study>/losses/<name>.part-I-of-N.lock     claim of shard I/N of <name> (`rho eval --shard I/N`)
//! <out>/.rho-run-lock                        run lock: held by `rho train` for the life of the run
//! ```
//! Each lock file holds its holder while it is held: one line of JSON, `{"pid", "host", "command",
//! "started"}` (seconds since the Unix epoch), so that an error or a wait message names it. The lock
//! is the `flock` on the open file, never the file's existence: a killed holder's lock is released
//! by the kernel with its last descriptor, and what it wrote is only a stale note. Claims are
//! removed by their holder on release (while still held; a process that waited on the removed
//! file finds it unlinked and opens the new one); the study and run locks stay, emptied.
//!
//! Linux maps `flock` to NFS byte-range locks, so processes on several machines sharing a study
//! over NFS exclude each other too. On a file system without locks (`ENOSYS`, `EOPNOTSUPP`,
//! `ENOLCK`: Lustre mounted without `-o flock`, some FUSE mounts) rho warns once and goes on
//! without excluding anyone, as before locks existed.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The study lock's file name.
pub const STUDY_LOCK: &str = ".rho-lock";
/// The run lock's file name.
pub const RUN_LOCK: &str = ".rho-run-lock";

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// The holder's command line (its first 300 characters).
    pub command: String,
    /// When it took the lock, seconds since the Unix epoch.
    pub started: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown host".into();
    }
    let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

impl Holder {
    /// This process, now.
    pub fn this_process() -> Holder {
        let mut command = std::env::args().collect::<Vec<_>>().join(" ");
        if let Some((i, _)) = command.char_indices().nth(300) {
            command.truncate(i);
            command.push('…');
        }
        Holder { pid: std::process::id(), host: hostname(), command, started: now() }
    }

    /// `pid 4242 on host-a (`rho eval --checkpoints …`), for 12 s`
    pub fn describe(&self) -> String {
        format!("pid {} on {} (`{}`), for {} s", self.pid, self.host, self.command, now().saturating_sub(self.started))
    }
}

/// How a busy lock's holder reads in a message (a holder that has not written itself yet is unknown).
pub fn describe(h: Option<&Holder>) -> String {
    h.map(Holder::describe).unwrap_or_else(|| "another process (it has not written its name yet)".into())
}

/// A held lock; released when dropped (a claim's file removed first).
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
    remove: bool,
    /// `false` on a file system without locks (warned about; nothing is excluded).
    held: bool,
    /// The holder was written (a lock file of another user is locked read-only).
    writable: bool,
}

/// [`Lock::try_take`]'s answer.
#[derive(Debug)]
pub enum Try {
    Taken(Lock),
    /// Held by someone else (as its lock file names it, when readable).
    Busy(Option<Holder>),
}

fn flock(f: &File, op: libc::c_int) -> std::io::Result<()> {
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn is_busy(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// A file system without `flock` (e.g. Lustre mounted without `-o flock`).
fn unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EOPNOTSUPP | libc::ENOLCK))
}

/// The warning about a file system without locks is given once per process.
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The holder written in a lock file: read a few times over ~0.5 s while it is being written.
fn read_holder(f: &File) -> Option<Holder> {
    for _ in 0..20 {
        let mut buf = vec![0u8; 4096];
        if let Ok(n) = f.read_at(&mut buf, 0) {
            if let Ok(h) = serde_json::from_slice::<Holder>(buf[..n].trim_ascii()) {
                return Some(h);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    None
}

impl Lock {
    /// Take the lock of `path` if it is free now (the file is created where missing, never
    /// through a symbolic link). `remove`: a claim, its file removed on release.
    pub fn try_take(path: &Path, remove: bool) -> Result<Try> {
        Ok(match Self::acquire(path, remove, None::<(Duration, fn(Option<&Holder>))>)? {
            Ok(l) => Try::Taken(l),
            Err(h) => Try::Busy(h),
        })
    }

    /// Take the lock of `path`, waiting for it; `on_wait` is told who holds it, once, when the
    /// lock is still held after `grace`.
    pub fn take(path: &Path, remove: bool, grace: Duration, on_wait: impl FnOnce(Option<&Holder>)) -> Result<Lock> {
        match Self::acquire(path, remove, Some((grace, on_wait)))? {
            Ok(l) => Ok(l),
            Err(h) => Err(Error::file(path, format!("could not wait for the lock held by {}", describe(h.as_ref())))),
        }
    }

    /// With `on_wait`, waits (telling it first); without, answers `Err(holder)` when busy.
    fn acquire<F: FnOnce(Option<&Holder>)>(
        path: &Path,
        remove: bool,
        on_wait: Option<(Duration, F)>,
    ) -> Result<std::result::Result<Lock, Option<Holder>>> {
        let wait = on_wait.is_some();
        let grace_end = on_wait.as_ref().map(|w| std::time::Instant::now() + w.0);
        let mut on_wait = on_wait.map(|w| w.1);
        loop {
            let open = |write: bool| {
                let mut o = std::fs::OpenOptions::new();
                o.read(true).custom_flags(libc::O_NOFOLLOW);
                if write {
                    o.write(true).create(true).truncate(false).mode(0o666); // less the umask, as other files
                }
                o.open(path)
            };
            // A lock file of another user that this one may not write: locked all the same, unnamed.
            let (file, writable) = match open(true) {
                Ok(f) => (f, true),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => (open(false).map_err(|_| Error::io(path, e))?, false),
                Err(e) => return Err(Error::io(path, e)),
            };
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(()) => {}
                Err(e) if unsupported(&e) => {
                    if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                        eprintln!(
                            "warning: {}: this file system has no file locks ({e}); rho goes on without excluding \
                             other writers: run one writer at a time on this folder",
                            path.display()
                        );
                    }
                    return Ok(Ok(Lock { file, path: path.to_path_buf(), remove, held: false, writable }));
                }
                Err(e) if is_busy(&e) && !wait => return Ok(Err(read_holder(&file))),
                Err(e) if is_busy(&e) => {
                    // Polled until the grace period ends (most holds are short), then told and waited for.
                    let mut got = false;
                    while !got && grace_end.is_some_and(|g| std::time::Instant::now() < g) {
                        std::thread::sleep(Duration::from_millis(10));
                        got = match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                            Ok(()) => true,
                            Err(e) if is_busy(&e) => false,
                            Err(e) => return Err(Error::io(path, e)),
                        };
                    }
                    if !got {
                        if let Some(f) = on_wait.take() {
                            f(read_holder(&file).as_ref());
                        }
                        flock(&file, libc::LOCK_EX).map_err(|e| Error::io(path, e))?;
                    }
                }
                Err(e) => return Err(Error::io(path, e)),
            }
            // A claim removed (released) or the file replaced between open and flock: open it again.
            let same = std::fs::symlink_metadata(path)
                .ok()
                .zip(file.metadata().ok())
                .is_some_and(|(p, f)| p.dev() == f.dev() && p.ino() == f.ino());
            if !same {
                continue;
            }
            if writable {
                let mut line = serde_json::to_vec(&Holder::this_process()).map_err(|e| Error::msg(e.to_string()))?;
                line.push(b'\n');
                file.set_len(0).and_then(|_| file.write_all_at(&line, 0)).map_err(|e| Error::io(path, e))?;
            }
            return Ok(Ok(Lock { file, path: path.to_path_buf(), remove, held: true, writable }));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // While still held: a claim's file removed, a lock file emptied (an empty lock file is a free one).
        if self.remove {
            let _ = std::fs::remove_file(&self.path);
        } else if self.held && self.writable {
            let _ = self.file.set_len(0);
        }
        // closing the file (dropping `self.file`) releases the flock
    }
}

/// Take the study lock of `study` (a folder that exists), waiting for it; unless `quiet`,
/// a wait of more than a second is announced naming the holder.
pub fn lock_study(study: &Path, quiet: bool) -> Result<Lock> {
    let p = study.join(STUDY_LOCK);
    Lock::take(&p, false, Duration::from_secs(1), |h| {
        if !quiet {
            eprintln!("rho: waiting for the study lock {}, held by {}", p.display(), describe(h));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_named_while_held() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(STUDY_LOCK);
        let a = match Lock::try_take(&p, false).unwrap() {
            Try::Taken(l) => l,
            Try::Busy(h) => panic!("free lock busy: {h:?}"),
        };
        // a second open file description conflicts, even in this process (the TUI's jobs are threads)
        match Lock::try_take(&p, false).unwrap() {
            Try::Busy(Some(h)) => {
                assert_eq!(h.pid, std::process::id());
                assert!(describe(Some(&h)).starts_with(&format!("pid {} on ", h.pid)), "{}", describe(Some(&h)));
            }
            other => panic!("held lock taken: {other:?}"),
        }
        drop(a);
        assert_eq!(std::fs::read(&p).unwrap(), b"", "released: the lock file is emptied");
        assert!(matches!(Lock::try_take(&p, false).unwrap(), Try::Taken(_)));
    }

    #[test]
    fn a_waiter_gets_the_lock_when_released_and_a_claim_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.lock");
        let a = Lock::take(&p, true, Duration::ZERO, |_| panic!("free")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let l = Lock::take(&p2, true, Duration::from_millis(20), |h| tx.send(h.map(|h| h.pid)).unwrap()).unwrap();
            assert!(p2.exists(), "the waiter holds a file at the path, not the removed one");
            drop(l);
        });
        assert_eq!(rx.recv().unwrap(), Some(std::process::id()), "the waiter was told the holder");
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(a); // removes c.lock while held: the waiter's descriptor is unlinked, it opens the path again
        t.join().unwrap();
        assert!(!p.exists(), "a released claim leaves no file");
    }

    #[test]
    fn a_symbolic_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let p = dir.path().join(RUN_LOCK);
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = Lock::try_take(&p, false).unwrap_err().to_string();
        assert!(e.contains(RUN_LOCK), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
