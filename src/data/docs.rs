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

use crate::error::{Error, Result, WithPath};
use std::io::Read;
use std::path::Path;

/// Read all documents of a data file.
pub fn read_documents(path: &Path, text_field: &str) -> Result<Vec<String>> {
    if !path.exists() {
        return Err(Error::file(path, "data file does not exist"));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    let docs = if name.ends_with(".parquet") {
        read_parquet_docs(path, text_field)?
    } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.gz") || name.ends_with(".json.gz") || name.ends_with(".ndjson") {
        let text = read_text(path, name.ends_with(".gz"))?;
        read_jsonl(&text, path, text_field)?
    } else {
        let text = read_text(path, name.ends_with(".gz"))?;
        split_plain(&text)
    };
    if docs.iter().all(|d| d.is_empty()) {
        return Err(Error::file(path, "the data file holds no documents (it is empty)"));
    }
    Ok(docs)
}

fn read_text(path: &Path, gz: bool) -> Result<String> {
    let mut bytes = Vec::new();
    if gz {
        let f = std::fs::File::open(path).with_path(path)?;
        flate2::read::GzDecoder::new(f)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::file(path, format!("cannot decompress: {e}")))?;
    } else {
        bytes = std::fs::read(path).with_path(path)?;
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::file(path, format!("not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

fn read_jsonl(text: &str, path: &Path, field: &str) -> Result<Vec<String>> {
    let fields: Vec<&str> = field.split('+').collect();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::file(path, format!("line {}: invalid JSON: {e}", i + 1)))?;
        let mut parts = Vec::with_capacity(fields.len());
        for f in &fields {
            match v.get(f) {
                Some(serde_json::Value::String(s)) => parts.push(s.as_str()),
                Some(_) => return Err(Error::file(path, format!("line {}: field `{f}` is not a string", i + 1))),
                None => {
                    let keys: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                    return Err(Error::file(
                        path,
                        format!(
                            "line {}: no field `{f}` (fields here: {}); choose one with --text-field (join several with `+`)",
                            i + 1,
                            keys.join(", ")
                        ),
                    ));
                }
            }
        }
        out.push(parts.join("\n"));
    }
    Ok(out)
}

/// Plain text: documents separated by one or more blank lines.
pub fn split_plain(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                docs.push(cur.join("\n"));
                cur.clear();
            }
        } else {
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        docs.push(cur.join("\n"));
    }
    docs
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
        for (o, s) in out.iter_mut().zip(ca.into_iter()) {
            if k > 0 {
                o.push('\n');
            }
            o.push_str(s.unwrap_or(""));
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
}
