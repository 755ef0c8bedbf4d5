//! `rho categorize` on a study folder: stack the losses files, categorize,
//! write `<study>/trajectories.parquet` and `<study>/categories.json`.

use super::summary::CategorizeSummary;
use super::trajectory::{categorize_block, check_threshold};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::{scan_losses, CheckpointEntry, Manifest, TRAJECTORIES};
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

/// The key of `trajectories.parquet`'s file metadata that holds its generation, the id
/// `categories.json` records under `"generation"`.
pub const GENERATION_KEY: &str = "rho.categorize.generation";

/// A new generation id: 32 random hex digits.
fn new_generation() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

/// The generation `trajectories.parquet` was written with (its file metadata), `None` for a
/// file of an older rho.
pub fn trajectories_generation(path: &Path) -> Result<Option<String>> {
    let f = std::fs::File::open(path).with_path(path)?;
    let mut r = ParquetReader::new(f);
    let meta = r.get_metadata().with_path(path)?;
    Ok(meta.key_value_metadata().as_ref().and_then(|kv| kv.iter().find(|k| k.key == GENERATION_KEY)).and_then(|k| k.value.clone()))
}

/// `categories.json`, checked against `trajectories.parquet` (when there is one): both
/// must be of one run of `rho categorize`. categorize writes trajectories.parquet, then
/// categories.json, which records the generation id it also wrote into trajectories.parquet;
/// a run stopped between the two renames leaves a pair of two generations, which every reader
/// refuses here (never a mix of the new rows with the old counts). A pair of an older rho
/// (neither records a generation) is read as it is.
pub fn load_categorized(study: &Path) -> Result<CategorizeSummary> {
    let cp = categories_path(study);
    let (summary, generation) = CategorizeSummary::load_with_generation(&cp)?;
    let tp = trajectories_path(study);
    if std::fs::symlink_metadata(&tp).is_ok() {
        let found = trajectories_generation(&tp)?;
        if found != generation {
            let g = |x: &Option<String>| x.as_deref().map(|s| format!("generation {s}")).unwrap_or_else(|| "no generation".into());
            return Err(Error::file(
                &tp,
                format!(
                    "is not of the same run of `rho categorize` as {} ({} here, {} there): a run was stopped                      between writing the two; run `rho categorize --study {}` again",
                    cp.display(),
                    g(&found),
                    g(&generation),
                    study.display()
                ),
            ));
        }
    }
    Ok(summary)
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
                format!("no checkpoint `{name}` in the study; available: {}", crate::limits::brief_list(&avail, ", ", 20)),
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

/// Read the `loss` column as `f32`, checking that every loss is finite
/// (`row0`: the study row of the first row, for the error message).
fn col_loss(df: &DataFrame, path: &Path, row0: usize) -> Result<Vec<f32>> {
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
        return Err(Error::file(path, format!("row {}: loss is {}, losses must be finite", row0 + i, v[i])));
    }
    Ok(v)
}

/// Rows per block of the out-of-core categorization (a multiple of Parquet row
/// groups of 2^18 rows, so whole-file slices read whole row groups).
pub const BLOCK_ROWS: usize = 1 << 21;

/// One checkpoint's losses read in row blocks: the files (whole or parts) and the
/// path errors name.
pub struct LossSource {
    files: Vec<PathBuf>,
    /// The whole file, or the part folder.
    pub label: PathBuf,
    /// Row count of each file, from the Parquet metadata.
    rows: Vec<usize>,
}

impl LossSource {
    /// Open a checkpoint's losses (row counts from the Parquet metadata only).
    /// Each file is checked against the study first (rows, `checkpoint` column, checksum:
    /// [`CheckpointEntry::checked_loss_files`]).
    pub fn new(study: &Path, entry: &CheckpointEntry) -> Result<LossSource> {
        let checked = entry.checked_loss_files(study, true)?;
        let label = if entry.shards.is_some() {
            crate::eval::study::shard_dir(study, &entry.name)
        } else {
            checked[0].0.clone()
        };
        let rows = checked.iter().map(|f| f.1 as usize).collect();
        let files = checked.into_iter().map(|f| f.0).collect();
        Ok(LossSource { files, label, rows })
    }

    /// Rows of the checkpoint (all parts).
    pub fn n_rows(&self) -> usize {
        self.rows.iter().sum()
    }

    /// Rows `start..start + len` of `columns`, and the file that holds them (the
    /// last one, for a block spanning parts), for error messages.
    pub fn block(&self, start: usize, len: usize, columns: &[&str]) -> Result<(DataFrame, PathBuf)> {
        let cols: Vec<Expr> = columns.iter().map(|c| col(*c)).collect();
        let mut out: Option<DataFrame> = None;
        let mut file_start = 0;
        let mut named = self.files[0].clone();
        for (f, &n) in self.files.iter().zip(&self.rows) {
            let (lo, hi) = (start.max(file_start), (start + len).min(file_start + n));
            if lo < hi {
                let df = scan_losses(std::slice::from_ref(f))?
                    .slice((lo - file_start) as i64, (hi - lo) as IdxSize)
                    .select(cols.clone())
                    .collect()
                    .with_path(f)?;
                named = f.clone();
                match &mut out {
                    None => out = Some(df),
                    Some(o) => {
                        o.vstack_mut(&df).with_path(f)?;
                    }
                }
            }
            file_start += n;
        }
        let df = out.ok_or_else(|| Error::file(&self.label, format!("has no rows {start}..{}", start + len)))?;
        Ok((df, named))
    }
}

/// Categorize the token trajectories of a study.
///
/// Reads the study (`study.json` and any complete sharded checkpoints) and the
/// losses of every selected checkpoint (needs at least 2), whole or in parts;
/// checks that all have the same (seq, pos) rows in the same order, categorizes
/// (see [`categorize`](super::trajectory::categorize)) and writes, atomically:
///
/// - `<study>/trajectories.parquet`: one row per token, columns `seq` u32,
///   `pos` u32, `token_id` u32, `category` str (file form `"H->H"`), `delta`,
///   `slope`, `first_loss`, `last_loss`, `mean_loss`, `std_loss`,
///   `residual_std` (all f32);
/// - `<study>/categories.json`: the returned summary as JSON.
///
/// Out of core: two passes over the files, the first for L_mean (the mean of the
/// last checkpoint's losses), the second in blocks of [`BLOCK_ROWS`] tokens, each
/// categorized and appended to the output; memory holds one block of
/// [tokens x checkpoints] losses, whatever the size of the study.
///
/// One writer at a time: it holds the study lock ([`crate::lock`]) from reading study.json to
/// publishing, so what it publishes is of the study it read (an eval waits to publish meanwhile).
pub fn categorize_study(study: &Path, opts: &CategorizeOptions) -> Result<CategorizeSummary> {
    let _lock = if study.is_dir() { Some(crate::lock::lock_study(study, false)?) } else { None };
    categorize_study_blocks(study, opts, BLOCK_ROWS)
}

/// [`categorize_study`] with a given block size (tests use small blocks).
pub fn categorize_study_blocks(study: &Path, opts: &CategorizeOptions, block_rows: usize) -> Result<CategorizeSummary> {
    check_threshold(opts.threshold)?;
    let block_rows = block_rows.max(1);
    let manifest = Manifest::load(study)?;
    // rho's own temporaries of runs that are gone (never another's, never the user's).
    crate::util::remove_stale_tmp(study);
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

    // Every source has the rows of the first.
    let sources = selected.iter().map(|e| LossSource::new(study, e)).collect::<Result<Vec<_>>>()?;
    let n_tokens = sources[0].n_rows();
    if n_tokens == 0 {
        return Err(Error::file(&sources[0].label, "losses file has no rows: nothing to categorize"));
    }
    for s in &sources[1..] {
        if s.n_rows() != n_tokens {
            return Err(Error::file(
                &s.label,
                format!(
                    "has {} rows but {} has {n_tokens}: the losses files of the study do not line up \
                     (evaluate all checkpoints with the same data and settings)",
                    s.n_rows(),
                    sources[0].label.display()
                ),
            ));
        }
    }
    let n_ckpt = sources.len();

    // Pass 1: L_mean over the last checkpoint.
    let last = &sources[n_ckpt - 1];
    let mut sum = 0f64;
    for start in (0..n_tokens).step_by(block_rows) {
        let len = block_rows.min(n_tokens - start);
        let (df, path) = last.block(start, len, &["loss"])?;
        sum += col_loss(&df, &path, start)?.iter().map(|&v| v as f64).sum::<f64>();
    }
    let l_mean = sum / n_tokens as f64;

    // Pass 2: blocks of tokens x checkpoints -> trajectories, appended to the output.
    let out_path = trajectories_path(study);
    let generation = new_generation();
    let mut counts = [0u64; 4];
    crate::util::write_atomic(&out_path, |file| {
        let mut writer: Option<polars::io::parquet::write::BatchedWriter<&mut std::fs::File>> = None;
        let mut file = Some(file);
        for start in (0..n_tokens).step_by(block_rows) {
            let len = block_rows.min(n_tokens - start);
            let (df, first_path) = sources[0].block(start, len, &["seq", "pos", "token_id", "loss"])?;
            let seq = col_u32(&df, "seq", &first_path)?;
            let pos = col_u32(&df, "pos", &first_path)?;
            let token_id = col_u32(&df, "token_id", &first_path)?;
            let mut losses: Vec<f32> = Vec::with_capacity(len * n_ckpt);
            losses.extend_from_slice(&col_loss(&df, &first_path, start)?);
            drop(df);
            for src in &sources[1..] {
                let (df, path) = src.block(start, len, &["seq", "pos", "loss"])?;
                let s = col_u32(&df, "seq", &path)?;
                let p = col_u32(&df, "pos", &path)?;
                if let Some(i) = (0..len).find(|&i| s[i] != seq[i] || p[i] != pos[i]) {
                    return Err(Error::file(
                        &path,
                        format!(
                            "row {} is (seq {}, pos {}) but row {} of {} is (seq {}, pos {}): the losses \
                             files of the study do not line up (evaluate all checkpoints with the same data and settings)",
                            start + i,
                            s[i],
                            p[i],
                            start + i,
                            first_path.display(),
                            seq[i],
                            pos[i]
                        ),
                    ));
                }
                losses.extend_from_slice(&col_loss(&df, &path, start)?);
            }
            let tr = categorize_block(&losses, len, n_ckpt, l_mean, opts.threshold);
            drop(losses);
            for t in &tr {
                counts[t.category.index()] += 1;
            }
            let f = |get: fn(&super::trajectory::TokenTrajectory) -> f64| -> Vec<f32> {
                tr.iter().map(|t| get(t) as f32).collect()
            };
            let category: Vec<&str> = tr.iter().map(|t| t.category.as_file_str()).collect();
            let out = DataFrame::new(vec![
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
            if writer.is_none() {
                let w = ParquetWriter::new(file.take().unwrap())
                    .with_compression(ParquetCompression::Zstd(None))
                    .with_key_value_metadata(Some(KeyValueMetadata::from_static(vec![(GENERATION_KEY.into(), generation.clone())])))
                    .batched(&out.schema())
                    .with_path(&out_path)?;
                writer = Some(w);
            }
            writer.as_mut().unwrap().write_batch(&out).with_path(&out_path)?;
        }
        writer.unwrap().finish().with_path(&out_path)?;
        Ok(())
    })?;
    let names: Vec<String> = selected.iter().map(|c| c.name.clone()).collect();
    let summary = CategorizeSummary::from_counts(counts, l_mean, opts.threshold, names);
    // Last: the record of the generation (trajectories.parquet is in place).
    summary.save_with_generation(&categories_path(study), &generation)?;
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
                step: Some(step),
                tokens_seen: None,
                stage: None,
                path: PathBuf::from(format!("/ckpts/{}", NAMES[c])),
                fingerprint: "fp".into(),
                n_tokens: KEYS.len() as u64,
                mean_loss: losses.iter().map(|&x| x as f64).sum::<f64>() / KEYS.len() as f64,
                shards: None,
                sha256: None,
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
        assert_eq!(load_categorized(dir.path()).unwrap(), s);
        // no temporary files left behind
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(crate::temp::is_temp_name))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn readers_refuse_trajectories_and_categories_of_two_runs() {
        let dir = make_study(&[0, 1, 2]);
        let (tp, cp) = (trajectories_path(dir.path()), categories_path(dir.path()));
        categorize_study(dir.path(), &CategorizeOptions::default()).unwrap();
        let (_, g1) = CategorizeSummary::load_with_generation(&cp).unwrap();
        let g1 = g1.expect("categories.json records its generation");
        assert_eq!(g1.len(), 32);
        assert_eq!(trajectories_generation(&tp).unwrap().as_deref(), Some(g1.as_str()));
        let (old_t, old_c) = (std::fs::read(&tp).unwrap(), std::fs::read(&cp).unwrap());
        // a second run: a new generation in both files
        let s2 = categorize_study(dir.path(), &CategorizeOptions { threshold: 1.5, checkpoints: None }).unwrap();
        let (_, g2) = CategorizeSummary::load_with_generation(&cp).unwrap();
        assert_ne!(g2.as_deref(), Some(g1.as_str()));
        assert_eq!(load_categorized(dir.path()).unwrap(), s2);
        let new_t = std::fs::read(&tp).unwrap();
        // stopped between its two renames: the new trajectories with the old categories.json
        std::fs::write(&cp, &old_c).unwrap();
        let e = load_categorized(dir.path()).unwrap_err();
        assert!(matches!(&e, Error::File { path, .. } if *path == tp), "{e}");
        assert!(e.to_string().contains("rho categorize") && e.to_string().contains(&g1), "{e}");
        // ... or the old trajectories with the new record
        std::fs::write(&tp, &old_t).unwrap();
        categorize_study(dir.path(), &CategorizeOptions { threshold: 1.5, checkpoints: None }).unwrap();
        std::fs::write(&tp, &old_t).unwrap();
        assert!(load_categorized(dir.path()).is_err());
        // a record of an older rho (no generation) with new trajectories: refused; both old: read
        let legacy = serde_json::to_vec(&CategorizeSummary::load(&cp).unwrap()).unwrap();
        std::fs::write(&cp, &legacy).unwrap();
        std::fs::write(&tp, &new_t).unwrap();
        assert!(load_categorized(dir.path()).is_err());
        let mut df = crate::util::read_parquet(&tp).unwrap();
        crate::util::write_parquet(&tp, &mut df).unwrap();
        assert_eq!(trajectories_generation(&tp).unwrap(), None);
        assert!(load_categorized(dir.path()).is_ok());
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

    fn trajectories(study: &Path) -> DataFrame {
        crate::util::read_parquet(&trajectories_path(study)).unwrap()
    }

    #[test]
    fn blocks_and_parts_give_the_same_result() {
        let dir = make_study(&[0, 1, 2]);
        let opts = CategorizeOptions::default();
        let want = categorize_study_blocks(dir.path(), &opts, 1 << 20).unwrap();
        let want_df = trajectories(dir.path());
        assert_eq!(want_df.height(), 4);
        for block in [1, 2, 3] {
            let got = categorize_study_blocks(dir.path(), &opts, block).unwrap();
            assert_eq!(got, want, "block {block}");
            assert!(trajectories(dir.path()).equals(&want_df), "block {block}");
        }

        // c1 in 3 parts of 1, 2 and 1 rows (as `rho eval --shard I/3` writes them), not in study.json.
        let mut m = Manifest::load_file(dir.path()).unwrap();
        m.checkpoints.retain(|c| c.name != "c1");
        m.save(dir.path()).unwrap();
        std::fs::remove_file(Manifest::losses_path(dir.path(), "c1")).unwrap();
        for (i, r) in [0..1usize, 1..3, 3..4].into_iter().enumerate() {
            let sh = crate::eval::Shard { index: i as u32, count: 3 };
            let keys = &KEYS[r.clone()];
            let losses: Vec<f32> = ROWS[r.clone()].iter().map(|row| row[1]).collect();
            let n = keys.len();
            let mut df = DataFrame::new(vec![
                Column::new("checkpoint".into(), vec!["c1"; n]),
                Column::new("step".into(), vec![200i64; n]),
                Column::new("seq".into(), keys.iter().map(|k| k.0).collect::<Vec<u32>>()),
                Column::new("pos".into(), keys.iter().map(|k| k.1).collect::<Vec<u32>>()),
                Column::new("token_id".into(), r.clone().map(|i| 100 + i as u32).collect::<Vec<u32>>()),
                Column::new("loss".into(), losses.clone()),
            ])
            .unwrap();
            crate::util::write_parquet(&crate::eval::study::part_path(dir.path(), "c1", sh, "parquet"), &mut df).unwrap();
            let rec = crate::eval::study::PartEntry {
                name: "c1".into(),
                step: Some(200),
                tokens_seen: None,
                stage: None,
                order: None,
                after: None,
                path: PathBuf::from("/ckpts/c1"),
                fingerprint: "fp".into(),
                shard: i as u32,
                shards: 3,
                row_start: r.start as u64,
                n_tokens: n as u64,
                loss_sum: losses.iter().map(|&x| x as f64).sum(),
                sha256: None,
            };
            let p = crate::eval::study::part_path(dir.path(), "c1", sh, "json");
            crate::util::write_bytes_atomic(&p, &serde_json::to_vec(&rec).unwrap()).unwrap();
        }
        let m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.checkpoints.iter().map(|c| (c.name.as_str(), c.shards)).collect::<Vec<_>>(), [("c0", None), ("c1", Some(3)), ("c2", None)]);
        for block in [1, 2, 3, 100] {
            let got = categorize_study_blocks(dir.path(), &opts, block).unwrap();
            assert_eq!(got, want, "parts, block {block}");
            assert!(trajectories(dir.path()).equals(&want_df), "parts, block {block}");
        }

        // A part whose record is gone makes the study incomplete: refused, naming the shard.
        std::fs::remove_file(crate::eval::study::part_path(dir.path(), "c1", crate::eval::Shard { index: 1, count: 3 }, "json")).unwrap();
        let e = categorize_study(dir.path(), &opts).unwrap_err().to_string();
        assert!(e.contains("checkpoint=c1") && e.contains("missing shards 1"), "{e}");
    }
}
