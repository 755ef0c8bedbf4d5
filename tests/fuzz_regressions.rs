//! Fuzz regressions: every input under `fuzz/regressions/<target>/` is replayed
//! through the same harness the fuzz target runs (`fuzz/src/lib.rs`), and a few
//! hand-made malformed files check the loaders' errors.
//!
//! File names in `fuzz/regressions/<target>/` say what is expected:
//! `err-*`: the loader refuses the input with an error naming the file;
//! `ok-*`: the loader accepts it; anything else: either, as long as it does not
//! panic. The harness itself asserts that every refusal names the file.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use harness::safetensors_bytes;
use std::path::{Path, PathBuf};

type Harness = fn(&Path, &[u8]) -> Result<(), String>;

fn regressions(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Replay every regression input of `target`; returns how many there were.
fn replay(target: &str, f: Harness) -> usize {
    let files = regressions(target);
    for p in &files {
        let bytes = std::fs::read(p).unwrap();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let tmp = tempfile::tempdir().unwrap();
        let r = f(tmp.path(), &bytes);
        if name.starts_with("err-") {
            assert!(r.is_err(), "{target}/{name}: expected the loader to refuse it, got Ok");
        } else if name.starts_with("ok-") {
            assert!(r.is_ok(), "{target}/{name}: expected the loader to accept it, got {r:?}");
        }
    }
    files.len()
}

#[test]
fn config_json_regressions() {
    replay("config_json", harness::config_json);
}

#[test]
fn safetensors_header_regressions() {
    replay("safetensors_header", harness::safetensors_header);
}

#[test]
fn safetensors_index_regressions() {
    replay("safetensors_index", harness::safetensors_index);
}

#[test]
fn tokenizer_json_regressions() {
    replay("tokenizer_json", harness::tokenizer_json);
}

#[test]
fn data_reader_regressions() {
    replay("data_reader", harness::data_reader);
}

#[test]
fn pickle_file_regressions() {
    assert!(replay("pickle_file", harness::pickle_file) >= 4);
}

#[test]
fn study_json_regressions() {
    assert!(replay("study_json", harness::study_json) >= 1);
}

/// The committed seeds must all go through the harness without a panic (most are valid).
#[test]
fn seeds_replay() {
    let targets: [(&str, Harness); 7] = [
        ("config_json", harness::config_json),
        ("safetensors_header", harness::safetensors_header),
        ("safetensors_index", harness::safetensors_index),
        ("tokenizer_json", harness::tokenizer_json),
        ("data_reader", harness::data_reader),
        ("pickle_file", harness::pickle_file),
        ("study_json", harness::study_json),
    ];
    for (t, f) in targets {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds").join(t);
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let tmp = tempfile::tempdir().unwrap();
            let _ = f(tmp.path(), &std::fs::read(&p).unwrap());
        }
    }
}

// ---- hand-made malformed inputs ----

/// Run `f` on `bytes` and return its error, which must name `file` (a name inside the scratch folder).
fn refused(f: Harness, bytes: &[u8], file: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let e = f(tmp.path(), bytes).expect_err("expected the loader to refuse the input");
    assert!(e.contains(file), "error does not name {file}: {e}");
    e
}

fn st_refused(bytes: &[u8]) -> String {
    refused(harness::safetensors_header, bytes, "model.safetensors")
}

/// A safetensors file from a raw header and data.
fn st_raw(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

#[test]
fn safetensors_valid_file_loads() {
    let f32s: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    let b = safetensors_bytes(&[("w", "F32", &[2, 2], &f32s), ("h", "F16", &[1], &[0, 60]), ("e", "BF16", &[0, 7], &[])]);
    let tmp = tempfile::tempdir().unwrap();
    harness::safetensors_header(tmp.path(), &b).unwrap();
}

#[test]
fn safetensors_truncated_header() {
    let b = safetensors_bytes(&[("w", "F32", &[1], &[0, 0, 128, 63])]);
    for cut in [0, 3, 8, 12, b.len() - 5, b.len() - 1] {
        st_refused(&b[..cut]);
    }
}

#[test]
fn safetensors_header_length_larger_than_file() {
    for n in [64u64, 1 << 40, u64::MAX, u64::MAX - 7] {
        let mut b = n.to_le_bytes().to_vec();
        b.extend_from_slice(b"{}");
        st_refused(&b);
    }
}

#[test]
fn safetensors_negative_and_overflowing_offsets() {
    let data = [0u8; 4];
    for offs in ["[-4,0]", "[0,-4]", "[0,18446744073709551616]", "[18446744073709551615,0]", "[0,1e3]"] {
        let h = format!(r#"{{"w":{{"dtype":"U8","shape":[4],"data_offsets":{offs}}}}}"#);
        st_refused(&st_raw(&h, &data));
    }
}

#[test]
fn safetensors_offsets_outside_the_data() {
    let data = [0u8; 8];
    for (shape, offs) in [("[400]", "[0,400]"), ("[4]", "[4,8]"), ("[2]", "[6,8]")] {
        let h = format!(r#"{{"w":{{"dtype":"U8","shape":{shape},"data_offsets":{offs}}}}}"#);
        st_refused(&st_raw(&h, &data));
    }
}

/// An end offset near usize::MAX that matches the shape's byte count: the end is
/// added to the header length, so it must be refused before any sum can overflow.
#[test]
fn safetensors_end_offset_near_usize_max() {
    for end in [u64::MAX, u64::MAX - 3, u64::MAX - 100, 1 << 63] {
        let h = format!(r#"{{"w":{{"dtype":"U8","shape":[{end}],"data_offsets":[0,{end}]}}}}"#);
        st_refused(&st_raw(&h, &[0u8; 16]));
    }
}

#[test]
fn safetensors_shape_dtype_byte_count_mismatch() {
    // F32 [3] needs 12 bytes, F16 [3] needs 6: 8 are given.
    for dt in ["F32", "F16", "BF16"] {
        let h = format!(r#"{{"w":{{"dtype":"{dt}","shape":[3],"data_offsets":[0,8]}}}}"#);
        st_refused(&st_raw(&h, &[0u8; 8]));
    }
    // A shape whose element count overflows.
    let h = r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}}"#;
    st_refused(&st_raw(h, &[0u8; 8]));
}

/// A zero-element tensor whose other dimensions multiply past usize::MAX: the
/// strides of such a shape overflow.
#[test]
fn safetensors_zero_size_tensor_with_overflowing_strides() {
    let h = r#"{"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}}"#;
    st_refused(&st_raw(h, &[]));
}

#[test]
fn safetensors_unsupported_dtype_is_an_error_naming_the_file() {
    let b = safetensors_bytes(&[("ids", "I64", &[1], &[1, 0, 0, 0, 0, 0, 0, 0])]);
    let e = st_refused(&b);
    assert!(e.contains("unsupported dtype"), "{e}");
}

#[test]
fn safetensors_header_not_json_or_not_utf8() {
    st_refused(&st_raw("{\"w\":", &[]));
    let mut b = 4u64.to_le_bytes().to_vec();
    b.extend_from_slice(&[0xff, 0xfe, 0x7b, 0x7d]);
    st_refused(&b);
}

fn index_refused(index: &str, file: &str) -> String {
    refused(harness::safetensors_index, index.as_bytes(), file)
}

#[test]
fn index_pointing_to_a_missing_shard() {
    let e = index_refused(
        r#"{"weight_map":{"a.weight":"model-00001-of-00002.safetensors","x":"model-00009-of-00009.safetensors"}}"#,
        "model-00009-of-00009.safetensors",
    );
    assert!(e.contains("missing") && e.contains("model.safetensors.index.json"), "{e}");
}

#[test]
fn index_malformed() {
    let idx = "model.safetensors.index.json";
    index_refused("", idx);
    index_refused("{\"weight_map\": {\"a\": \"model-000", idx);
    index_refused("[]", idx);
    index_refused(r#"{"weight_map":[]}"#, idx);
    index_refused(r#"{"weight_map":{}}"#, idx);
    index_refused(r#"{"weight_map":{"a":3}}"#, idx);
    index_refused(r#"{"weight_map":{"a":"../model-00001-of-00002.safetensors"}}"#, idx);
    index_refused(r#"{"weight_map":{"a":"/etc/passwd"}}"#, idx);
    index_refused(r#"{"weight_map":{"a":".hidden.safetensors"}}"#, idx);
    // The folder itself, and the index itself, are not shards.
    index_refused(r#"{"weight_map":{"a":""}}"#, "ckpt");
    index_refused(r#"{"weight_map":{"a":"model.safetensors.index.json"}}"#, idx);
    let mut bad = br#"{"weight_map":{"a":"model-00001-of-00002.safetensors"}}"#.to_vec();
    bad[5] = 0xff;
    refused(harness::safetensors_index, &bad, idx);
}

#[test]
fn index_with_valid_shards_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = format!(r#"{{"weight_map":{{"a.weight":"{}","c.weight":"{}"}}}}"#, harness::SHARDS[0], harness::SHARDS[1]);
    harness::safetensors_index(tmp.path(), idx.as_bytes()).unwrap();
}

fn config_refused(json: &[u8]) -> String {
    refused(harness::config_json, json, "config.json")
}

#[test]
fn config_invalid_utf8_and_json() {
    let e = config_refused(b"{\"model_type\": \"ll\xffama\"}");
    assert!(e.contains("invalid JSON"), "{e}");
    config_refused(b"\xef\xbb\xbf{}");
    config_refused(b"");
    config_refused(b"[1]");
    config_refused(b"{\"model_type\": \"llama\", \"vocab_size\": 10,");
}

/// Sizes far past any real model: products of them overflow, and the RoPE table
/// (`inv_freq`) would be allocated from `head_dim` before any tensor is read.
#[test]
fn config_absurd_sizes_are_refused() {
    let big = u64::MAX / 2;
    let e = config_refused(
        format!(r#"{{"model_type":"gpt2","vocab_size":5,"n_embd":{big},"n_head":1,"n_layer":1,"n_positions":4}}"#)
            .as_bytes(),
    );
    assert!(e.contains("n_embd"), "{e}");
    config_refused(
        br#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"head_dim":4611686018427387904}"#,
    );
    config_refused(
        br#"{"model_type":"llama","vocab_size":10,"hidden_size":64,"num_attention_heads":4,
            "num_hidden_layers":1,"intermediate_size":8,"head_dim":1073741824}"#,
    );
}

#[test]
fn tokenizer_truncated_and_garbage() {
    let good = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizers/bos/tokenizer.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    harness::tokenizer_json(tmp.path(), &good).unwrap();
    for cut in [0, 1, good.len() / 3, good.len() / 2, good.len() - 2] {
        refused(harness::tokenizer_json, &good[..cut], "tokenizer.json");
    }
    refused(harness::tokenizer_json, b"\xff\xfe", "tokenizer.json");
    refused(harness::tokenizer_json, b"{\"model\": {\"type\": \"BPE\"}}", "tokenizer.json");
}

#[test]
fn data_reader_malformed() {
    // byte 0: format (see harness::DATA_KINDS), byte 1: --text-field (TEXT_FIELDS).
    refused(harness::data_reader, b"\x00\x00{\"text\": 1}\n", "docs.jsonl");
    refused(harness::data_reader, b"\x00\x00{\"text\": \"a\"\n", "docs.jsonl");
    refused(harness::data_reader, b"\x00\x01{\"question\": \"a\"}\n", "docs.jsonl");
    refused(harness::data_reader, b"\x02\x00\x1f\x8b\x08\x00garbage", "docs.jsonl.gz");
    refused(harness::data_reader, b"\x03\x00ok\n\xff\n", "docs.txt");
    refused(harness::data_reader, b"\x03\x00\n\n  \n", "docs.txt");
    refused(harness::data_reader, b"\x04\x00PAR1garbagePAR1", "docs.parquet");
    refused(harness::data_reader, b"\x04\x00", "docs.parquet");
    let tmp = tempfile::tempdir().unwrap();
    harness::data_reader(tmp.path(), b"\x05\x01{\"question\":\"q\",\"answer\":\"a\"}\n").unwrap();
    let pq = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data/val.parquet")).unwrap();
    let mut b = vec![4u8, 0];
    b.extend_from_slice(&pq);
    harness::data_reader(tmp.path(), &b).unwrap();
    // Truncated parquet files.
    for cut in [4, 8, pq.len() / 2, pq.len() - 8, pq.len() - 1] {
        let mut b = vec![4u8, 0];
        b.extend_from_slice(&pq[..cut]);
        refused(harness::data_reader, &b, "docs.parquet");
    }
}

fn regression_input(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions").join(target).join(name)).unwrap()
}

/// The tokenizers crate panics on some files (found by the fuzzer): errors naming the file.
#[test]
fn tokenizer_crate_panics_are_errors() {
    // `expect("Helper")` on a truncated or malformed `decoder` value.
    let e = refused(harness::tokenizer_json, b"{\"decoder\":", "tokenizer.json");
    assert!(e.contains("invalid JSON"), "{e}");
    // `expect("Precompiled")` on a Precompiled normalizer without its charsmap.
    let e = refused(harness::tokenizer_json, br#"{"normalizer":{"type":"Precompiled"}}"#, "tokenizer.json");
    assert!(e.contains("cannot load tokenizer") && e.contains("precompiled_charsmap"), "{e}");
    // Loads, but a TemplateProcessing names a special token it does not define:
    // every encode with special tokens panicked.
    let bad = regression_input("tokenizer_json", "err-template-names-undefined-special-token");
    let e = refused(harness::tokenizer_json, &bad, "tokenizer.json");
    assert!(e.contains("cannot encode text"), "{e}");
}

/// polars panics on some malformed parquet files (found by the fuzzer): an error naming the file.
#[test]
fn parquet_reader_panics_are_errors() {
    let bad = regression_input("data_reader", "err-parquet-page-slice-out-of-range");
    let e = refused(harness::data_reader, &bad, "docs.parquet");
    assert!(e.contains("not a valid parquet file"), "{e}");
}

/// The valid torch.save seeds load through the harness (index, materialise, `Weights`,
/// float values compared, bool / int64 buffers refused when read), the refused ones name the file.
#[test]
fn pickle_file_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/pickle_file");
    for name in ["f32", "f16", "bf16", "legacy", "zip64", "rezipped", "shard"] {
        let tmp = tempfile::tempdir().unwrap();
        harness::pickle_file(tmp.path(), &std::fs::read(dir.join(name)).unwrap()).unwrap();
    }
    for (name, why) in [("compressed", "compressed"), ("evil_zip", "posix.system"), ("evil_exec", "builtins.exec")] {
        let e = refused(harness::pickle_file, &std::fs::read(dir.join(name)).unwrap(), "pytorch_model.bin");
        assert!(e.contains(why), "{name}: {e}");
    }
}
