//! Reading validation / training documents.
//!
//! | extension                 | format                                                         |
//! |---------------------------|----------------------------------------------------------------|
//! | `.jsonl`, `.jsonl.gz`     | one JSON object per line; the text is in `--text-field` (`text`) |
//! | `.parquet`                | a string column named `--text-field`                           |
//!
//! `--text-field a+b` joins several fields (or columns) with a newline, e.g.
//! `question+answer` for GSM8K or `problem+solution` for MATH.
//! | anything else (`.txt`...) | plain UTF-8 text; documents are separated by blank lines      |
//!
//! Empty documents are kept (they score no tokens) so that `seq` is always the
//! index of the document in the file.
//!
//! Limits: the data file must be a regular file (rho reads it twice: the documents, then
//! its sha256 for the study's fingerprint; a FIFO or a device such as /dev/zero is refused),
//! and a line of a JSON Lines file, or a document of a plain-text or Parquet file, holds at
//! most [`MAX_DOC_BYTES`] (32 MiB): a longer one is an error naming the file and the line
//! (or row), found before more than that is held in memory.

use crate::error::{Error, Result};
use crate::limits::MAX_DOC_BYTES;
use std::io::{BufRead, Read};
use std::path::Path;

/// Read all documents of a data file.
pub fn read_documents(path: &Path, text_field: &str) -> Result<Vec<String>> {
    if !path.exists() {
        return Err(Error::file(path, "data file does not exist"));
    }
    let file = crate::limits::open_regular(path)?;
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let gz = name.ends_with(".gz");
    let docs = if name.ends_with(".parquet") {
        drop(file);
        read_parquet_docs(path, text_field)?
    } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") || name.ends_with(".ndjson") {
        let mut out = Vec::new();
        let fields: Vec<&str> = text_field.split('+').collect();
        for_each_line(file, gz, path, |i, line| {
            if !line.trim().is_empty() {
                out.push(jsonl_doc(line, i, path, &fields)?);
            }
            Ok(())
        })?;
        out
    } else {
        let mut split = SplitPlain::default();
        for_each_line(file, gz, path, |i, line| split.push(line, i, path))?;
        split.finish()
    };
    if docs.iter().all(|d| d.is_empty()) {
        return Err(Error::file(path, "the data file holds no documents (it is empty)"));
    }
    Ok(docs)
}

/// Call `f(line_number, line)` for each line of the file (1-based; `\n` or `\r\n` ends a
/// line, as `str::lines`), decompressing `.gz`. A line of more than [`MAX_DOC_BYTES`] is an
/// error naming the line, found after reading at most that much of it; invalid UTF-8 is an
/// error giving the byte offset (in the decompressed text).
fn for_each_line(file: std::fs::File, gz: bool, path: &Path, mut f: impl FnMut(usize, &str) -> Result<()>) -> Result<()> {
    let inner: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(file)) } else { Box::new(file) };
    let mut reader = std::io::BufReader::with_capacity(1 << 16, inner);
    let mut buf = Vec::new();
    let (mut line, mut offset) = (0usize, 0u64);
    loop {
        buf.clear();
        let n = (&mut reader).take(MAX_DOC_BYTES as u64 + 1).read_until(b'\n', &mut buf).map_err(|e| {
            if gz {
                Error::file(path, format!("cannot decompress: {e}"))
            } else {
                Error::io(path, e)
            }
        })?;
        if n == 0 {
            return Ok(());
        }
        line += 1;
        let mut text: &[u8] = &buf;
        if let Some(t) = text.strip_suffix(b"\n") {
            text = t.strip_suffix(b"\r").unwrap_or(t);
        } else if text.len() > MAX_DOC_BYTES {
            return Err(Error::file(
                path,
                format!("line {line} is longer than {} MiB, the most rho reads as one line or document", MAX_DOC_BYTES >> 20),
            ));
        }
        let s = std::str::from_utf8(text).map_err(|e| {
            Error::file(path, format!("not valid UTF-8 (first bad byte at offset {}, line {line})", offset + e.valid_up_to() as u64))
        })?;
        f(line, s)?;
        offset += n as u64;
    }
}

/// One line of a JSON Lines file (`i`: its 1-based number) -> the text of `fields`, joined
/// with newlines.
fn jsonl_doc(line: &str, i: usize, path: &Path, fields: &[&str]) -> Result<String> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| Error::file(path, format!("line {i}: invalid JSON: {e}")))?;
    let mut parts = Vec::with_capacity(fields.len());
    for f in fields {
        match v.get(f) {
            Some(serde_json::Value::String(s)) => parts.push(s.as_str()),
            Some(_) => return Err(Error::file(path, format!("line {i}: field `{f}` is not a string"))),
            None => {
                let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                return Err(Error::file(
                    path,
                    format!(
                        "line {i}: no field `{f}` (fields here: {}); choose one with --text-field (join several with `+`)",
                        crate::limits::brief_list(&keys, ", ", 20)
                    ),
                ));
            }
        }
    }
    Ok(parts.join("\n"))
}

#[cfg(test)]
fn read_jsonl(text: &str, path: &Path, field: &str) -> Result<Vec<String>> {
    let fields: Vec<&str> = field.split('+').collect();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if !line.trim().is_empty() {
            out.push(jsonl_doc(line, i + 1, path, &fields)?);
        }
    }
    Ok(out)
}

/// Plain text split into documents line by line: a blank line ends a document. A document
/// of more than [`MAX_DOC_BYTES`] is an error naming the line it starts at.
#[derive(Default)]
struct SplitPlain {
    docs: Vec<String>,
    cur: String,
    /// The line the current document starts at.
    first: usize,
}

impl SplitPlain {
    fn push(&mut self, line: &str, i: usize, path: &Path) -> Result<()> {
        if line.trim().is_empty() {
            if !self.cur.is_empty() {
                self.docs.push(std::mem::take(&mut self.cur));
            }
            return Ok(());
        }
        if self.cur.is_empty() {
            self.first = i;
        } else {
            self.cur.push('\n');
        }
        if self.cur.len() + line.len() > MAX_DOC_BYTES {
            return Err(Error::file(
                path,
                format!(
                    "the document starting at line {} is longer than {} MiB (documents are separated by blank lines), \
                     the most rho reads as one document",
                    self.first,
                    MAX_DOC_BYTES >> 20
                ),
            ));
        }
        self.cur.push_str(line);
        Ok(())
    }
    fn finish(mut self) -> Vec<String> {
        if !self.cur.is_empty() {
            self.docs.push(self.cur);
        }
        self.docs
    }
}

/// Plain text: documents separated by one or more blank lines (no length limit: the
/// text is already in memory).
pub fn split_plain(text: &str) -> Vec<String> {
    let mut split = SplitPlain::default();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !split.cur.is_empty() {
                split.docs.push(std::mem::take(&mut split.cur));
            }
        } else {
            if !split.cur.is_empty() {
                split.cur.push('\n');
            }
            split.cur.push_str(line);
        }
    }
    split.finish()
}

fn read_parquet_docs(path: &Path, field: &str) -> Result<Vec<String>> {
    // polars panics on some malformed files (e.g. out-of-range slices in
    // polars-io's page reader): an error naming the file. Nothing outlives the call.
    let df = std::panic::catch_unwind(|| crate::util::read_parquet(path)).map_err(|p| {
        Error::file(path, format!("not a valid parquet file (corrupt or truncated?): {}", super::panic_message(&*p)))
    })??;
    let mut out: Vec<String> = vec![String::new(); df.height()];
    for (k, f) in field.split('+').enumerate() {
        let col = df.column(f).map_err(|_| {
            let names: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
            Error::file(path, format!("no column `{f}` (columns: {}); choose one with --text-field", names.join(", ")))
        })?;
        let ca = col
            .str()
            .map_err(|_| Error::file(path, format!("column `{f}` is not a string column ({})", col.dtype())))?;
        for (row, (o, s)) in out.iter_mut().zip(ca).enumerate() {
            let s = s.unwrap_or("");
            if o.len() + s.len() + 1 > MAX_DOC_BYTES {
                return Err(Error::file(
                    path,
                    format!("row {row}: the document is longer than {} MiB, the most rho reads as one document", MAX_DOC_BYTES >> 20),
                ));
            }
            if k > 0 {
                o.push('\n');
            }
            o.push_str(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_splits_on_blank_lines() {
        let d = split_plain("a b\nc\n\n\n  \nd\n\ne");
        assert_eq!(d, vec!["a b\nc", "d", "e"]);
    }

    #[test]
    fn jsonl_errors_name_line_and_field() {
        let p = Path::new("x.jsonl");
        let e = read_jsonl("{\"text\": \"a\"}\n{\"body\": 1}\n", p, "text").unwrap_err().to_string();
        assert!(e.contains("x.jsonl") && e.contains("line 2") && e.contains("body"), "{e}");
        let e = read_jsonl("{oops\n", p, "text").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("invalid JSON"), "{e}");
        assert_eq!(read_jsonl("{\"q\":\"x\"}\n\n", p, "q").unwrap(), vec!["x"]);
        // Several fields joined with a newline; a missing one is named.
        let two = "{\"question\":\"q1\",\"answer\":\"a1\"}\n";
        assert_eq!(read_jsonl(two, p, "question+answer").unwrap(), vec!["q1\na1"]);
        let e = read_jsonl(two, p, "question+solution").unwrap_err().to_string();
        assert!(e.contains("`solution`") && e.contains("answer"), "{e}");
    }

    /// Lines and documents longer than MAX_DOC_BYTES are errors naming the file and the
    /// line; one just at the limit reads.
    #[test]
    fn long_lines_and_documents_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let mut big = vec![b'a'; MAX_DOC_BYTES + 1];
        let p = write("one.txt", &big);
        let e = read_documents(&p, "text").unwrap_err().to_string();
        assert!(e.contains("one.txt") && e.contains("line 1 is longer than 32 MiB"), "{e}");
        // two lines of one document, together too long
        big[MAX_DOC_BYTES / 2] = b'\n';
        let mut two = b"first\n\n".to_vec();
        two.extend_from_slice(&big);
        let p = write("two.txt", &two);
        let e = read_documents(&p, "text").unwrap_err().to_string();
        assert!(e.contains("two.txt") && e.contains("document starting at line 3 is longer than 32 MiB"), "{e}");
        // at the limit: read
        let p = write("limit.txt", &big[..MAX_DOC_BYTES]);
        assert_eq!(read_documents(&p, "text").unwrap()[0].len(), MAX_DOC_BYTES);
        // a JSON line too long
        let mut line = b"{\"text\": \"".to_vec();
        line.resize(MAX_DOC_BYTES + 10, b'x');
        let p = write("v.jsonl", &line);
        let e = read_documents(&p, "text").unwrap_err().to_string();
        assert!(e.contains("v.jsonl") && e.contains("line 1 is longer than 32 MiB"), "{e}");
        // not a regular file
        let e = read_documents(Path::new("/dev/zero"), "text").unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file") && e.contains("character device"), "{e}");
        let e = read_documents(dir.path(), "text").unwrap_err().to_string();
        assert!(e.contains("not a regular file") && e.contains("folder"), "{e}");
        // CRLF lines and a last line without a newline read as before
        let p = write("crlf.txt", b"a\r\nb\r\n\r\nc");
        assert_eq!(read_documents(&p, "text").unwrap(), vec!["a\nb", "c"]);
        let p = write("bad.txt", b"ok\n\nx\xff");
        let e = read_documents(&p, "text").unwrap_err().to_string();
        assert!(e.contains("UTF-8") && e.contains("offset 5, line 3"), "{e}");
    }
}
