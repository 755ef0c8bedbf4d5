//! Small shared helpers: atomic file writes, Parquet I/O.

use crate::error::{Error, Result, WithPath};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// A fresh temporary name of this process for `path` (`<name>.rho-tmp-<pid>-<start>-<host>-<n>`,
/// [`crate::temp`]); create it with [`crate::temp::create_file`], never by a call that follows links.
pub fn tmp_path(path: &Path) -> PathBuf {
    crate::temp::name(path, crate::temp::Kind::Tmp).unwrap_or_else(|_| path.with_extension("rho-tmp"))
}

/// Write a file atomically: write to a new temporary name of this process in the same
/// folder (created with `O_EXCL | O_NOFOLLOW`: never through a planted link), fsync, then
/// rename over `path`. A crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_path(dir)?;
        }
    }
    let tmp = crate::temp::name(path, crate::temp::Kind::Tmp)?;
    let mut f = crate::temp::create_file(&tmp).map_err(|e| crate::temp::create_error(&tmp, e))?;
    let res = (|| {
        write(&mut f)?;
        f.sync_all().with_path(&tmp)?;
        Ok(())
    })();
    drop(f);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Write bytes atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |f| {
        use std::io::Write;
        f.write_all(bytes).with_path(path)
    })
}

/// Write a DataFrame as Parquet, atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    write_atomic(path, |f| {
        ParquetWriter::new(f)
            .with_compression(ParquetCompression::Zstd(None))
            .finish(df)
            .with_path(path)?;
        Ok(())
    })
}

/// Rows of a lazy frame (of a Parquet scan: from the file metadata, no column is read).
pub fn count_rows(lf: LazyFrame) -> PolarsResult<u64> {
    let df = lf.select([len().alias("n")]).collect()?;
    let c = df.column("n")?.cast(&DataType::UInt64)?;
    Ok(c.u64()?.get(0).unwrap_or(0))
}

/// Read a whole Parquet file into memory.
pub fn read_parquet(path: &Path) -> Result<DataFrame> {
    let f = std::fs::File::open(path).with_path(path)?;
    ParquetReader::new(f).finish().with_path(path)
}

/// Remove rho's own temporaries left in a folder by processes that are gone
/// ([`crate::temp::remove_stale`]); nothing else in the folder is touched.
pub fn remove_stale_tmp(dir: &Path) {
    crate::temp::remove_stale(dir);
}

#[allow(dead_code)]
fn _assert_error_send() {
    fn is_send<T: Send + Sync>() {}
    is_send::<Error>();
}

/// Hex sha256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(bytes);
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_path(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
