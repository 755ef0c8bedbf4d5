//! Bounds on what rho reads: every count and size that comes from a flag or a file is
//! checked against what the data can hold before anything is allocated for it, and the
//! error names the flag, file or key. Also the helpers that keep errors short.
//!
//! | what                                   | bound                                              |
//! |----------------------------------------|----------------------------------------------------|
//! | a data file (`--data`)                 | a regular file; a line (JSON Lines) or a document of at most [`MAX_DOC_BYTES`] |
//! | a JSON record, study.json, trainer_state.json, a TOML config | a regular file of at most [`MAX_JSON_BYTES`] |
//! | shards (`--shard I/N`, `--shards`, part records, study.json) | N <= [`crate::eval::shard::MAX_SHARDS`], and (eval) N <= the tokens to score |
//! | `--batch-tokens` of train, eval, score | the batch's logits must fit in the machine's memory (CPU) |
//! | an error message                       | lists cut to a few items ([`brief_list`]); the binary prints at most [`MAX_ERROR_LINES`] lines |

use crate::error::{Error, Result, WithPath};
use std::path::Path;

/// The longest line of a JSON Lines data file, or document of a plain-text or Parquet data
/// file, that rho reads (32 MiB): a longer one is an error naming the file and the line
/// (a file of one endless line is refused after this much, so memory stays bounded).
pub const MAX_DOC_BYTES: usize = 32 << 20;

/// The largest JSON or TOML file rho reads whole: study.json, part records,
/// trainer_state.json, categories.json, `--config` (64 MiB).
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// The largest tokenizer.json rho reads (256 MiB; those of 256k-token vocabularies are ~35 MB).
pub const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// The binary prints at most this many lines of an error, and at most [`MAX_ERROR_CHARS`].
pub const MAX_ERROR_LINES: usize = 12;
pub const MAX_ERROR_CHARS: usize = 4000;

/// An error message cut to [`MAX_ERROR_LINES`] lines and [`MAX_ERROR_CHARS`] characters,
/// saying how much was left out.
pub fn brief_error(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().collect();
    let mut out = lines.iter().take(MAX_ERROR_LINES).copied().collect::<Vec<_>>().join("\n");
    if lines.len() > MAX_ERROR_LINES {
        out += &format!("\n... and {} more lines", lines.len() - MAX_ERROR_LINES);
    }
    if out.chars().count() > MAX_ERROR_CHARS {
        let total = out.chars().count();
        out = out.chars().take(MAX_ERROR_CHARS).collect::<String>() + &format!(" ... ({} more characters)", total - MAX_ERROR_CHARS);
    }
    out
}


/// `items` joined with `sep`, at most `max` of them: the rest as `... and N more`, so that
/// an error or a status line about a long list stays short.
pub fn brief_list<T: std::fmt::Display>(items: &[T], sep: &str, max: usize) -> String {
    let mut out: Vec<String> = items.iter().take(max).map(|x| x.to_string()).collect();
    if items.len() > max {
        out.push(format!("... and {} more", items.len() - max));
    }
    out.join(sep)
}

/// Read a whole file that rho expects to be small (a JSON record, a manifest, a config):
/// refused, naming the file, when it is not a regular file (a FIFO, a device such as
/// /dev/zero: they would be read without end) or when it holds more than `max` bytes
/// (`what` says what the file is, for the message). Memory is bounded by `max`.
pub fn read_bounded(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata().with_path(path)?.len();
    if len > max {
        return Err(Error::file(path, format!("is {len} bytes, more than the {max} bytes {what} may have")));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    f.take(max + 1).read_to_end(&mut bytes).with_path(path)?;
    if bytes.len() as u64 > max {
        return Err(Error::file(path, format!("grew beyond the {max} bytes {what} may have while it was read")));
    }
    Ok(bytes)
}

/// Open a file for reading, refusing (naming it) anything but a regular file, checked on
/// the opened file itself. Opening a FIFO would block: O_NONBLOCK makes the open return at
/// once, and the check then refuses it.
pub fn open_regular(path: &Path) -> Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let f = o.open(path).with_path(path)?;
    let ft = f.metadata().with_path(path)?.file_type();
    if !ft.is_file() {
        return Err(Error::file(path, format!("is not a regular file (it is {})", file_kind(&ft))));
    }
    #[cfg(unix)]
    {
        // Back to blocking reads (a regular file never blocks, but keep the usual semantics).
        use std::os::unix::io::AsRawFd;
        // SAFETY: fcntl on a valid, owned descriptor.
        unsafe {
            let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
            if fl >= 0 {
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
            }
        }
    }
    Ok(f)
}

/// What a file that is not a regular file is, in words.
fn file_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a FIFO (named pipe); rho reads its inputs more than once: save it to a file first";
        }
        if ft.is_char_device() {
            return "a character device";
        }
        if ft.is_block_device() {
            return "a block device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    if ft.is_dir() {
        "a folder"
    } else {
        "something else"
    }
}

/// The machine's physical memory in bytes (`None` where it cannot be read).
pub fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads system constants.
        let (pages, size) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && size > 0 {
            return Some((pages as u64).saturating_mul(size as u64));
        }
    }
    None
}

/// `n` bytes in words: `1.5 GiB`.
pub fn human_bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Refuse a batch size (`flag`, e.g. `--batch-tokens`) whose `tokens` need more memory than
/// the machine has: `bytes_per_token` each, for `what` (e.g. "the logits (vocabulary 50304,
/// f32)"). Checked before anything is allocated for the batch, so an absurd value is an
/// error naming the flag, not an abort in the allocator.
pub fn check_batch_memory(flag: &str, value: u128, tokens: u128, bytes_per_token: u128, what: &str) -> Result<()> {
    let need = tokens.saturating_mul(bytes_per_token);
    match physical_memory() {
        Some(have) if need > have as u128 => Err(Error::flag(
            flag,
            format!(
                "{value}: a batch of {tokens} tokens needs at least {} for {what}, more than this machine's memory ({}); \
                 give a smaller {flag}",
                human_bytes(need),
                human_bytes(have as u128)
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_errors_are_cut_short() {
        assert_eq!(brief_list(&[1, 2, 3], ", ", 5), "1, 2, 3");
        assert_eq!(brief_list(&[1, 2, 3, 4], ", ", 2), "1, 2, ... and 2 more");
        assert_eq!(brief_list::<u32>(&[], ", ", 2), "");
        let many: Vec<String> = (0..100).map(|i| format!("line {i}")).collect();
        let e = brief_error(&many.join("\n"));
        assert_eq!(e.lines().count(), MAX_ERROR_LINES + 1, "{e}");
        assert!(e.ends_with("... and 88 more lines"), "{e}");
        let long = "x".repeat(100_000);
        let e = brief_error(&long);
        assert!(e.len() < MAX_ERROR_CHARS + 100 && e.ends_with("(96000 more characters)"), "{}", &e[e.len() - 40..]);
        assert_eq!(brief_error("short\ntwo"), "short\ntwo");
    }

    #[test]
    fn bounded_reads_refuse_devices_fifos_and_big_files() {
        let e = read_bounded(Path::new("/dev/zero"), 10, "a record").unwrap_err().to_string();
        assert!(e.starts_with("/dev/zero: is not a regular file (it is a character device)"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("f.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_bounded(&fifo, 10, "a record").unwrap_err().to_string();
        assert!(e.contains("f.json") && e.contains("a FIFO"), "{e}");
        let big = dir.path().join("big.json");
        std::fs::write(&big, [b' '; 11]).unwrap();
        let e = read_bounded(&big, 10, "a record").unwrap_err().to_string();
        assert!(e.contains("big.json: is 11 bytes, more than the 10 bytes a record may have"), "{e}");
        assert_eq!(read_bounded(&big, 11, "a record").unwrap().len(), 11);
        let e = read_bounded(dir.path(), 10, "a record").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
    }

    #[test]
    fn batch_memory() {
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        check_batch_memory("--batch-tokens", 4096, 4096, 4 * 50_000, "logits").unwrap();
        let e = check_batch_memory("--batch-tokens", u64::MAX as u128, u64::MAX as u128, 16, "its token buffers").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().starts_with("--batch-tokens: 18446744073709551615: a batch of"), "{e}");
    }
}
