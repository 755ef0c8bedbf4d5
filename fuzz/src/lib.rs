//! The fuzz harness: bytes -> our loaders, through the same public API the
//! binary uses (the loaders take paths, so the bytes are written to a file first).
//!
//! Shared by the fuzz targets in `fuzz_targets/` and by the root crate's
//! `tests/fuzz_regressions.rs` (which includes this file with `#[path]`), so a
//! regression input is replayed through exactly the code that found it.
//!
//! Every function returns `Ok(())` when the loader accepted the input and
//! `Err(message)` when it refused it. The property checked is: no panic, no
//! abort, no unbounded allocation, and every refusal names the file.
#![allow(dead_code)]

use candle_core::{DType, Device, Shape};
use candle_nn::var_builder::SimpleBackend;
use rho::data::{read_documents, Tok};
use rho::model::{pickle, weights::weight_files, Checkpoint, Weights};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Replace libFuzzer's panic hook (which aborts at once) by one that only prints:
/// a panic that our library catches and turns into an error (third-party crates
/// that panic on bad files) is then not a crash, while one that escapes the
/// loader still is (it reaches libfuzzer-sys' `extern "C"` entry point, which aborts).
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}"))));
}

/// A scratch folder for one target, fixed per process (`$TMPDIR/rho-fuzz-<pid>/<target>`).
pub fn scratch(target: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rho-fuzz-{}", std::process::id())).join(target);
    std::fs::create_dir_all(&d).expect("cannot create the scratch folder");
    d
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("harness: cannot write {}: {e}", path.display()));
}

/// The loader refused the input: its message must name `path` (the file, or the
/// folder the file is in, for errors about a checkpoint folder's files).
fn refused(msg: String, path: &Path) -> Result<(), String> {
    let p = path.display().to_string();
    assert!(msg.contains(&p), "error does not name {p}: {msg}");
    Err(msg)
}

/// Bytes of a safetensors file holding `(name, dtype, shape, data)` tensors, in order.
pub fn safetensors_bytes(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
    let mut header = String::from("{");
    let mut off = 0usize;
    for (i, (name, dtype, shape, data)) in tensors.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{off},{}]}}",
            shape.join(","),
            off + data.len()
        ));
        off += data.len();
    }
    header.push('}');
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, _, data) in tensors {
        out.extend_from_slice(data);
    }
    out
}

/// `config.json` in a checkpoint folder, read by `Checkpoint::open`.
pub fn config_json(dir: &Path, data: &[u8]) -> Result<(), String> {
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    let p = ck.join("config.json");
    write(&p, data);
    match Checkpoint::open(&ck) {
        Ok(c) => {
            let _ = c.config.context_len();
            let inv = c.config.inv_freq();
            assert_eq!(inv.len(), c.config.rotary_dim / 2);
            assert!(c.config.num_heads > 0 && c.config.head_dim > 0 && c.config.num_kv_heads > 0);
            Ok(())
        }
        Err(e) => refused(e.to_string(), &p),
    }
}

/// `model.safetensors` in a checkpoint folder: `Weights::open` (header and
/// metadata), then every tensor loaded by name in each dtype we convert to, and
/// through the `VarBuilder` backend with its own shape, a wrong shape and a missing name.
pub fn safetensors_header(dir: &Path, data: &[u8]) -> Result<(), String> {
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    let p = ck.join("model.safetensors");
    write(&p, data);
    let w = match Weights::open(&ck) {
        Ok(w) => w,
        Err(e) => return refused(e.to_string(), &p),
    };
    assert_eq!(w.main_file(), p.as_path());
    let mut names: Vec<String> = w.names().map(String::from).collect();
    names.sort();
    let dev = Device::Cpu;
    let mut first_err: Option<String> = None;
    for n in &names {
        assert!(w.contains(n));
        assert_eq!(w.file_of(n), Some(p.as_path()));
        let mut dims = None;
        for dt in [DType::F32, DType::F16, DType::BF16] {
            match w.load(n, dt, &dev) {
                Ok(t) => {
                    assert_eq!(t.dtype(), dt);
                    dims = Some(t.dims().to_vec());
                }
                Err(e) => {
                    let m = e.to_string();
                    assert!(m.contains(&p.display().to_string()), "error does not name the file: {m}");
                    first_err.get_or_insert(m);
                }
            }
        }
        if let Some(d) = dims {
            let t = w
                .get(Shape::from(d.clone()), n, candle_nn::Init::Const(0.), DType::F32, &dev)
                .expect("a tensor that loads must load through the backend with its own shape");
            assert_eq!(t.dims(), d.as_slice());
            let wrong = if d == [1] { vec![2] } else { vec![1] };
            let e = w.get(Shape::from(wrong), n, candle_nn::Init::Const(0.), DType::F32, &dev);
            assert!(e.is_err(), "a wrong shape must be refused");
        }
        let _ = w.get_unchecked(n, DType::F32, &dev);
    }
    let e = w.get(Shape::from(vec![1]), "\u{0}no such tensor", candle_nn::Init::Const(0.), DType::F32, &dev);
    assert!(e.is_err());
    match first_err {
        None => Ok(()),
        Some(m) => Err(m),
    }
}

/// The two valid shards that `safetensors_index` inputs may point to.
pub const SHARDS: [&str; 2] = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

fn shard_bytes(i: usize) -> Vec<u8> {
    let f32s: Vec<u8> = [1.0f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
    if i == 0 {
        safetensors_bytes(&[("a.weight", "F32", &[2], &f32s), ("b.weight", "F16", &[2, 1], &[0, 60, 0, 188])])
    } else {
        safetensors_bytes(&[("c.weight", "BF16", &[3], &[128, 63, 0, 64, 0, 0]), ("d.bias", "F32", &[1, 2], &f32s)])
    }
}

/// `model.safetensors.index.json` beside two valid shards: `weight_files` and
/// `Weights::open`, then every tensor loaded (the shards are valid, so loads must work).
pub fn safetensors_index(dir: &Path, data: &[u8]) -> Result<(), String> {
    let ck = dir.join("ckpt");
    std::fs::create_dir_all(&ck).unwrap();
    for (i, s) in SHARDS.iter().enumerate() {
        let p = ck.join(s);
        if !p.exists() {
            write(&p, &shard_bytes(i));
        }
    }
    let idx = ck.join("model.safetensors.index.json");
    write(&idx, data);
    // Errors may name the index or a shard: both are inside the checkpoint folder.
    if let Err(e) = weight_files(&ck) {
        return refused(e.to_string(), &ck);
    }
    let w = match Weights::open(&ck) {
        Ok(w) => w,
        Err(e) => return refused(e.to_string(), &ck),
    };
    let names: Vec<String> = w.names().map(String::from).collect();
    for n in &names {
        let t = w.load(n, DType::F32, &Device::Cpu).expect("tensors of the valid shards must load");
        assert!(t.elem_count() <= 3);
    }
    Ok(())
}

/// `tokenizer.json` read by `Tok::from_file`; a tokenizer that loads is then used
/// as the scorer uses it: encode, encode a batch, token text, vocab size, EOS
/// (`Err` if loading or any encode failed).
pub fn tokenizer_json(dir: &Path, data: &[u8]) -> Result<(), String> {
    let p = dir.join("tokenizer.json");
    write(&p, data);
    let t = match Tok::from_file(&p) {
        Ok(t) => t,
        Err(e) => return refused(e.to_string(), &p),
    };
    let docs: Vec<String> = ["", "Hello world", "The fox runs.\n\nünïcödé 🙂  x = 3", "<|endoftext|><s></s>a"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut first_err: Option<String> = None;
    for d in &docs {
        match t.encode(d) {
            Ok(enc) => {
                assert_eq!(enc.ids.len(), enc.offsets.len());
                for &id in enc.ids.iter().take(32) {
                    let _ = t.token_text(id);
                }
            }
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(&p.display().to_string()), "error does not name the file: {m}");
                first_err.get_or_insert(m);
            }
        }
    }
    if let Err(e) = t.encode_all(&docs) {
        let m = e.to_string();
        assert!(m.contains(&p.display().to_string()), "error does not name the file: {m}");
        first_err.get_or_insert(m);
    }
    let v = t.vocab_size();
    for id in 0..v.min(32) as u32 {
        let _ = t.token_text(id);
    }
    let _ = t.token_text(v as u32);
    let _ = t.token_text(u32::MAX);
    let _ = t.eos_id(None);
    let _ = t.eos_id(Some(7));
    match first_err {
        None => Ok(()),
        Some(m) => Err(m),
    }
}

/// The file names `data_reader` writes: the first input byte picks one (mod the
/// count); `true` means the harness gzips the rest of the input first.
pub const DATA_KINDS: [(&str, bool); 8] = [
    ("docs.jsonl", false),
    ("docs.jsonl.gz", true),
    ("docs.jsonl.gz", false),
    ("docs.txt", false),
    ("docs.parquet", false),
    ("docs.ndjson", false),
    ("docs.txt.gz", true),
    ("docs.json.gz", true),
];

/// `--text-field` values: the second input byte picks one (mod the count).
pub const TEXT_FIELDS: [&str; 7] = ["text", "question+answer", "a+b", "", "+", "text+text", "text+"];

/// A data file read by `read_documents`: byte 0 picks the format (file name),
/// byte 1 the `--text-field`, the rest is the file's content.
pub fn data_reader(dir: &Path, data: &[u8]) -> Result<(), String> {
    let (kind, field, body) = match data {
        [k, f, rest @ ..] => (DATA_KINDS[*k as usize % DATA_KINDS.len()], TEXT_FIELDS[*f as usize % TEXT_FIELDS.len()], rest),
        _ => return Ok(()),
    };
    let p = dir.join(kind.0);
    if kind.1 {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body).unwrap();
        write(&p, &gz.finish().unwrap());
    } else {
        write(&p, body);
    }
    match read_documents(&p, field) {
        Ok(docs) => {
            assert!(docs.iter().any(|d| !d.is_empty()), "an accepted data file holds a non-empty document");
            Ok(())
        }
        Err(e) => refused(e.to_string(), &p),
    }
}

/// A `torch.save` file (zip, zip64 or legacy format) given as bytes: `pickle::index`
/// straight from memory (the path only names the file in messages), every tensor
/// materialised in row-major order; then, for a file it accepts, the same bytes as a
/// checkpoint folder's `pytorch_model.bin` through `Weights` and its `VarBuilder` backend,
/// every tensor compared with the bytes `index` gave (`Err` if a tensor of a float dtype
/// failed to load).
pub fn pickle_file(dir: &Path, data: &[u8]) -> Result<(), String> {
    let ck = dir.join("ckpt");
    let p = ck.join("pytorch_model.bin");
    let tensors = match pickle::index(data, &p) {
        Ok(t) => t,
        Err(e) => return refused(e.to_string(), &p),
    };
    for (name, t) in &tensors {
        assert!(t.storage.end <= data.len(), "{name}: storage outside the file");
        assert_eq!(t.shape.len(), t.strides.len());
        let b = t.bytes(data);
        assert_eq!(b.len(), t.numel() * t.elem_size(), "{name}: materialised size");
        // No expanded views: a tensor is never larger than its storage.
        assert!(b.len() <= t.storage.len(), "{name}: larger than its storage");
    }
    if tensors.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(&ck).unwrap();
    write(&p, data);
    let w = match Weights::open(&ck) {
        Ok(w) => w,
        Err(e) => panic!("index accepted the file but Weights::open refused it: {e}"),
    };
    let dev = Device::Cpu;
    let mut first_err: Option<String> = None;
    for (name, t) in &tensors {
        assert!(w.contains(name));
        let native = match t.dtype {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            _ => {
                let e = w.load(name, DType::F32, &dev).expect_err("a non-float tensor must be refused").to_string();
                assert!(e.contains(&p.display().to_string()), "error does not name the file: {e}");
                continue;
            }
        };
        match w.get(Shape::from(t.shape.clone()), name, candle_nn::Init::Const(0.), native, &dev) {
            Ok(x) => {
                assert_eq!(x.dims(), t.shape.as_slice());
                let bytes = t.bytes(data);
                let x = x.flatten_all().unwrap();
                let got: Vec<u8> = match native {
                    DType::F32 => x.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                    DType::F16 => x.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                    _ => x.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
                };
                assert!(got == bytes.as_ref(), "{name}: Weights and index disagree");
            }
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(&p.display().to_string()), "error does not name the file: {m}");
                first_err.get_or_insert(m);
            }
        }
    }
    match first_err {
        None => Ok(()),
        Some(m) => Err(m),
    }
}

/// The checkpoints of the study fixture of [`study_json`]: `a` and `b` evaluated whole,
/// `c` in two parts (rows 0..2 and 2..4), 4 rows each.
pub const STUDY_ROWS: usize = 4;

/// The default part record of part `i` of 2 of checkpoint `c` (the fixture's), with its
/// parquet's sha256.
pub fn study_part_record(i: u32, sha256: &str) -> Vec<u8> {
    let rec = rho::eval::study::PartEntry {
        name: "c".into(),
        step: Some(300),
        tokens_seen: None,
        stage: None,
        order: Some(2),
        after: Some("b".into()),
        path: PathBuf::from("/ckpts/c"),
        fingerprint: "fp".into(),
        shard: i,
        shards: 2,
        row_start: 2 * i as u64,
        n_tokens: 2,
        loss_sum: 3.0,
        sha256: Some(sha256.into()),
    };
    serde_json::to_vec_pretty(&rec).unwrap()
}

/// Write the losses files of the study fixture under `study` (once per folder); returns the
/// sha256 of `a`, `b`, and c's two parts.
pub fn study_fixture(study: &Path) -> [String; 4] {
    use rho::eval::{plan::Rows, study::part_path, Shard};
    let shas = study.join("shas.json");
    if let Ok(b) = std::fs::read(&shas) {
        if let Ok(v) = serde_json::from_slice::<[String; 4]>(&b) {
            return v;
        }
    }
    let rows = |r: std::ops::Range<u32>| Rows {
        seq: r.clone().map(|i| i / 2).collect(),
        pos: r.clone().map(|i| 1 + i % 2).collect(),
        doc: r.clone().map(|i| i / 2).collect(),
        token_id: r.clone().map(|i| 10 + i).collect(),
        start: r.clone().collect(),
        end: r.map(|i| i + 1).collect(),
    };
    let losses = |c: f32, r: std::ops::Range<u32>| -> Vec<f32> { r.map(|i| c + i as f32 * 0.5).collect() };
    let n = STUDY_ROWS as u32;
    let w = |p: &Path, name: &str, step: i64, r: std::ops::Range<u32>, c: f32| {
        rho::eval::write_losses(p, name, Some(step), &rows(r.clone()), &losses(c, r)).expect("harness: write losses")
    };
    let m = rho::eval::study::Manifest::losses_path;
    let out = [
        w(&m(study, "a"), "a", 100, 0..n, 3.0),
        w(&m(study, "b"), "b", 200, 0..n, 2.0),
        w(&part_path(study, "c", Shard { index: 0, count: 2 }, "parquet"), "c", 300, 0..2, 1.0),
        w(&part_path(study, "c", Shard { index: 1, count: 2 }, "parquet"), "c", 300, 2..n, 1.0),
    ];
    write(&shas, &serde_json::to_vec(&out).unwrap());
    out
}

/// A study folder's records given as bytes: `study.json`, then (after a NUL byte) the part
/// record of c's part 0, then (after another) of part 1; a record not given is the fixture's
/// own. The losses files are the fixture's ([`study_fixture`]). Read as every reader does:
/// `Manifest::load_partial`, each checkpoint's losses checked (`checked_loss_files`),
/// `rho status` (and its table), then `rho categorize`. Every refusal must name a file or
/// folder of the study; `Ok` when categorize accepted the study.
pub fn study_json(dir: &Path, data: &[u8]) -> Result<(), String> {
    use rho::eval::{study::part_path, Shard};
    let study = dir.join("study");
    let shas = study_fixture(&study);
    let mut parts = data.splitn(3, |&b| b == 0);
    let manifest = parts.next().unwrap_or_default();
    write(&rho::eval::study::Manifest::path(&study), manifest);
    for i in 0..2u32 {
        let rec = match parts.next() {
            Some(r) => r.to_vec(),
            None => study_part_record(i, &shas[2 + i as usize]),
        };
        write(&part_path(&study, "c", Shard { index: i, count: 2 }, "json"), &rec);
    }
    let _ = std::fs::remove_file(study.join("trajectories.parquet"));
    let _ = std::fs::remove_file(study.join("categories.json"));
    let named = |e: rho::Error| refused(e.to_string(), &study);
    match rho::eval::study::Manifest::load_partial(&study) {
        Ok((m, incomplete)) => {
            for e in incomplete {
                let _ = named(e);
            }
            for c in &m.checkpoints {
                if let Err(e) = c.checked_loss_files(&study, true) {
                    let _ = named(e);
                }
            }
        }
        Err(e) => {
            let _ = named(e);
        }
    }
    match rho::eval::status::study_status(&study) {
        Ok(s) => {
            let text = rho::eval::status::render(&s);
            assert!(text.lines().count() <= 2 * s.checkpoints.len() + 8, "status table too long: {} lines", text.lines().count());
        }
        Err(e) => {
            let _ = named(e);
        }
    }
    match rho::dynamics::categorize_study(&study, &rho::dynamics::CategorizeOptions::default()) {
        Ok(s) => {
            assert_eq!(s.total as usize, STUDY_ROWS, "categorize accepted a study of other rows");
            Ok(())
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(rho::limits::brief_error(&msg).len() <= 5000);
            named(e)
        }
    }
}
