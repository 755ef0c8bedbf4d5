//! Temporary names rho owns: what rho writes before renaming into place, and the only
//! things its clean-ups ever delete or rename.
//!
//! ```text
//! <final name>.rho-tmp-<pid>-<start>-<host>-<n>   a file or folder being written
//! <final name>.rho-old-<pid>-<start>-<host>-<n>   a folder moved aside while its replacement is renamed in
//! ```
//! `pid`: the owning process; `start`: its start time (field 22 of `/proc/<pid>/stat`, clock
//! ticks since boot; 0 where there is no `/proc`); `host`: 8 hex digits of a hash of the host
//! name and the pid namespace (so that a process never judges another machine's or container's
//! pids); `n`: a counter within the process (threads of one process write side by side).
//!
//! Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW` ([`create_file`]), folders with
//! `mkdir` ([`create_dir`]): an entry already at the name (a planted symlink, anything) is an
//! error, never opened or followed. [`remove_stale`] removes (or, for `.rho-old-`, puts back)
//! only entries whose name parses exactly as above and whose owner is gone: same host, and no
//! process with that pid, or one that started at another time. Everything else in a folder (the
//! user's `thesis.old-v1`, `photos.tmp-2024`, `notes.tmp`, another host's temporaries, a live
//! process's) is never touched.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What a temporary name is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `.rho-tmp-`: being written; renamed onto the final name when complete.
    Tmp,
    /// `.rho-old-`: the previous version of a folder, moved aside for the swap.
    Old,
}

impl Kind {
    pub fn marker(self) -> &'static str {
        match self {
            Kind::Tmp => ".rho-tmp-",
            Kind::Old => ".rho-old-",
        }
    }
}

/// The process that owns a temporary name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22), 0 when unknown.
    pub start: u64,
    /// 8 lowercase hex digits: the host (name and pid namespace).
    pub host: String,
}

/// This process.
pub fn me() -> &'static Owner {
    static ME: OnceLock<Owner> = OnceLock::new();
    ME.get_or_init(|| {
        let pid = std::process::id();
        Owner { pid, start: start_time(pid).unwrap_or(0), host: host_tag() }
    })
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn host_tag() -> String {
    let mut id: Vec<u8> = Vec::new();
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is writable for its whole length; gethostname truncates.
        if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } == 0 {
            id.extend(buf.iter().take_while(|&&b| b != 0));
        }
    }
    id.push(0);
    if let Ok(ns) = std::fs::read_link("/proc/self/ns/pid") {
        id.extend(ns.to_string_lossy().as_bytes());
    }
    format!("{:08x}", fnv1a(&id) as u32)
}

/// Start time of a process (clock ticks since boot), from `/proc/<pid>/stat`; `None` when
/// there is no such process (or no `/proc`).
pub fn start_time(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`: comm may hold spaces and parentheses; fields after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether a process with this pid exists (any owner), by `kill(pid, 0)`.
fn pid_exists(pid: u32) -> bool {
    let Ok(p) = i32::try_from(pid) else { return false };
    if p <= 0 {
        return false;
    }
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        if unsafe { libc::kill(p, 0) } == 0 {
            return true;
        }
        std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Whether the owner of a temporary name is gone, so that its temporaries can be cleaned:
/// on this host only, and never this process.
pub fn owner_gone(o: &Owner) -> bool {
    let me = me();
    if o.host != me.host {
        return false;
    }
    if o.pid == me.pid && o.start == me.start {
        return false;
    }
    match start_time(o.pid) {
        Some(s) => s != o.start,
        None if Path::new("/proc/self/stat").exists() => true,
        None => !pid_exists(o.pid),
    }
}

/// A temporary name parsed back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub kind: Kind,
    /// The final name it stands for.
    pub base: &'a str,
    pub owner: Owner,
    pub n: u64,
}

fn digits<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parse a file name as a temporary name of rho's exact pattern; `None` for anything else.
pub fn parse(name: &str) -> Option<Parsed<'_>> {
    for kind in [Kind::Tmp, Kind::Old] {
        let Some(i) = name.rfind(kind.marker()) else { continue };
        let base = &name[..i];
        let fields: Vec<&str> = name[i + kind.marker().len()..].split('-').collect();
        let [pid, start, host, n] = fields[..] else { continue };
        let hex = host.len() == 8 && host.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if base.is_empty() || !hex {
            continue;
        }
        let (Some(pid), Some(start), Some(n)) = (digits(pid), digits(start), digits(n)) else { continue };
        return Some(Parsed { kind, base, owner: Owner { pid, start, host: host.to_string() }, n });
    }
    None
}

/// Whether a file name is one of rho's temporary names (of any owner).
pub fn is_temp_name(name: &str) -> bool {
    parse(name).is_some()
}

/// The temporary name of `owner` for `path` (tests plant other owners' names with it).
pub fn name_of(path: &Path, kind: Kind, owner: &Owner, n: u64) -> Result<PathBuf> {
    let Some(name) = path.file_name() else {
        return Err(Error::file(path, "not a file name: cannot write it"));
    };
    let mut name = name.to_os_string();
    name.push(format!("{}{}-{}-{}-{n}", kind.marker(), owner.pid, owner.start, owner.host));
    Ok(path.with_file_name(name))
}

/// A fresh temporary name of this process for `path`, in the same folder.
pub fn name(path: &Path, kind: Kind) -> Result<PathBuf> {
    static N: AtomicU64 = AtomicU64::new(0);
    name_of(path, kind, me(), N.fetch_add(1, Ordering::Relaxed))
}

/// Create a new file for writing: fails if anything is at `path` (a symlink included), never follows a link.
pub fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path)
}

/// The error of [`create_file`] / [`create_dir`]: an entry already at a fresh temporary
/// name was not made by this process (planted, or a link), and is said so.
pub fn create_error(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::AlreadyExists || e.raw_os_error() == Some(libc::ELOOP) {
        Error::file(path, "exists already, and this process did not make it: rho writes only through temporaries it creates itself, never through an existing entry or a link; remove it")
    } else {
        Error::io(path, e)
    }
}

/// Create a new folder: fails if anything is at `path` (a symlink included).
pub fn create_dir(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir(path)
}

/// Remove rho's temporaries in `dir` (not below) whose owner is gone ([`owner_gone`]):
/// a `.rho-tmp-` file or folder is deleted; a `.rho-old-` one is deleted when its final
/// name exists, else renamed back to it (a swap that never finished). Returns what it
/// removed or put back. Never follows a symlink; errors are ignored (best effort).
pub fn remove_stale(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else { return done };
    for e in rd.flatten() {
        let fname = e.file_name();
        let Some(p) = fname.to_str().and_then(parse) else { continue };
        if !owner_gone(&p.owner) {
            continue;
        }
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        let remove = |path: &Path| if ft.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
        let ok = match p.kind {
            Kind::Tmp => remove(&path).is_ok(),
            Kind::Old => {
                let base = dir.join(p.base);
                if std::fs::symlink_metadata(&base).is_ok() {
                    remove(&path).is_ok()
                } else {
                    std::fs::rename(&path, &base).is_ok()
                }
            }
        };
        if ok {
            done.push(path);
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_nothing_else_does() {
        let p = name(Path::new("/s/trajectories.parquet"), Kind::Tmp).unwrap();
        let n = p.file_name().unwrap().to_str().unwrap();
        let got = parse(n).unwrap();
        assert_eq!((got.kind, got.base, &got.owner), (Kind::Tmp, "trajectories.parquet", me()));
        let q = name(Path::new("step-10"), Kind::Old).unwrap();
        assert_eq!(parse(q.to_str().unwrap()).unwrap().kind, Kind::Old);
        assert_ne!(p, name(Path::new("/s/trajectories.parquet"), Kind::Tmp).unwrap(), "a fresh name each time");
        for user in [
            "thesis.old-v1",
            "photos.tmp-2024",
            "drafts.old-2023",
            "notes.tmp",
            "step-6.tmp-999",
            "x.parquet.123.tmp",
            "a.rho-tmp-1-2-3",
            "a.rho-tmp-1-2-abcdefgh-0",
            "a.rho-tmp-1-2-ABCDEF01-0",
            "a.rho-tmp-+1-2-abcdef01-0",
            "a.rho-tmp-1-2-abcdef01-0-5",
            "a.rho-tmp-1-2-abcdef01-",
            ".rho-tmp-1-2-abcdef01-0",
            "a.rho-tmp-1--abcdef01-0",
        ] {
            assert!(parse(user).is_none(), "{user}");
        }
        assert!(parse("a.rho-tmp-1-2-abcdef01-0").is_some());
        assert!(name(Path::new("/"), Kind::Tmp).is_err());
        assert!(name(Path::new("a/.."), Kind::Tmp).is_err());
    }

    #[test]
    fn this_process_is_alive_and_its_start_time_is_read() {
        let me = me();
        assert!(me.start > 0, "start time from /proc/self/stat");
        assert_eq!(start_time(me.pid), Some(me.start));
        assert!(!owner_gone(me));
        // the same pid with another start time: a process that is gone (its pid reused)
        assert!(owner_gone(&Owner { start: me.start + 1, ..me.clone() }));
        // no such pid (beyond any pid_max)
        assert!(owner_gone(&Owner { pid: 2_000_000_000, ..me.clone() }));
        // another host's: never judged gone
        assert!(!owner_gone(&Owner { pid: 2_000_000_000, host: "00000000".into(), ..me.clone() }));
    }

    #[test]
    fn remove_stale_touches_only_dead_owners_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = Owner { pid: 2_000_000_000, ..me().clone() };
        let other_host = Owner { host: if me().host == "00000000" { "00000001".into() } else { "00000000".into() }, ..dead.clone() };
        let mk = |p: &Path| std::fs::write(p, b"x").unwrap();
        let dead_tmp = name_of(&d.join("a.parquet"), Kind::Tmp, &dead, 0).unwrap();
        mk(&dead_tmp);
        let dead_dir = name_of(&d.join("step-1"), Kind::Tmp, &dead, 1).unwrap();
        std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
        let live = name(&d.join("b.parquet"), Kind::Tmp).unwrap();
        mk(&live);
        let remote = name_of(&d.join("c.parquet"), Kind::Tmp, &other_host, 0).unwrap();
        mk(&remote);
        // an old folder whose swap never finished: put back; one whose final name exists: removed
        let old_back = name_of(&d.join("step-2"), Kind::Old, &dead, 2).unwrap();
        std::fs::create_dir(&old_back).unwrap();
        mk(&old_back.join("f"));
        std::fs::create_dir(d.join("step-3")).unwrap();
        let old_gone = name_of(&d.join("step-3"), Kind::Old, &dead, 3).unwrap();
        std::fs::create_dir(&old_gone).unwrap();
        let users = ["thesis.old-v1", "photos.tmp-2024", "drafts.old-2023", "notes.tmp", "x.parquet.77.tmp"];
        for u in users {
            mk(&d.join(u));
        }
        // a planted link with a dead owner's name: the link goes, its target stays
        let target = d.join("target");
        mk(&target);
        let link = name_of(&d.join("l"), Kind::Tmp, &dead, 4).unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let done = remove_stale(d);
        assert_eq!(done.len(), 5, "{done:?}");
        for p in [&dead_tmp, &dead_dir, &old_back, &old_gone, &link] {
            assert!(std::fs::symlink_metadata(p).is_err(), "{} left", p.display());
        }
        assert_eq!(std::fs::read(d.join("step-2/f")).unwrap(), b"x", "put back");
        for p in [&live, &remote, &target] {
            assert_eq!(std::fs::read(p).unwrap(), b"x", "{} touched", p.display());
        }
        for u in users {
            assert_eq!(std::fs::read(d.join(u)).unwrap(), b"x", "{u} touched");
        }
    }

    #[test]
    fn create_file_never_follows_or_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_file(&link).is_err());
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(create_file(&dangling).is_err());
        assert!(!dir.path().join("nowhere").exists(), "a dangling link was followed");
        assert!(create_file(&target).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(create_dir(&link).is_err());
        create_file(&dir.path().join("new")).unwrap();
    }
}
