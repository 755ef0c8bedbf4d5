//! rho deletes, renames or overwrites only what it created (issue 20): the user's entries
//! beside a run, a study or a report survive byte for byte; rho's own temporaries of dead
//! processes are cleaned and live ones are not; checkpoint names read from study.json are
//! names, never paths; temporaries are never opened through a planted link; readers never
//! combine trajectories.parquet and categories.json of two runs of `rho categorize`.

mod common;
use common::*;
use rho::temp::{self, Kind, Owner};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What is at a path, without following links.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
}

/// Every entry under `dir` (links not followed), by path relative to `dir`, leaving out `skip` (relative paths).
fn tree(dir: &Path, skip: &[&str]) -> BTreeMap<String, Entry> {
    fn walk(base: &Path, d: &Path, skip: &[&str], out: &mut BTreeMap<String, Entry>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if skip.contains(&rel.as_str()) {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                out.insert(rel, Entry::Link(std::fs::read_link(&p).unwrap()));
            } else if m.is_dir() {
                out.insert(rel, Entry::Dir);
                walk(base, &p, skip, out);
            } else {
                out.insert(rel, Entry::File(std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, skip, &mut out);
    out
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn run(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rho")).args(args).output().unwrap()
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// The owner of a process that is gone (a pid beyond any pid_max), on this host.
fn dead() -> Owner {
    Owner { pid: 2_000_000_000, ..temp::me().clone() }
}

/// A temporary of `owner` for `path`: a file (or a folder when `dir`).
fn plant(path: &Path, owner: &Owner, dir: bool) -> PathBuf {
    let t = temp::name_of(path, Kind::Tmp, owner, 7).unwrap();
    if dir {
        std::fs::create_dir_all(t.join("sub")).unwrap();
        std::fs::write(t.join("sub/f"), b"partial").unwrap();
    } else {
        std::fs::write(&t, b"partial").unwrap();
    }
    t
}

/// The user's own entries: folders and files whose names look like temporaries or backups.
fn user_entries(dir: &Path) -> Vec<String> {
    let mut made = Vec::new();
    for d in ["thesis", "thesis.old-v1", "photos.tmp-2024", "drafts.old-2023", "step-9.tmp-1234", "backup.old-1"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
        std::fs::write(dir.join(d).join("chapter.txt"), format!("the user's {d}")).unwrap();
        made.push(d.to_string());
    }
    for f in ["notes.tmp", "index.html.123.tmp", "shares.png.77.png", "x.parquet.77.tmp", "study.json.old-2"] {
        std::fs::write(dir.join(f), format!("the user's {f}")).unwrap();
        made.push(f.to_string());
    }
    made
}

fn assert_kept(dir: &Path, before: &BTreeMap<String, Entry>) {
    let now = tree(dir, &[]);
    for (k, v) in before {
        assert_eq!(now.get(k), Some(v), "{} was changed", dir.join(k).display());
    }
    for gone in ["drafts", "backup"] {
        assert!(!dir.join(gone).exists(), "{} appeared (a user's entry was renamed)", dir.join(gone).display());
    }
}

fn train(out: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init"]).arg(fixtures().join("llama/step-200"));
    c.arg("--data").arg(val_data()).arg("--out").arg(out);
    c.args(["--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3", "--quiet"]);
    c.args(extra);
    c.output().unwrap()
}

fn eval(ckpts: &[&Path], study: &Path, extra: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.arg("eval").arg("--checkpoints").args(ckpts).arg("--data").arg(val_data()).arg("--study").arg(study).arg("--quiet").args(extra);
    c.output().unwrap()
}

fn no_rho_temporaries_of_dead(dir: &Path) {
    for (k, _) in tree(dir, &[]) {
        let name = Path::new(&k).file_name().unwrap().to_str().unwrap().to_string();
        if let Some(t) = temp::parse(&name) {
            assert!(t.owner.pid != dead().pid, "a dead process's temporary was left: {k}");
        }
    }
}

#[test]
fn user_entries_beside_a_train_run_survive() {
    let dir = tempfile::tempdir().unwrap();
    let u = dir.path().join("u");
    std::fs::create_dir_all(u.join("masks")).unwrap();
    user_entries(&u);
    std::fs::write(u.join("masks/mine.tmp"), b"the user's mask notes").unwrap();
    let before = tree(&u, &[]);
    // a killed rho's unfinished checkpoint and mask, and a live process's (this test's) temporary
    let stale_ck = plant(&u.join("step-2"), &dead(), true);
    let stale_mask = plant(&u.join("masks/step-2.parquet"), &dead(), false);
    let live = plant(&u.join("step-1"), temp::me(), true);

    ok(train(&u, &["--steps", "2", "--save-every", "1", "--mask-every", "1"]));
    assert_kept(&u, &before);
    assert!(u.join("step-2/model.safetensors").exists() && u.join("masks/step-2.parquet").exists());
    assert!(!stale_ck.exists() && !stale_mask.exists(), "a dead process's temporaries are cleaned");
    assert_eq!(std::fs::read(live.join("sub/f")).unwrap(), b"partial", "a live process's temporary is never touched");
    no_rho_temporaries_of_dead(&u);

    // --resume into the same folder: the same
    ok(Command::new(env!("CARGO_BIN_EXE_rho")).args(["train", "--quiet", "--steps", "3", "--resume"]).arg(&u).output().unwrap());
    assert_kept(&u, &before);
    assert!(u.join("step-3").is_dir() && live.is_dir());
}

#[test]
fn user_entries_beside_a_study_and_a_report_survive() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("study");
    std::fs::create_dir_all(s.join("losses/checkpoint=step-0")).unwrap();
    user_entries(&s);
    for f in ["notes.tmp", "step-0.parquet.88.tmp", "step-100.old-1"] {
        std::fs::write(s.join("losses").join(f), format!("the user's {f}")).unwrap();
    }
    std::fs::write(s.join("losses/checkpoint=step-0/notes.tmp"), b"the user's").unwrap();
    let before = tree(&s, &[]);
    let dead_root = plant(&s.join("study.json"), &dead(), false);
    let dead_losses = plant(&s.join("losses/step-0.parquet"), &dead(), false);
    let dead_part = plant(&s.join("losses/checkpoint=step-0/part-0-of-2.parquet"), &dead(), false);
    let live = plant(&s.join("tokens.parquet"), temp::me(), false);

    ok(eval(&[&fixtures().join("llama")], &s, &[]));
    assert_kept(&s, &before);
    assert!(!dead_root.exists() && !dead_losses.exists() && !dead_part.exists(), "eval cleans a dead process's temporaries");
    assert!(live.exists(), "a live process's temporary survives eval's clean-up");

    // categorize cleans its own dead temporaries (before: never), and only those
    let dead_traj = plant(&s.join("trajectories.parquet"), &dead(), false);
    let dead_cats = plant(&s.join("categories.json"), &dead(), false);
    ok(run(&[p("categorize"), p("--study"), &s]));
    assert!(!dead_traj.exists() && !dead_cats.exists());
    assert_kept(&s, &before);
    assert!(live.exists());

    // report --out: a folder of the user's
    let r = dir.path().join("r");
    std::fs::create_dir_all(&r).unwrap();
    user_entries(&r);
    let before_r = tree(&r, &[]);
    let dead_png = plant(&r.join("category_shares.png"), &dead(), false);
    let live_png = plant(&r.join("index.html"), temp::me(), false);
    ok(run(&[p("report"), p("--study"), &s, p("--out"), &r, p("--quiet")]));
    assert_kept(&r, &before_r);
    assert!(r.join("index.html").exists() && r.join("category_shares.png").exists());
    assert!(!dead_png.exists() && live_png.exists());
    no_rho_temporaries_of_dead(&r);
    // no chart temporary of the report's own left (`X.png.<pid>.png` before)
    for (k, _) in tree(&r, &[]) {
        if let Some(t) = temp::parse(&k) {
            assert_eq!(t.owner.pid, temp::me().pid, "left over: {k}");
        }
    }
    assert_kept(&s, &before);
}

/// study.json with a checkpoint named `../../x/victim`, or an absolute path: every command
/// refuses it, naming the file and the entry, and nothing outside the study changes.
#[test]
fn checkpoint_names_from_study_json_are_names_not_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = root.join("s");
    std::fs::write(root.join("beside.txt"), b"sentinel beside").unwrap();
    let outside = tree(root, &["s"]);
    // the good study: every command writes inside the study only
    ok(eval(&[&fixtures().join("llama")], &s, &[]));
    ok(run(&[p("categorize"), p("--study"), &s]));
    ok(run(&[p("report"), p("--study"), &s, p("--quiet")]));
    ok(run(&[p("audit"), p("--study"), &s]));
    ok(run(&[p("status"), p("--study"), &s]));
    ok(run(&[p("export"), p("notebook"), p("--study"), &s]));
    ok(eval(&[&fixtures().join("llama")], &s, &["--force", "--max-tokens", "50"]));
    ok(run(&[p("categorize"), p("--study"), &s]));
    assert_eq!(tree(root, &["s"]), outside, "something outside the study changed");
    let good = std::fs::read(s.join("study.json")).unwrap();
    // what `losses/<name>.parquet` would be with these names
    std::fs::create_dir_all(root.join("x")).unwrap();
    std::fs::create_dir_all(root.join("abs")).unwrap();
    std::fs::write(root.join("x/victim.parquet"), b"sentinel x").unwrap();
    std::fs::write(root.join("abs/victim.parquet"), b"sentinel abs").unwrap();
    let abs = root.join("abs/victim").display().to_string();
    for bad in ["../../x/victim", abs.as_str(), "..", "a\\b"] {
        let mut m: serde_json::Value = serde_json::from_slice(&good).unwrap();
        m["checkpoints"][1]["name"] = bad.into();
        std::fs::write(s.join("study.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
        let outside = tree(root, &["s"]);
        let inside = tree(&s, &[]);
        let (ck, data) = (fixtures().join("llama"), val_data());
        let cmds: Vec<Vec<&Path>> = vec![
            // --max-tokens: other settings, so that --force starts the study over (deleting its losses files)
            vec![p("eval"), p("--checkpoints"), &ck, p("--data"), &data, p("--study"), &s, p("--force"), p("--max-tokens"), p("50"), p("--quiet")],
            vec![p("eval"), p("--checkpoints"), &ck, p("--data"), &data, p("--study"), &s, p("--quiet")],
            vec![p("categorize"), p("--study"), &s],
            vec![p("report"), p("--study"), &s, p("--quiet")],
            vec![p("audit"), p("--study"), &s],
            vec![p("status"), p("--study"), &s],
            vec![p("export"), p("notebook"), p("--study"), &s],
        ];
        for c in cmds {
            let o = run(&c);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{bad}: {c:?} {err}");
            assert!(err.contains("study.json") && err.contains("checkpoints[1]") && err.contains(&format!("{bad:?}")), "{bad}: {c:?}: {err}");
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        assert!(rho::tui::data::Study::open(&s).is_err());
        assert_eq!(tree(root, &["s"]), outside, "{bad}: something outside the study changed");
        assert_eq!(tree(&s, &[]), inside, "{bad}: the study changed");
    }
    assert_eq!(std::fs::read(root.join("x/victim.parquet")).unwrap(), b"sentinel x");
    assert_eq!(std::fs::read(root.join("abs/victim.parquet")).unwrap(), b"sentinel abs");
}

/// `--checkpoints ck/sub/..` is the checkpoint `ck` (a canonical path): its losses go to
/// `losses/ck.parquet`, nothing is written outside the study.
#[test]
fn checkpoint_arguments_are_resolved_before_use() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ck = root.join("ck");
    copy_dir(&fixtures().join("llama/step-100"), &ck);
    std::fs::create_dir_all(ck.join("sub")).unwrap();
    let s = root.join("s");
    let outside = tree(root, &["s"]);
    let step0 = fixtures().join("llama/step-0");
    ok(eval(&[&step0, &root.join("ck/sub/..")], &s, &[]));
    assert_eq!(tree(root, &["s"]), outside, "something outside the study changed");
    assert!(s.join("losses/ck.parquet").is_file());
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(s.join("study.json")).unwrap()).unwrap();
    let names: Vec<&str> = m["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["step-0", "ck"]);
    assert_eq!(Path::new(m["checkpoints"][1]["path"].as_str().unwrap()), std::fs::canonicalize(&ck).unwrap());
    // `.` in a checkpoint folder: its real name
    let s2 = root.join("s2");
    let o = Command::new(env!("CARGO_BIN_EXE_rho"))
        .current_dir(&ck)
        .args(["eval", "--quiet", "--checkpoints"])
        .arg(&step0)
        .arg(".")
        .arg("--data")
        .arg(val_data())
        .arg("--study")
        .arg(&s2)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(s2.join("losses/ck.parquet").is_file());
    // a folder whose name cannot be a file name of the study is refused
    let weird = root.join("a\\b");
    copy_dir(&fixtures().join("llama/step-100"), &weird);
    let o = eval(&[&step0, &weird], &root.join("s3"), &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("path separator"), "{}", stderr(&o));
}

/// A link planted at every name categorize's temporaries could take in this process (and at the
/// names an older rho used): never followed, the link's target is untouched, no study file
/// becomes a link.
#[test]
fn a_planted_symlink_is_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    ok(eval(&[&fixtures().join("llama")], &s, &[]));
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let me = temp::me();
    let mut links = Vec::new();
    for f in [rho::eval::study::TRAJECTORIES, rho::dynamics::CATEGORIES] {
        links.push(s.join(format!("{f}.{}.tmp", me.pid)));
        for n in 0..2000 {
            links.push(temp::name_of(&s.join(f), Kind::Tmp, me, n).unwrap());
        }
    }
    for l in &links {
        std::os::unix::fs::symlink(&victim, l).unwrap();
    }
    let r = rho::dynamics::categorize_study(&s, &Default::default());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "written through a link");
    for f in ["trajectories.parquet", "categories.json", "study.json", "tokens.parquet"] {
        if let Ok(m) = std::fs::symlink_metadata(s.join(f)) {
            assert!(m.is_file(), "{f} became a link");
        }
    }
    match r {
        Err(e) => assert!(e.to_string().contains("exists already") && e.to_string().contains("link"), "{e}"),
        Ok(_) => panic!("every name categorize could use holds a link, yet it wrote"),
    }
    // the links are this (live) process's names: categorize's clean-up left them
    assert!(links.iter().all(|l| std::fs::symlink_metadata(l).is_ok()));
    for l in &links {
        std::fs::remove_file(l).unwrap();
    }
    rho::dynamics::categorize_study(&s, &Default::default()).unwrap();
    assert!(std::fs::symlink_metadata(s.join("trajectories.parquet")).unwrap().is_file());
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}

/// categorize killed between its two renames (trajectories.parquet of the new run, categories.json
/// of the old one: written by hand here): audit, report, export, status and the TUI never
/// combine the two; `rho audit --fail-if` refuses instead of answering from stale shares.
#[test]
fn a_kill_between_categorizes_writes_leaves_readers_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("s");
    ok(eval(&[&fixtures().join("llama")], &s, &[]));
    let categorize = |t: &str| ok(run(&[p("categorize"), p("--study"), &s, p("--threshold"), p(t)]));
    let audit = || run(&[p("audit"), p("--study"), &s, p("--fail-if"), p("H->L<0.01"), p("--format"), p("json")]);
    // the new run's files: threshold 100 (no trend anywhere: no H->L token), the condition holds
    categorize("100");
    assert_eq!(audit().status.code(), Some(3));
    let new_traj = std::fs::read(s.join("trajectories.parquet")).unwrap();
    // the old run's: threshold 0.2, the condition does not hold
    categorize("0.2");
    assert_eq!(audit().status.code(), Some(0), "{}", stderr(&audit()));
    // the new run, killed after its first rename
    std::fs::write(s.join("trajectories.parquet"), &new_traj).unwrap();
    let o = audit();
    assert_eq!(o.status.code(), Some(1), "audit answered from two runs: {}", String::from_utf8_lossy(&o.stdout));
    let err = stderr(&o);
    assert!(err.contains("trajectories.parquet") && err.contains("categories.json") && err.contains("rho categorize"), "{err}");
    assert!(o.stdout.is_empty(), "no header of one run with rows of another");
    for c in [&[p("report"), p("--study"), &s, p("--quiet")][..], &[p("export"), p("notebook"), p("--study"), &s]] {
        let o = run(c);
        assert_eq!(o.status.code(), Some(1), "{c:?}");
        assert!(stderr(&o).contains("rho categorize"), "{c:?}: {}", stderr(&o));
    }
    let o = run(&[p("status"), p("--study"), &s, p("--json")]);
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(st["categorized"], false, "{st}");
    let tui = rho::tui::data::Study::open(&s).unwrap();
    assert!(tui.summary.is_none() && tui.traj.is_none(), "the TUI shows a mix");
    assert!(tui.warnings.iter().any(|w| w.contains("rho categorize")), "{:?}", tui.warnings);
    // categorize again: consistent
    categorize("100");
    assert_eq!(audit().status.code(), Some(3));
}

/// metrics.jsonl is appended to in place: a link planted at its name (dangling, so that
/// following it would create a file outside the run folder) is refused, never followed.
#[test]
fn a_link_planted_at_metrics_jsonl_is_not_followed() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let victim = d.path().join("victim.jsonl");
    std::os::unix::fs::symlink(&victim, out.join("metrics.jsonl")).unwrap();
    let o = train(&out, &["--steps", "1"]);
    assert!(!o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("metrics.jsonl"), "{}", stderr(&o));
    assert!(!victim.exists(), "the link was followed: {} was created", victim.display());
}
