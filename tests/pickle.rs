//! PyTorch checkpoints read without running them: the fixtures of
//! scripts/make_pickle_fixtures.py (fixtures/pickle/) read bit for bit, malicious
//! pickles refused naming the file and the global with no trace of running, corrupt and
//! truncated files refused naming the file, the `.bin` folder layouts, and `rho eval`
//! on a sharded `.bin` checkpoint against transformers' golden losses.

mod common;
use candle_core::{DType, Device, Shape};
use candle_nn::var_builder::SimpleBackend;
use common::*;
use rho::model::pickle;
use rho::model::Weights;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fx(name: &str) -> PathBuf {
    fixtures().join("pickle").join(name)
}

fn expected() -> Weights {
    Weights::open_files(vec![fx("expected.safetensors")]).unwrap()
}

fn candle_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// A tensor's shape and raw bits in its own dtype.
fn bits(w: &Weights, name: &str) -> (Vec<usize>, Vec<u32>) {
    let d = candle_dtype(w.dtype_of(name).unwrap()).unwrap();
    let t = w.load(name, d, &Device::Cpu).unwrap();
    let flat = t.flatten_all().unwrap();
    let b: Vec<u32> = match d {
        DType::F32 => flat.to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect(),
        DType::F16 => flat.to_vec1::<half::f16>().unwrap().iter().map(|x| x.to_bits() as u32).collect(),
        DType::BF16 => flat.to_vec1::<half::bf16>().unwrap().iter().map(|x| x.to_bits() as u32).collect(),
        _ => unreachable!(),
    };
    (t.dims().to_vec(), b)
}

/// Every tensor of `w` equals `expected.safetensors`' `<prefix>/<name>` bit for bit (float
/// dtypes); the others (bool, int64 buffers) are refused when read, naming the file.
fn check_against_expected(w: &Weights, prefix: &str, file_in_errors: &Path) -> usize {
    let exp = expected();
    let mut want: Vec<String> =
        exp.names().filter_map(|n| n.strip_prefix(&format!("{prefix}/")).map(String::from)).collect();
    let mut got: Vec<String> = w.names().map(String::from).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{prefix}: tensor names");
    let mut floats = 0;
    for n in &got {
        let en = format!("{prefix}/{n}");
        assert_eq!(w.dtype_of(n), exp.dtype_of(&en), "{prefix}/{n}: dtype");
        if let Some(d) = candle_dtype(w.dtype_of(n).unwrap()) {
            let (shape, native) = bits(w, n);
            assert_eq!((shape.clone(), native.clone()), bits(&exp, &en), "{prefix}/{n}: values");
            // Loaded as f32 (what rho eval does): each value converted exactly.
            let t = w.load(n, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(t.dims(), shape.as_slice());
            let got: Vec<u32> = t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect();
            let want: Vec<u32> = native
                .iter()
                .map(|&b| match d {
                    DType::F16 => half::f16::from_bits(b as u16).to_f32().to_bits(),
                    DType::BF16 => half::bf16::from_bits(b as u16).to_f32().to_bits(),
                    _ => b,
                })
                .collect();
            assert_eq!(got, want, "{prefix}/{n}: as f32");
            floats += 1;
        } else {
            let e = w.load(n, DType::F32, &Device::Cpu).unwrap_err().to_string();
            assert!(e.contains("unsupported dtype") && e.contains(&file_in_errors.display().to_string()), "{e}");
        }
    }
    floats
}

#[test]
fn zip_legacy_and_zip64_files_match_the_expected_values_bit_for_bit() {
    for (file, prefix) in [
        ("f32.bin", "f32.bin"),
        ("f16.bin", "f16.bin"),
        ("bf16.bin", "bf16.bin"),
        ("legacy.bin", "legacy.bin"),
        ("rezipped.bin", "rezipped.bin"),
        ("zip64.bin", "zip64.bin"),
    ] {
        let p = fx(file);
        let w = Weights::open_files(vec![p.clone()]).unwrap();
        let n = check_against_expected(&w, prefix, &p);
        assert_eq!(n, 11, "{file}: float tensors compared");
    }
}

#[test]
fn sharded_folder_with_index_loads() {
    let dir = fx("sharded");
    let w = Weights::open(&dir).unwrap();
    assert_eq!(check_against_expected(&w, "sharded", &dir), 4);
    assert!(w.file_of("layers.0.q.weight").unwrap().ends_with("pytorch_model-00001-of-00002.bin"));
    assert!(w.file_of("layers.1.k.weight").unwrap().ends_with("pytorch_model-00002-of-00002.bin"));
}

/// The index exposes what torch wrote: shared storages, offsets and strides.
#[test]
fn shared_storages_offsets_and_strides() {
    let p = fx("f32.bin");
    let bytes = std::fs::read(&p).unwrap();
    let idx: HashMap<String, pickle::TensorInfo> = pickle::index(&bytes, &p).unwrap().into_iter().collect();
    let (e, l, v, s) = (&idx["embed.weight"], &idx["lm_head.weight"], &idx["row.view"], &idx["block.slice"]);
    assert_eq!(e, l, "tied: one tensor under two names");
    assert_eq!((v.storage.clone(), v.offset, v.shape.clone(), v.is_contiguous()), (e.storage.clone(), 5, vec![6], true));
    assert_eq!((s.storage.clone(), s.offset, s.strides.clone(), s.is_contiguous()), (e.storage.clone(), 8, vec![6, 1], false));
    assert_eq!((idx["proj.weight"].strides.clone(), idx["proj.weight"].is_contiguous()), (vec![1, 5], false));
    assert_eq!((idx["strided"].offset, idx["strided"].strides.clone()), (1, vec![3]));
    assert_eq!(idx["cube.permuted"].strides, vec![1, 12, 4]);
    assert_eq!((idx["scalar"].shape.len(), idx["empty"].shape.clone()), (0, vec![0, 3]));
    // Contiguous tensors are slices of the file, not copies.
    assert!(matches!(e.bytes(&bytes), std::borrow::Cow::Borrowed(_)));
    assert!(matches!(s.bytes(&bytes), std::borrow::Cow::Owned(_)));
    // The slice's values are the base tensor's [1:3, 2:5].
    let w = Weights::open_files(vec![p]).unwrap();
    let base = w.load("embed.weight", DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    let sl = w.load("block.slice", DType::F32, &Device::Cpu).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(sl, vec![base[1][2..5].to_vec(), base[2][2..5].to_vec()]);
}

const MARKER: &str = "/tmp/rho-pickle-fixture-ran-";

/// A malicious file is refused with one error naming the file and the global, and its
/// payload (which creates a marker file when unpickled by Python) leaves no trace.
fn refused_without_trace(file: &str, global: &str) {
    let marker = PathBuf::from(format!("{MARKER}{}", file.trim_end_matches(".bin")));
    let _ = std::fs::remove_file(&marker);
    let p = fx(file);
    let bytes = std::fs::read(&p).unwrap();
    let e = pickle::index(&bytes, &p).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}: refuses to load: the pickle calls `{global}`, which a state dict never needs; nothing from the file was run",
            p.display()
        )
    );
    // Through a checkpoint folder as well.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(&p, dir.path().join("pytorch_model.bin")).unwrap();
    let e = Weights::open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("pytorch_model.bin") && e.contains(global), "{e}");
    assert!(!marker.exists(), "{}: the payload ran", marker.display());
}

#[test]
fn os_system_through_reduce_is_refused() {
    refused_without_trace("evil_reduce.bin", "posix.system");
}

#[test]
fn builtins_exec_through_stack_global_is_refused() {
    refused_without_trace("evil_exec.bin", "builtins.exec");
}

#[test]
fn global_nested_in_a_tensor_rebuild_is_refused() {
    refused_without_trace("evil_nested.bin", "posix.system");
}

#[test]
fn global_beside_real_storages_in_a_zip_is_refused() {
    refused_without_trace("evil_zip.bin", "posix.system");
}

fn err_of(bytes: &[u8], p: &Path) -> String {
    let e = pickle::index(bytes, p).expect_err("expected an error").to_string();
    assert!(e.starts_with(&format!("{}: ", p.display())), "error does not name the file: {e}");
    e
}

/// Every prefix of a good file is refused with an error naming the file (no panic, no
/// huge allocation), in both formats.
#[test]
fn truncated_files_are_errors_naming_the_file() {
    for f in ["f32.bin", "legacy.bin", "zip64.bin"] {
        let p = fx(f);
        let bytes = std::fs::read(&p).unwrap();
        for cut in 0..bytes.len() {
            err_of(&bytes[..cut], &p);
        }
    }
}

/// Single-byte corruptions anywhere: an error naming the file, or a file that still reads
/// (a changed value byte), never a panic.
#[test]
fn corrupt_bytes_never_panic() {
    for f in ["f32.bin", "legacy.bin"] {
        let p = fx(f);
        let good = std::fs::read(&p).unwrap();
        let mut refused = 0;
        for i in 0..good.len() {
            for x in [0x00u8, 0xff, good[i] ^ 0x01] {
                let mut b = good.clone();
                b[i] = x;
                match pickle::index(&b, &p) {
                    Ok(ts) => {
                        for (_, t) in ts {
                            let _ = t.bytes(&b);
                        }
                    }
                    Err(e) => {
                        assert!(e.to_string().starts_with(&p.display().to_string()), "{e}");
                        refused += 1;
                    }
                }
            }
        }
        assert!(refused > good.len() / 4, "{f}: only {refused} corruptions refused");
    }
}

#[test]
fn non_pickle_files_are_errors_naming_the_file() {
    let p = PathBuf::from("ckpt/pytorch_model.bin");
    assert!(err_of(b"", &p).contains("empty file"));
    assert!(err_of(b"<!DOCTYPE html><html>", &p).contains("neither a zip archive"));
    assert!(err_of(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 1\n", &p).contains("git lfs pull"));
    assert!(err_of(b"PK\x03\x04 not a zip", &p).contains("not a valid PyTorch zip checkpoint"));
    let mut tar = vec![0u8; 1024];
    tar[257..262].copy_from_slice(b"ustar");
    assert!(err_of(&tar, &p).contains("tar archive"));
    // A plain pickle of a dict (no torch.save magic number).
    assert!(err_of(b"\x80\x02}q\x00.", &p).contains("no magic number"));
    // A safetensors file named .bin.
    let st = std::fs::read(fixtures().join("neox/step3000/model.safetensors")).unwrap();
    err_of(&st, &p);
}

#[test]
fn compressed_and_big_endian_archives_are_refused_with_the_reason() {
    let p = fx("compressed.bin");
    let e = err_of(&std::fs::read(&p).unwrap(), &p);
    assert!(e.contains("compressed (method 8)"), "{e}");
    let p = fx("bigendian.bin");
    let e = err_of(&std::fs::read(&p).unwrap(), &p);
    assert!(e.contains("big-endian"), "{e}");
}

/// A storage entry whose size disagrees with the pickle (the archive rewritten with one
/// storage cut short) is refused, naming the storage.
#[test]
fn storage_size_mismatch_is_refused() {
    let p = fx("zip64.bin");
    let mut b = std::fs::read(&p).unwrap();
    // zip64.bin's central directory holds each entry's sizes in a zip64 extra field:
    // shrink the first storage's (`zip64/data/0`) by 2 bytes.
    let name = b"f16/data/0";
    let cd = b.windows(4).rposition(|w| w == [0x50, 0x4b, 0x01, 0x02]).unwrap();
    let at = b[..=cd].windows(4).enumerate().filter(|(_, w)| *w == [0x50, 0x4b, 0x01, 0x02]).map(|(i, _)| i).find(|&i| {
        let n = u16::from_le_bytes([b[i + 28], b[i + 29]]) as usize;
        &b[i + 46..i + 46 + n] == name
    });
    let i = at.expect("the storage's central directory entry");
    let n = u16::from_le_bytes([b[i + 28], b[i + 29]]) as usize;
    let x = i + 46 + n + 4;
    for f in [x, x + 8] {
        let v = u64::from_le_bytes(b[f..f + 8].try_into().unwrap()) - 2;
        b[f..f + 8].copy_from_slice(&v.to_le_bytes());
    }
    let e = err_of(&b, &p);
    assert!(e.contains("storage `f16/data/0` holds") && e.contains("bytes but the state dict says"), "{e}");
}

// ---- checkpoint folders ----

fn folder_with(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, src) in files {
        std::fs::copy(src, d.path().join(name)).unwrap();
    }
    d
}

#[test]
fn safetensors_wins_over_a_bin_in_the_same_folder() {
    let st = fixtures().join("neox/step3000/model.safetensors");
    let d = folder_with(&[("model.safetensors", &st), ("pytorch_model.bin", &fx("f32.bin"))]);
    let w = Weights::open(d.path()).unwrap();
    assert!(w.contains("embed_out.weight") && !w.contains("embed.weight"));
    assert!(w.main_file().ends_with("model.safetensors"));
}

#[test]
fn model_pt_and_model_bin_are_read_but_not_both() {
    let d = folder_with(&[("model.pt", &fx("f16.bin"))]);
    let w = Weights::open(d.path()).unwrap();
    assert!(w.main_file().ends_with("model.pt") && w.contains("embed.weight"));
    std::fs::copy(fx("f16.bin"), d.path().join("model.bin")).unwrap();
    let e = Weights::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("both model.bin and model.pt"), "{e}");
    // pytorch_model.bin comes first.
    std::fs::copy(fx("bf16.bin"), d.path().join("pytorch_model.bin")).unwrap();
    let w = Weights::open(d.path()).unwrap();
    assert_eq!(w.dtype_of("embed.weight"), Some(safetensors::Dtype::BF16));
}

#[test]
fn sharded_bins_without_their_index_or_with_a_bad_one() {
    let sh = fx("sharded");
    let s1 = sh.join("pytorch_model-00001-of-00002.bin");
    let s2 = sh.join("pytorch_model-00002-of-00002.bin");
    let d = folder_with(&[("pytorch_model-00001-of-00002.bin", &s1), ("pytorch_model-00002-of-00002.bin", &s2)]);
    let e = Weights::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("pytorch_model.bin.index.json") && e.contains("not their index"), "{e}");
    let idx = d.path().join("pytorch_model.bin.index.json");
    std::fs::write(&idx, r#"{"weight_map": {"a": "../pytorch_model-00001-of-00002.bin"}}"#).unwrap();
    let e = Weights::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("points outside the folder") && e.contains("pytorch_model.bin.index.json"), "{e}");
    std::fs::write(&idx, r#"{"weight_map": {"a": "pytorch_model-00003-of-00003.bin"}}"#).unwrap();
    let e = Weights::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("pytorch_model-00003-of-00003.bin") && e.contains("missing"), "{e}");
    // Two shards holding the same tensor: ambiguous.
    std::fs::write(&idx, r#"{"weight_map": {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}}"#)
        .unwrap();
    std::fs::copy(&s1, d.path().join("pytorch_model-00002-of-00002.bin")).unwrap();
    let e = Weights::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("tensor `layers.0.q.weight` is also in") && e.contains("ambiguous"), "{e}");
}

/// Through the `VarBuilder` backend: shapes checked, a missing weight is an error naming
/// the file, tensors nobody asks for are never read.
#[test]
fn backend_checks_shapes_and_missing_weights() {
    let p = fx("f32.bin");
    let w = Weights::open_files(vec![p.clone()]).unwrap();
    let init = candle_nn::Init::Const(0.);
    let t = w.get(Shape::from(vec![5, 3]), "proj.weight", init, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[5, 3]);
    let e = w.get(Shape::from(vec![3, 5]), "proj.weight", init, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(&p.display().to_string()) && e.contains("has shape [5, 3]"), "{e}");
    let e = w.get(Shape::from(vec![2]), "no.such.weight", init, DType::F32, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains(&p.display().to_string()) && e.contains("`no.such.weight` is missing"), "{e}");
}

/// Copy the .bin neox checkpoint and drop one weight from its second shard's index and
/// file list: `rho eval` must stop naming the weight (a missing weight stays an error).
#[test]
fn eval_with_a_missing_weight_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("step3000");
    copy_dir(&fx("neox/step3000"), &ck);
    // Replace the second shard by the first one: its tensors go missing.
    std::fs::copy(ck.join("pytorch_model-00001-of-00002.bin"), ck.join("pytorch_model-00002-of-00002.bin")).unwrap();
    let study = dir.path().join("study");
    let out = rho(&[
        "eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(),
        "--study", study.to_str().unwrap(), "--quiet",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("ambiguous") || (err.contains("is missing") && err.contains("pytorch_model")), "{err}");
    // Now only one shard in the index: the other's tensors are missing.
    let idx: serde_json::Value = serde_json::from_slice(&std::fs::read(ck.join("pytorch_model.bin.index.json")).unwrap()).unwrap();
    let mut map = idx["weight_map"].as_object().unwrap().clone();
    map.retain(|_, v| v == "pytorch_model-00001-of-00002.bin");
    std::fs::write(ck.join("pytorch_model.bin.index.json"), serde_json::json!({ "weight_map": map }).to_string()).unwrap();
    std::fs::remove_file(ck.join("pytorch_model-00002-of-00002.bin")).unwrap();
    let out = rho(&[
        "eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(),
        "--study", study.to_str().unwrap(), "--quiet",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("is missing") && err.contains("pytorch_model-00001-of-00002.bin"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[derive(serde::Deserialize)]
struct GoldenLoss {
    checkpoint: String,
    seq: u32,
    pos: u32,
    loss: f64,
}

/// `rho eval` on fixtures/neox/step3000 saved as a sharded .bin (f32, one weight stored
/// transposed, bool/f32 buffers that must never be read) gives transformers' losses.
#[test]
fn eval_of_a_sharded_bin_checkpoint_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    let ck = fx("neox/step3000");
    assert!(ck.join("pytorch_model.bin.index.json").exists() && !ck.join("model.safetensors").exists());
    let out = rho(&[
        "eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(),
        "--study", study.to_str().unwrap(), "--batch-tokens", "150", "--quiet",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let golden: Vec<GoldenLoss> = std::fs::read_to_string(fixtures().join("neox/golden_losses.jsonl"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|g: &GoldenLoss| g.checkpoint == "step3000")
        .collect();
    assert!(golden.len() > 100);
    let df = rho::util::read_parquet(&study.join("losses/step3000.parquet")).unwrap();
    assert_eq!(df.height(), golden.len());
    let col = |c: &str| -> Vec<u32> { df.column(c).unwrap().u32().unwrap().into_no_null_iter().collect() };
    let (seq, pos) = (col("seq"), col("pos"));
    let loss: Vec<f32> = df.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect();
    let ours: HashMap<(u32, u32), f32> = (0..df.height()).map(|i| ((seq[i], pos[i]), loss[i])).collect();
    let mut max = 0f64;
    for g in &golden {
        let d = (ours[&(g.seq, g.pos)] as f64 - g.loss).abs();
        max = max.max(d);
    }
    eprintln!("max |diff| = {max:.2e} over {} tokens", golden.len());
    assert!(max <= 1e-4, "max |diff| = {max}");
}

/// `rho train --init` and `--reference` read a .bin checkpoint through the same reader:
/// the same run, to the byte, as from the safetensors checkpoint it was made from.
#[test]
fn train_init_and_reference_from_a_bin_equal_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let (st, bin) = (fixtures().join("neox/step3000"), fx("neox/step3000"));
    let run = |out: &str, init: &Path, reference: &Path| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_rho"))
            .args(["train", "--init"])
            .arg(init)
            .arg("--data")
            .arg(val_data())
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3", "--steps", "2", "--quiet"])
            .args(["--mode", "slm", "--ratio", "0.5", "--reference"])
            .arg(reference)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(dir.path().join(out).join("step-2/model.safetensors")).unwrap()
    };
    let a = run("st", &st, &st);
    assert!(a == run("bin-init", &bin, &st), "--init from the .bin");
    assert!(a == run("bin-ref", &st, &bin), "--reference from the .bin");
}
