//! `rho categorize` on a study folder: stack the losses files, categorize,
//! write `<study>/trajectories.parquet` and `<study>/categories.json`.

use super::summary::CategorizeSummary;
use super::trajectory::{categorize, check_threshold};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::{CheckpointEntry, Manifest, TRAJECTORIES};
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// File name of the saved summary inside a study.
pub const CATEGORIES: &str = "categories.json";

/// Default ΔL threshold.
pub const DEFAULT_THRESHOLD: f64 = 0.2;

/// Options of [`categorize_study`].
#[derive(Debug, Clone, PartialEq)]
pub struct CategorizeOptions {
    /// ΔL threshold (finite, >= 0): |ΔL| <= threshold counts as no trend. Default 0.2.
    pub threshold: f64,
    /// Checkpoint names to use (`--checkpoints`). `None` or an empty list means
    /// all checkpoints of the study. The selection is always used in manifest
    /// order (by step), whatever the order given; repeated names count once.
    pub checkpoints: Option<Vec<String>>,
}

impl Default for CategorizeOptions {
    fn default() -> Self {
        CategorizeOptions { threshold: DEFAULT_THRESHOLD, checkpoints: None }
    }
}

/// `<study>/trajectories.parquet`
pub fn trajectories_path(study: &Path) -> PathBuf {
    study.join(TRAJECTORIES)
}

/// `<study>/categories.json`
pub fn categories_path(study: &Path) -> PathBuf {
    study.join(CATEGORIES)
}

/// Pick the checkpoints to use, in manifest order.
fn select<'a>(manifest: &'a Manifest, wanted: Option<&[String]>) -> Result<Vec<&'a CheckpointEntry>> {
    let all = &manifest.checkpoints;
    let wanted = match wanted {
        None | Some([]) => return Ok(all.iter().collect()),
        Some(w) => w,
    };
    for name in wanted {
        if !all.iter().any(|c| &c.name == name) {
            let avail: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
            return Err(Error::flag(
                "--checkpoints",
                format!("no checkpoint `{name}` in the study; available: {}", avail.join(", ")),
            ));
        }
    }
    Ok(all.iter().filter(|c| wanted.contains(&c.name)).collect())
}

/// Read one column of a losses file as `u32` (casting from other integer types).
fn col_u32(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<u32>> {
    let col = df.column(name).with_path(path)?;
    let col = if col.dtype() == &DataType::UInt32 {
        col.clone()
    } else {
        col.strict_cast(&DataType::UInt32)
            .map_err(|e| Error::file(path, format!("column `{name}` is not u32: {e}")))?
    };
    let ca = col.u32().with_path(path)?;
    if ca.null_count() > 0 {
        return Err(Error::file(path, format!("column `{name}` has null values")));
    }
    Ok(ca.into_no_null_iter().collect())
}

/// Read the `loss` column as `f32`, checking that every loss is finite.
fn col_loss(df: &DataFrame, path: &Path) -> Result<Vec<f32>> {
    let col = df.column("loss").with_path(path)?;
    let col = if col.dtype() == &DataType::Float32 {
        col.clone()
    } else {
        col.strict_cast(&DataType::Float32)
            .map_err(|e| Error::file(path, format!("column `loss` is not f32: {e}")))?
    };
    let ca = col.f32().with_path(path)?;
    if ca.null_count() > 0 {
        return Err(Error::file(path, "column `loss` has null values"));
    }
    let v: Vec<f32> = ca.into_no_null_iter().collect();
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::file(path, format!("row {i}: loss is {}, losses must be finite", v[i])));
    }
    Ok(v)
}

fn read_columns(path: &Path, columns: &[&str]) -> Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::file(path, "losses file missing (listed in study.json): run `rho eval` again")
        } else {
            Error::io(path, e)
        }
    })?;
    ParquetReader::new(f)
        .with_columns(Some(columns.iter().map(|s| s.to_string()).collect()))
        .finish()
        .with_path(path)
}

/// Categorize the token trajectories of a study.
///
/// Reads `<study>/study.json` and the losses file of every selected checkpoint
/// (needs at least 2), checks that all files have the same (seq, pos) rows in
/// the same order, categorizes (see [`categorize`]) and writes, atomically:
///
/// - `<study>/trajectories.parquet`: one row per token, columns `seq` u32,
///   `pos` u32, `token_id` u32, `category` str (file form `"H->H"`), `delta`,
///   `slope`, `first_loss`, `last_loss`, `mean_loss`, `std_loss`,
///   `residual_std` (all f32);
/// - `<study>/categories.json`: the returned summary as JSON.
///
/// Holds the [tokens x checkpoints] f32 loss matrix in memory.
pub fn categorize_study(study: &Path, opts: &CategorizeOptions) -> Result<CategorizeSummary> {
    check_threshold(opts.threshold)?;
    let manifest = Manifest::load(study)?;
    if manifest.checkpoints.is_empty() {
        return Err(Error::file(
            Manifest::path(study),
            "the study has no evaluated checkpoints: run `rho eval` first",
        ));
    }
    let selected = select(&manifest, opts.checkpoints.as_deref())?;
    if selected.len() < 2 {
        let msg = format!("categorize needs at least 2 checkpoints, the study has {}", selected.len());
        return Err(match &opts.checkpoints {
            Some(w) if !w.is_empty() => Error::flag(
                "--checkpoints",
                format!(
                    "categorize needs at least 2 checkpoints, {} selected (the study has {})",
                    selected.len(),
                    manifest.checkpoints.len()
                ),
            ),
            _ => Error::file(Manifest::path(study), format!("{msg}: run `rho eval` on more checkpoints")),
        });
    }

    // First file: keys and token ids.
    let first_path = Manifest::losses_path(study, &selected[0].name);
    let df = read_columns(&first_path, &["seq", "pos", "token_id", "loss"])?;
    let seq = col_u32(&df, "seq", &first_path)?;
    let pos = col_u32(&df, "pos", &first_path)?;
    let token_id = col_u32(&df, "token_id", &first_path)?;
    let first_loss = col_loss(&df, &first_path)?;
    drop(df);
    let n_tokens = seq.len();
    if n_tokens == 0 {
        return Err(Error::file(&first_path, "losses file has no rows: nothing to categorize"));
    }
    let n_ckpt = selected.len();
    let mut losses: Vec<f32> = Vec::with_capacity(n_tokens * n_ckpt);
    losses.extend_from_slice(&first_loss);
    drop(first_loss);

    for entry in &selected[1..] {
        let path = Manifest::losses_path(study, &entry.name);
        let df = read_columns(&path, &["seq", "pos", "loss"])?;
        let s = col_u32(&df, "seq", &path)?;
        let p = col_u32(&df, "pos", &path)?;
        if s.len() != n_tokens {
            return Err(Error::file(
                &path,
                format!(
                    "has {} rows but {} has {n_tokens}: the losses files of the study do not line up \
                     (evaluate all checkpoints with the same data and settings)",
                    s.len(),
                    first_path.display()
                ),
            ));
        }
        if let Some(i) = (0..n_tokens).find(|&i| s[i] != seq[i] || p[i] != pos[i]) {
            return Err(Error::file(
                &path,
                format!(
                    "row {i} is (seq {}, pos {}) but row {i} of {} is (seq {}, pos {}): the losses \
                     files of the study do not line up (evaluate all checkpoints with the same data and settings)",
                    s[i],
                    p[i],
                    first_path.display(),
                    seq[i],
                    pos[i]
                ),
            ));
        }
        losses.extend_from_slice(&col_loss(&df, &path)?);
    }

    let result = categorize(&losses, n_tokens, n_ckpt, opts.threshold)?;
    drop(losses);
    let names: Vec<String> = selected.iter().map(|c| c.name.clone()).collect();
    let summary =
        CategorizeSummary::from_trajectories(&result.trajectories, result.l_mean, opts.threshold, names);

    let tr = &result.trajectories;
    let f = |get: fn(&super::trajectory::TokenTrajectory) -> f64| -> Vec<f32> {
        tr.iter().map(|t| get(t) as f32).collect()
    };
    let category: Vec<&str> = tr.iter().map(|t| t.category.as_file_str()).collect();
    let mut out = DataFrame::new(vec![
        Column::new("seq".into(), seq),
        Column::new("pos".into(), pos),
        Column::new("token_id".into(), token_id),
        Column::new("category".into(), category),
        Column::new("delta".into(), f(|t| t.delta)),
        Column::new("slope".into(), f(|t| t.slope)),
        Column::new("first_loss".into(), f(|t| t.first_loss)),
        Column::new("last_loss".into(), f(|t| t.last_loss)),
        Column::new("mean_loss".into(), f(|t| t.mean_loss)),
        Column::new("std_loss".into(), f(|t| t.std_loss)),
        Column::new("residual_std".into(), f(|t| t.residual_std)),
    ])?;
    crate::util::write_parquet(&trajectories_path(study), &mut out)?;
    summary.save(&categories_path(study))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dynamics::Category;

    /// Per-token loss rows of the test study: 3 checkpoints c0 (step 100), c1 (200), c2 (300).
    const ROWS: [[f32; 3]; 4] = [
        [3.0, 2.0, 1.0], // falls -> H->L
        [1.0, 2.0, 3.0], // rises -> L->H
        [2.0, 2.0, 2.0], // flat
        [3.0, 1.0, 3.0], // flat over 3, falls over c0..c1
    ];
    const NAMES: [&str; 3] = ["c0", "c1", "c2"];
    const KEYS: [(u32, u32); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

    fn write_losses(study: &Path, name: &str, step: i64, keys: &[(u32, u32)], losses: &[f32]) {
        let n = keys.len();
        let mut df = DataFrame::new(vec![
            Column::new("checkpoint".into(), vec![name; n]),
            Column::new("step".into(), vec![step; n]),
            Column::new("seq".into(), keys.iter().map(|k| k.0).collect::<Vec<u32>>()),
            Column::new("pos".into(), keys.iter().map(|k| k.1).collect::<Vec<u32>>()),
            Column::new("token_id".into(), (0..n as u32).map(|i| 100 + i).collect::<Vec<u32>>()),
            Column::new("loss".into(), losses.to_vec()),
        ])
        .unwrap();
        crate::util::write_parquet(&Manifest::losses_path(study, name), &mut df).unwrap();
    }

    /// A study with the given checkpoints of NAMES (indices), losses from ROWS.
    fn make_study(ckpts: &[usize]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let study = dir.path();
        let mut m = Manifest { fingerprint: "fp".into(), ..Default::default() };
        for &c in ckpts {
            let losses: Vec<f32> = ROWS.iter().map(|r| r[c]).collect();
            let step = 100 * (c as i64 + 1);
            write_losses(study, NAMES[c], step, &KEYS, &losses);
            m.checkpoints.push(CheckpointEntry {
                name: NAMES[c].into(),
                step,
                path: PathBuf::from(format!("/ckpts/{}", NAMES[c])),
                fingerprint: "fp".into(),
                n_tokens: KEYS.len() as u64,
                mean_loss: losses.iter().map(|&x| x as f64).sum::<f64>() / KEYS.len() as f64,
            });
        }
        m.save(study).unwrap();
        dir
    }

    fn f32s(df: &DataFrame, name: &str) -> Vec<f32> {
        df.column(name).unwrap().f32().unwrap().into_no_null_iter().collect()
    }
    fn u32s(df: &DataFrame, name: &str) -> Vec<u32> {
        df.column(name).unwrap().u32().unwrap().into_no_null_iter().collect()
    }
    fn cats(df: &DataFrame) -> Vec<String> {
        let ca = df.column("category").unwrap().str().unwrap().clone();
        ca.into_no_null_iter().map(String::from).collect()
    }

    #[test]
    fn study_writes_trajectories_and_summary() {
        let dir = make_study(&[0, 1, 2]);
        let s = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap();
        // last losses 1, 3, 2, 3 -> L_mean 2.25: flat token 2 (last 2) L->L, token 3 (last 3) H->H.
        assert_eq!(s.l_mean, 2.25);
        assert_eq!(s.checkpoints, vec!["c0", "c1", "c2"]);
        assert_eq!(s.threshold, 0.2);
        assert_eq!(s.total, 4);
        for c in Category::ALL {
            assert_eq!(s.count(c), 1, "{c}");
            assert_eq!(s.share(c), 0.25);
        }

        let df = crate::util::read_parquet(&trajectories_path(dir.path())).unwrap();
        let names: Vec<&str> = df.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "seq", "pos", "token_id", "category", "delta", "slope", "first_loss", "last_loss",
                "mean_loss", "std_loss", "residual_std"
            ]
        );
        assert_eq!(df.column("category").unwrap().dtype(), &DataType::String);
        assert_eq!(u32s(&df, "seq"), vec![0, 0, 1, 1]);
        assert_eq!(u32s(&df, "pos"), vec![0, 1, 0, 1]);
        assert_eq!(u32s(&df, "token_id"), vec![100, 101, 102, 103]);
        assert_eq!(cats(&df), vec!["H->L", "L->H", "L->L", "H->H"]);
        assert_eq!(f32s(&df, "delta"), vec![-2.0, 2.0, 0.0, 0.0]);
        assert_eq!(f32s(&df, "slope"), vec![-1.0, 1.0, 0.0, 0.0]);
        assert_eq!(f32s(&df, "first_loss"), vec![3.0, 1.0, 2.0, 3.0]);
        assert_eq!(f32s(&df, "last_loss"), vec![1.0, 3.0, 2.0, 3.0]);
        // token 3: 3,1,3 -> mean 7/3, std sqrt(8/9 ... ) computed by hand:
        // deviations 2/3, -4/3, 2/3 -> sum sq 24/9 -> std sqrt(8/9); line is flat so residuals = deviations.
        let std3 = (8.0f64 / 9.0).sqrt() as f32;
        assert_eq!(f32s(&df, "mean_loss")[3], (7.0f64 / 3.0) as f32);
        assert!((f32s(&df, "std_loss")[3] - std3).abs() < 1e-6);
        assert!((f32s(&df, "residual_std")[3] - std3).abs() < 1e-6);
        assert_eq!(f32s(&df, "residual_std")[0], 0.0);

        let saved = CategorizeSummary::load(&categories_path(dir.path())).unwrap();
        assert_eq!(saved, s);
        // no temporary files left behind
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().map(|x| x == "tmp").unwrap_or(false))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn checkpoint_subset_in_manifest_order() {
        let dir = make_study(&[0, 1, 2]);
        // given out of order and repeated: used as c0, c1
        let opts = CategorizeOptions {
            threshold: 0.5,
            checkpoints: Some(vec!["c1".into(), "c0".into(), "c1".into()]),
        };
        let s = categorize_study(dir.path(), &opts).unwrap();
        assert_eq!(s.checkpoints, vec!["c0", "c1"]);
        assert_eq!(s.threshold, 0.5);
        // over c0..c1: deltas -1, +1, 0, -2; last losses 2, 2, 2, 1 -> L_mean 1.75
        assert_eq!(s.l_mean, 1.75);
        let df = crate::util::read_parquet(&trajectories_path(dir.path())).unwrap();
        assert_eq!(cats(&df), vec!["H->L", "L->H", "H->H", "H->L"]);
        assert_eq!(f32s(&df, "delta"), vec![-1.0, 1.0, 0.0, -2.0]);
        assert_eq!(s.count(Category::HL), 2);

        // empty list means all
        let opts = CategorizeOptions { threshold: 0.2, checkpoints: Some(vec![]) };
        let s = categorize_study(dir.path(), &opts).unwrap();
        assert_eq!(s.checkpoints, vec!["c0", "c1", "c2"]);
    }

    #[test]
    fn unknown_checkpoint_is_a_flag_error() {
        let dir = make_study(&[0, 1, 2]);
        let opts = CategorizeOptions { checkpoints: Some(vec!["c0".into(), "c9".into()]), ..Default::default() };
        let e = categorize_study(dir.path(), &opts).unwrap_err();
        assert!(matches!(&e, Error::Flag { flag, .. } if flag == "--checkpoints"), "{e}");
        let m = e.to_string();
        assert!(m.contains("c9") && m.contains("c0, c1, c2"), "{m}");

        let opts = CategorizeOptions { checkpoints: Some(vec!["c2".into()]), ..Default::default() };
        let e = categorize_study(dir.path(), &opts).unwrap_err();
        assert!(matches!(&e, Error::Flag { .. }), "{e}");
        assert!(e.to_string().contains("at least 2 checkpoints, 1 selected"), "{e}");
    }

    #[test]
    fn bad_threshold_is_a_flag_error() {
        let dir = make_study(&[0, 1]);
        for t in [-0.5, f64::NAN, f64::INFINITY] {
            let opts = CategorizeOptions { threshold: t, checkpoints: None };
            let e = categorize_study(dir.path(), &opts).unwrap_err();
            assert!(matches!(&e, Error::Flag { flag, .. } if flag == "--threshold"), "{e}");
        }
    }

    #[test]
    fn too_few_checkpoints() {
        let dir = make_study(&[1]);
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err().to_string();
        assert!(e.contains("categorize needs at least 2 checkpoints, the study has 1"), "{e}");

        let dir = make_study(&[]);
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err().to_string();
        assert!(e.contains("no evaluated checkpoints") && e.contains("rho eval"), "{e}");
        assert!(!trajectories_path(dir.path()).exists());

        let dir = tempfile::tempdir().unwrap();
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err().to_string();
        assert!(e.contains("study.json"), "{e}");
    }

    #[test]
    fn missing_losses_file_is_named() {
        let dir = make_study(&[0, 1, 2]);
        let gone = Manifest::losses_path(dir.path(), "c1");
        std::fs::remove_file(&gone).unwrap();
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err();
        assert!(matches!(&e, Error::File { path, .. } if *path == gone), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(!trajectories_path(dir.path()).exists());
    }

    #[test]
    fn mismatched_rows_are_an_error_naming_the_file() {
        // c2 has the keys of two rows swapped.
        let dir = make_study(&[0, 1, 2]);
        let bad = [(0, 0), (0, 1), (1, 1), (1, 0)];
        write_losses(dir.path(), "c2", 300, &bad, &[1.0, 3.0, 2.0, 3.0]);
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err();
        let c2 = Manifest::losses_path(dir.path(), "c2");
        assert!(matches!(&e, Error::File { path, .. } if *path == c2), "{e}");
        let m = e.to_string();
        assert!(m.contains("row 2") && m.contains("do not line up"), "{m}");
        assert!(!trajectories_path(dir.path()).exists());

        // c1 has one row fewer.
        let dir = make_study(&[0, 1, 2]);
        write_losses(dir.path(), "c1", 200, &KEYS[..3], &[2.0, 2.0, 2.0]);
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err();
        let c1 = Manifest::losses_path(dir.path(), "c1");
        assert!(matches!(&e, Error::File { path, .. } if *path == c1), "{e}");
        assert!(e.to_string().contains("has 3 rows"), "{e}");
    }

    #[test]
    fn non_finite_loss_names_the_file() {
        let dir = make_study(&[0, 1]);
        write_losses(dir.path(), "c1", 200, &KEYS, &[1.0, f32::NAN, 2.0, 2.0]);
        let e = categorize_study(dir.path(), &CategorizeOptions::default()).unwrap_err();
        let c1 = Manifest::losses_path(dir.path(), "c1");
        assert!(matches!(&e, Error::File { path, .. } if *path == c1), "{e}");
        assert!(e.to_string().contains("row 1"), "{e}");
    }
}
