//! Sharded evaluation (`rho eval --shard I/N`, `--devices`), `rho status`, and
//! every reader on a sharded study.

mod common;
use common::*;
use rho::eval::study::{read_losses, Manifest};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

fn eval_cmd(series: &Path, data: &Path, study: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["eval", "--checkpoints"]).arg(series).arg("--data").arg(data).arg("--study").arg(study);
    c.args(["--quiet", "--batch-tokens", "512"]).args(extra);
    c
}

fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

fn status(study: &Path) -> (i32, String, serde_json::Value) {
    let s = study.to_str().unwrap();
    let out = rho(&["status", "--study", s]);
    let json = rho(&["status", "--study", s, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned(), v)
}

/// Losses of every checkpoint (seq, pos, loss), whole or from parts.
fn all_losses(study: &Path) -> Vec<(String, Vec<u32>, Vec<u32>, Vec<f32>)> {
    let m = Manifest::load(study).unwrap();
    m.checkpoints
        .iter()
        .map(|c| {
            let df = read_losses(&c.loss_files(study), &["seq", "pos", "loss"]).unwrap();
            let u = |n: &str| df.column(n).unwrap().u32().unwrap().into_no_null_iter().collect::<Vec<_>>();
            let l = df.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect::<Vec<_>>();
            (c.name.clone(), u("seq"), u("pos"), l)
        })
        .collect()
}

fn categories(study: &Path) -> Vec<String> {
    let df = rho::util::read_parquet(&study.join("trajectories.parquet")).unwrap();
    df.column("category").unwrap().str().unwrap().into_no_null_iter().map(String::from).collect()
}

fn assert_same_study(whole: &Path, sharded: &Path) {
    let (a, b) = (all_losses(whole), all_losses(sharded));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.0, &x.1, &x.2), (&y.0, &y.1, &y.2), "checkpoint names and rows");
        let worst = x.3.iter().zip(&y.3).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        // Batches are padded differently per shard: the same losses up to float rounding.
        assert!(worst < 1e-4, "{}: max |diff| {worst}", x.0);
    }
}

#[test]
fn three_shards_equal_one_process_and_every_reader_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("gpt2");
    let whole = dir.path().join("whole");
    let sharded = dir.path().join("sharded");
    ok(eval_cmd(&series, &val_data(), &whole, &[]));

    // Shards in any order; the study is refused until every part is there.
    ok(eval_cmd(&series, &val_data(), &sharded, &["--shard", "2/3"]));
    ok(eval_cmd(&series, &val_data(), &sharded, &["--shard", "0/3"]));
    let (code, text, json) = status(&sharded);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("missing 1") && text.contains("--array 1"), "{text}");
    assert_eq!(json["missing_shards"], serde_json::json!([1]));
    assert_eq!(json["complete"], false);
    let e = Manifest::load(&sharded).unwrap_err().to_string();
    assert!(e.contains("checkpoint=") && e.contains("incomplete") && e.contains("missing shards 1"), "{e}");
    let out = rho(&["categorize", "--study", sharded.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing shards 1"), "{}", stderr(&out));
    assert!(!sharded.join("trajectories.parquet").exists());
    for cmd in [&["report", "--study"][..], &["audit", "--study"][..], &["export", "notebook", "--study"][..]] {
        let mut a = cmd.to_vec();
        a.push(sharded.to_str().unwrap());
        let out = rho(&a);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}");
        assert!(stderr(&out).contains("missing shards 1"), "{cmd:?}: {}", stderr(&out));
    }

    ok(eval_cmd(&series, &val_data(), &sharded, &["--shard", "1/3"]));
    let (code, text, json) = status(&sharded);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("3 of 3 checkpoints complete"), "{text}");
    assert_eq!(json["checkpoints"][0]["state"], "sharded");
    assert_eq!(json["checkpoints"][0]["shards"], 3);
    for c in ["checkpoint-10", "checkpoint-20", "checkpoint-30"] {
        for i in 0..3 {
            assert!(sharded.join(format!("losses/checkpoint={c}/part-{i}-of-3.parquet")).exists());
        }
    }
    // study.json lists no sharded checkpoint (shards never rewrite it); the loaded study has them all.
    assert!(Manifest::load_file(&sharded).unwrap().checkpoints.is_empty());
    let (mw, ms) = (Manifest::load(&whole).unwrap(), Manifest::load(&sharded).unwrap());
    for (a, b) in mw.checkpoints.iter().zip(&ms.checkpoints) {
        assert_eq!((&a.name, a.step, a.n_tokens), (&b.name, b.step, b.n_tokens));
        assert!((a.mean_loss - b.mean_loss).abs() < 1e-6, "{} {}", a.mean_loss, b.mean_loss);
    }
    assert_same_study(&whole, &sharded);
    assert_eq!(
        std::fs::read(whole.join("tokens.parquet")).unwrap(),
        std::fs::read(sharded.join("tokens.parquet")).unwrap(),
        "tokens.parquet"
    );

    // Readers: categorize, report, audit, TUI data, notebook export.
    for s in [&whole, &sharded] {
        let out = rho(&["categorize", "--study", s.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(categories(&whole), categories(&sharded));
    let (_, text, _) = status(&sharded);
    assert!(text.contains("categorized: yes, over all 3 checkpoints"), "{text}");
    let out = rho(&["report", "--study", sharded.to_str().unwrap(), "--quiet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(sharded.join("report/index.html").exists());
    let out = rho(&["audit", "--study", sharded.to_str().unwrap(), "--format", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let st = rho::tui::data::Study::open(&sharded).unwrap();
    let (chunk, warnings) = rho::tui::data::read_chunk(&sharded, st.checkpoints(), st.n_rows, 0);
    assert!(warnings.is_empty(), "{warnings:?}");
    let whole_losses = all_losses(&whole);
    for (k, l) in chunk.losses.iter().enumerate() {
        assert_eq!(l.len(), st.n_rows.min(l.len()));
        for (i, v) in l.iter().enumerate() {
            assert!((v - whole_losses[k].3[i]).abs() < 1e-4);
        }
    }
    let nb = dir.path().join("s.ipynb");
    let out = rho(&["export", "notebook", "--study", sharded.to_str().unwrap(), "--out", nb.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // A shard re-run does nothing; the parts are untouched.
    let part = sharded.join("losses/checkpoint=checkpoint-20/part-1-of-3.parquet");
    let before = std::fs::read(&part).unwrap();
    let mtime = std::fs::metadata(&part).unwrap().modified().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["eval", "--checkpoints"]).arg(&series).arg("--data").arg(val_data()).arg("--study").arg(&sharded);
    c.args(["--shard", "1/3"]);
    let msg = ok(c);
    assert!(msg.contains("0 evaluated, 3 skipped"), "{msg}");
    assert_eq!(std::fs::metadata(&part).unwrap().modified().unwrap(), mtime);
    assert_eq!(std::fs::read(&part).unwrap(), before);

    // Categories over a subset are reported as such.
    let out = rho(&["categorize", "--study", sharded.to_str().unwrap(), "--checkpoints", "checkpoint-10,checkpoint-30"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (code, text, json) = status(&sharded);
    assert_eq!(code, 0);
    assert!(text.contains("over 2 checkpoints, not the 3 complete now"), "{text}");
    assert_eq!(json["categorized_over"], serde_json::json!(["checkpoint-10", "checkpoint-30"]));

    // A whole-study run over a complete sharded study skips every checkpoint too.
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["eval", "--checkpoints"]).arg(&series).arg("--data").arg(val_data()).arg("--study").arg(&sharded);
    let msg = ok(c);
    assert!(msg.contains("0 evaluated, 3 skipped"), "{msg}");
}

#[test]
fn more_shards_than_documents_and_bad_shard_flags() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("gpt2");
    let whole = dir.path().join("whole");
    let sharded = dir.path().join("sharded");
    ok(eval_cmd(&series, &val_data(), &whole, &[]));
    let n_docs = std::fs::read_to_string(val_data()).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let n = n_docs + 3; // some shards get no document: they write empty parts
    for i in (0..n).rev() {
        ok(eval_cmd(&series, &val_data(), &sharded, &["--shard", &format!("{i}/{n}")]));
    }
    let (code, text, _) = status(&sharded);
    assert_eq!(code, 0, "{text}");
    assert_same_study(&whole, &sharded);

    for (flag, want) in [("3/3", "smaller than N"), ("x/2", "not a number"), ("1/0", "at least 1"), ("2", "no `/`")] {
        let out = eval_cmd(&series, &val_data(), &dir.path().join("bad"), &["--shard", flag]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(stderr(&out).contains("--shard") && stderr(&out).contains(want), "{flag}: {}", stderr(&out));
    }
    assert!(!dir.path().join("bad").exists(), "a bad flag writes nothing");

    // A shard never starts over a study evaluated with other settings.
    let out = eval_cmd(&series, &val_data(), &sharded, &["--shard", "0/2", "--max-tokens", "50"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("study.json") && stderr(&out).contains("other data"), "{}", stderr(&out));
    assert_same_study(&whole, &sharded);

    // A shard stopped before its first part leaves a folder with no record: incomplete, said plainly.
    std::fs::create_dir_all(sharded.join("losses/checkpoint=checkpoint-40")).unwrap();
    std::fs::write(sharded.join("losses/checkpoint=checkpoint-40/part-0-of-2.parquet.77.tmp"), b"partial").unwrap();
    let (code, text, _) = status(&sharded);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("checkpoint-40") && text.contains("no part finished yet"), "{text}");
    let e = Manifest::load(&sharded).unwrap_err().to_string();
    assert!(e.contains("checkpoint=checkpoint-40") && e.contains("no finished part yet"), "{e}");
    std::fs::remove_dir_all(sharded.join("losses/checkpoint=checkpoint-40")).unwrap();

    let out = rho(&["status", "--study", dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("study.json"), "{}", stderr(&out));
}

#[test]
fn devices_run_one_shard_each() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("llama");
    let whole = dir.path().join("whole");
    let multi = dir.path().join("multi");
    ok(eval_cmd(&series, &val_data(), &whole, &[]));
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["eval", "--checkpoints"]).arg(&series).arg("--data").arg(val_data()).arg("--study").arg(&multi);
    c.args(["--devices", "cpu,cpu,cpu"]);
    let msg = ok(c);
    assert!(msg.contains("[shard 0/3 cpu]") && msg.contains("[shard 2/3 cpu]"), "{msg}");
    assert!(msg.contains("3 shards on cpu,cpu,cpu"), "{msg}");
    let (code, text, _) = status(&multi);
    assert_eq!(code, 0, "{text}");
    assert_same_study(&whole, &multi);

    let out = eval_cmd(&series, &val_data(), &dir.path().join("x"), &["--devices", "cpu,gpu:7"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--devices"), "{}", stderr(&out));
    let out = eval_cmd(&series, &val_data(), &dir.path().join("x"), &["--devices", "cpu", "--shard", "0/2"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// SIGKILL in the middle of a sharded eval, then the same command again: the parts
/// finished before the kill are kept as they were, and the study equals a clean one.
#[test]
fn sigkill_during_a_shard_then_rerun_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series");
    for (i, src) in ["step-0", "step-100", "step-200", "step-0", "step-100", "step-200"].iter().enumerate() {
        copy_dir(&fixtures().join("llama").join(src), &series.join(format!("step-{}", (i + 1) * 10)));
    }
    let base = std::fs::read_to_string(val_data()).unwrap();
    let data = dir.path().join("val.jsonl");
    std::fs::write(&data, base.repeat(60)).unwrap();
    let clean = dir.path().join("clean");
    ok(eval_cmd(&series, &data, &clean, &[]));

    let study = dir.path().join("killed");
    let records = |s: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(s.join("losses"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|d| std::fs::read_dir(d).map(|rd| rd.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        v.sort();
        v
    };
    let mut child = eval_cmd(&series, &data, &study, &["--shard", "0/2"]).spawn().unwrap();
    let t0 = Instant::now();
    while records(&study).len() < 2 {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the shard ended ({st}) before it could be killed; make the workload bigger");
        }
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = records(&study);
    assert!(done.len() < 6, "killed after everything was done; make the workload bigger");
    let kept: Vec<(PathBuf, Vec<u8>, SystemTime)> = done
        .iter()
        .map(|r| {
            let p = r.with_extension("parquet");
            let t = std::fs::metadata(&p).unwrap().modified().unwrap();
            (p.clone(), std::fs::read(&p).unwrap(), t)
        })
        .collect();

    ok(eval_cmd(&series, &data, &study, &["--shard", "0/2"]));
    ok(eval_cmd(&series, &data, &study, &["--shard", "1/2"]));
    for (p, bytes, t) in &kept {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} was rewritten", p.display());
        assert_eq!(std::fs::metadata(p).unwrap().modified().unwrap(), *t, "{} was rewritten", p.display());
    }
    // No temporary file left behind by the re-run's own writes.
    let (code, text, _) = status(&study);
    assert_eq!(code, 0, "{text}");
    assert_same_study(&clean, &study);
}

/// Packed windows and a token limit shard the same way (units are windows).
#[test]
fn packed_and_limited_studies_shard_too() {
    let dir = tempfile::tempdir().unwrap();
    let series = fixtures().join("llama");
    for extra in [&["--pack", "--context", "32"][..], &["--max-tokens", "300", "--context", "16"][..]] {
        let tag = extra.join("");
        let whole = dir.path().join(format!("whole{tag}"));
        let sharded = dir.path().join(format!("sharded{tag}"));
        ok(eval_cmd(&series, &val_data(), &whole, extra));
        for i in 0..4 {
            let mut a = extra.to_vec();
            let sh = format!("{i}/4");
            a.extend(["--shard", sh.as_str()]);
            ok(eval_cmd(&series, &val_data(), &sharded, &a));
        }
        let (code, text, _) = status(&sharded);
        assert_eq!(code, 0, "{tag}: {text}");
        assert_same_study(&whole, &sharded);
    }
}
