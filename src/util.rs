//! Small shared helpers: atomic file writes, Parquet I/O.

use crate::error::{Error, Result, WithPath};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed into place.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Write a file atomically: write to a temporary name in the same folder,
/// fsync, then rename over `path`. A crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).with_path(dir)?;
        }
    }
    let tmp = tmp_path(path);
    let res = (|| {
        let mut f = std::fs::File::create(&tmp).with_path(&tmp)?;
        write(&mut f)?;
        f.sync_all().with_path(&tmp)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).with_path(path)?;
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

/// Remove stale temporary files (`*.tmp`) left in a folder by a killed process.
pub fn remove_stale_tmp(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().map(|x| x == "tmp").unwrap_or(false) {
                let _ = std::fs::remove_file(p);
            }
        }
    }
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
