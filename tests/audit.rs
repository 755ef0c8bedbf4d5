//! `rho audit` through the binary, on a study built from fixtures/llama
//! (3 checkpoints, 502 tokens): shares, sorting, --top, --contains, --category,
//! context, the four formats (JSON parsed with the documented, deny_unknown_fields
//! structs), and the --fail-if exit statuses.

mod common;
use common::*;
use polars::prelude::*;
use rho::audit::{AuditLine, AuditReport, SortKey, TokenRecord, CSV_HEADER, SCHEMA_VERSION};
use rho::dynamics::{CategorizeSummary, Category};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

struct Study {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// `rho eval` on the llama fixture series, then `rho categorize`.
fn study() -> Study {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("study");
    let s = path.to_str().unwrap();
    let ckpts = fixtures().join("llama");
    let out = rho(&["eval", "--quiet", "--checkpoints", ckpts.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = rho(&["categorize", "--study", s]);
    assert!(out.status.success(), "{}", stderr(&out));
    Study { _dir: dir, path }
}

fn audit(study: &Path, args: &[&str]) -> Output {
    let mut a = vec!["audit", "--study", study.to_str().unwrap()];
    a.extend_from_slice(args);
    rho(&a)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8")
}

/// Run with `--format json`, expect success, parse with the documented structs.
fn json(study: &Path, args: &[&str]) -> AuditReport {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = audit(study, &a);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

fn summary(study: &Path) -> CategorizeSummary {
    CategorizeSummary::load(&study.join("categories.json")).unwrap()
}

/// tokens.parquet as (seq, pos) -> text.
fn token_texts(study: &Path) -> HashMap<(u32, u32), String> {
    let df = rho::util::read_parquet(&study.join("tokens.parquet")).unwrap();
    let s = df.column("seq").unwrap().u32().unwrap().clone();
    let p = df.column("pos").unwrap().u32().unwrap().clone();
    let t = df.column("text").unwrap().str().unwrap().clone();
    let mut m = HashMap::new();
    for i in 0..df.height() {
        m.insert((s.get(i).unwrap(), p.get(i).unwrap()), t.get(i).unwrap().to_string());
    }
    m
}

fn key(t: &TokenRecord, k: SortKey) -> f32 {
    match k {
        SortKey::ResidualStd => t.residual_std,
        SortKey::Delta => t.delta,
        SortKey::LastLoss => t.last_loss,
        SortKey::MeanLoss => t.mean_loss,
    }
}

#[test]
fn shares_come_from_the_study() {
    let s = study();
    let r = json(&s.path, &[]);
    let want = summary(&s.path);
    assert_eq!(r.schema_version, SCHEMA_VERSION);
    assert_eq!(r.study, s.path.display().to_string());
    assert_eq!(r.total, 502);
    assert_eq!(r.total, want.total);
    assert_eq!((r.threshold, r.l_mean), (want.threshold, want.l_mean));
    assert_eq!(r.checkpoints, vec!["step-0", "step-100", "step-200"]);
    let cats: Vec<Category> = r.categories.iter().map(|c| c.category).collect();
    assert_eq!(cats, Category::ALL.to_vec());
    for c in &r.categories {
        assert_eq!(c.count, want.count(c.category), "{}", c.category);
        assert_eq!(c.share, want.share(c.category));
    }
    // H->L dominates this short run: most tokens are still being learned.
    assert_eq!(r.categories.iter().map(|c| c.count).sum::<u64>(), 502);
    assert!(r.categories[2].share > 0.5, "{:?}", r.categories);
    // defaults
    assert_eq!(r.matched, 502);
    assert_eq!(r.tokens.len(), 20);
    assert_eq!(r.query.sort, SortKey::ResidualStd);
    assert!(!r.query.ascending && r.query.category.is_none() && r.query.contains.is_none());
    assert!(r.fail_if.is_empty() && !r.failed);
}

#[test]
fn sorting_and_top() {
    let s = study();
    let traj = rho::util::read_parquet(&s.path.join("trajectories.parquet")).unwrap();
    for k in [SortKey::ResidualStd, SortKey::Delta, SortKey::LastLoss, SortKey::MeanLoss] {
        let col: Vec<f32> = traj.column(k.column()).unwrap().f32().unwrap().into_no_null_iter().collect();
        let max = col.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let min = col.iter().cloned().fold(f32::INFINITY, f32::min);
        let r = json(&s.path, &["--sort", k.column(), "--top", "7"]);
        assert_eq!(r.tokens.len(), 7);
        assert_eq!(r.tokens.iter().map(|t| t.rank).collect::<Vec<_>>(), (1..=7).collect::<Vec<_>>());
        assert_eq!(key(&r.tokens[0], k), max, "{k:?}");
        assert!(r.tokens.windows(2).all(|w| key(&w[0], k) >= key(&w[1], k)), "{k:?} not descending");
        let r = json(&s.path, &["--sort", k.column(), "--top", "5", "--ascending"]);
        assert_eq!(key(&r.tokens[0], k), min, "{k:?}");
        assert!(r.tokens.windows(2).all(|w| key(&w[0], k) <= key(&w[1], k)), "{k:?} not ascending");
    }
    // --top larger than the study, and 0
    assert_eq!(json(&s.path, &["--top", "100000"]).tokens.len(), 502);
    let r = json(&s.path, &["--top", "0"]);
    assert!(r.tokens.is_empty());
    assert_eq!(r.matched, 502);
    // a bad sort key is a usage error
    let out = audit(&s.path, &["--sort", "loudness"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn category_filter() {
    let s = study();
    let want = summary(&s.path);
    for (spelling, c) in [("H->L", Category::HL), ("L→H", Category::LH), ("hh", Category::HH), ("L->L", Category::LL)] {
        let r = json(&s.path, &["--category", spelling, "--top", "1000"]);
        assert_eq!(r.query.category, Some(c));
        assert_eq!(r.matched, want.count(c), "{c}");
        assert_eq!(r.tokens.len() as u64, want.count(c));
        assert!(r.tokens.iter().all(|t| t.category == c), "{c}");
    }
    let out = audit(&s.path, &["--category", "H->M"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: --category: "), "{}", stderr(&out));
}

#[test]
fn contains_filter_and_context() {
    let s = study();
    let texts = token_texts(&s.path);
    for pat in ["e", " the", "$"] {
        let n = texts.values().filter(|t| t.contains(pat)).count() as u64;
        assert!(n > 0, "{pat}");
        let r = json(&s.path, &["--contains", pat, "--top", "1000"]);
        assert_eq!(r.matched, n, "{pat}");
        assert_eq!(r.tokens.len() as u64, n);
        assert!(r.tokens.iter().all(|t| t.text.contains(pat)), "{pat}");
    }
    // case-sensitive; nothing matches
    let r = json(&s.path, &["--contains", "\u{2603}snowman"]);
    assert_eq!((r.matched, r.tokens.len()), (0, 0));
    // combined with a category
    let r = json(&s.path, &["--contains", "e", "--category", "H->L", "--top", "1000"]);
    assert!(r.tokens.iter().all(|t| t.text.contains('e') && t.category == Category::HL));
    assert!(r.matched < texts.values().filter(|t| t.contains('e')).count() as u64);

    // context: the texts of the neighbouring scored tokens of the same seq, from tokens.parquet
    for k in [0usize, 1, 3] {
        let r = json(&s.path, &["--top", "30", "--context", &k.to_string()]);
        assert_eq!(r.query.context, k as u64);
        for t in &r.tokens {
            assert_eq!(texts[&(t.seq, t.pos)], t.text);
            let before: String = (t.pos.saturating_sub(k as u32)..t.pos).filter_map(|p| texts.get(&(t.seq, p)).cloned()).collect();
            let after: String = (t.pos + 1..=t.pos + k as u32).filter_map(|p| texts.get(&(t.seq, p)).cloned()).collect();
            assert_eq!((&t.context_before, &t.context_after), (&before, &after), "k={k} {t:?}");
            assert!(t.end > t.start, "{t:?}");
        }
    }
}

/// RFC 4180 CSV: quoted fields may hold commas, doubled quotes and line breaks.
fn parse_csv(s: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => quoted = false,
                c => field.push(c),
            }
        } else {
            match c {
                '"' => {
                    assert!(field.is_empty(), "quote inside an unquoted field");
                    quoted = true
                }
                ',' => row.push(std::mem::take(&mut field)),
                '\n' => {
                    row.push(std::mem::take(&mut field));
                    rows.push(std::mem::take(&mut row));
                }
                c => field.push(c),
            }
        }
    }
    assert!(!quoted, "unterminated quote");
    assert!(field.is_empty() && row.is_empty(), "last row has no line end");
    rows
}

#[test]
fn formats_agree() {
    let s = study();
    let args = ["--top", "40", "--sort", "delta", "--context", "2"];
    let r = json(&s.path, &args);
    assert_eq!(r.tokens.len(), 40);

    // jsonl: a summary record, then one token record per line
    let mut a = args.to_vec();
    a.extend(["--format", "jsonl"]);
    let out = audit(&s.path, &a);
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<AuditLine> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert_eq!(lines.len(), 41);
    assert!(matches!(lines[0], AuditLine::Summary(_)));
    assert!(text.lines().skip(1).all(|l| l.starts_with("{\"type\":\"token\",")));
    assert_eq!(AuditReport::from_lines(lines).unwrap(), r);

    // csv: header + one row per token, text round-trips through the quoting
    let mut a = args.to_vec();
    a.extend(["--format", "csv"]);
    let out = audit(&s.path, &a);
    assert!(out.status.success());
    let rows = parse_csv(&stdout(&out));
    assert_eq!(rows[0], CSV_HEADER.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    assert_eq!(rows.len(), 41);
    let col = |name: &str| CSV_HEADER.iter().position(|h| *h == name).unwrap();
    for (row, t) in rows[1..].iter().zip(&r.tokens) {
        assert_eq!(row.len(), CSV_HEADER.len());
        assert_eq!(row[col("rank")], t.rank.to_string());
        assert_eq!(row[col("category")], t.category.as_file_str());
        assert_eq!(row[col("text")], t.text);
        assert_eq!(row[col("context_before")], t.context_before);
        assert_eq!(row[col("context_after")], t.context_after);
        assert_eq!(row[col("delta")].parse::<f32>().unwrap(), t.delta);
        assert_eq!(row[col("sort_key")], "delta");
    }
    // the fixture text has tokens that need quoting (leading spaces at least)
    assert!(stdout(&out).contains(",\" "), "no quoted field");

    // table: shares, then the tokens with their context
    let mut a = args.to_vec();
    a.extend(["--format", "table"]);
    let out = audit(&s.path, &a);
    assert!(out.status.success());
    let t = stdout(&out);
    for c in &r.categories {
        let row = t.lines().find(|l| l.starts_with(&c.category.to_string())).unwrap_or_else(|| panic!("{t}"));
        assert!(row.contains(&c.count.to_string()), "{row}");
    }
    assert!(t.contains("502 tokens match (all tokens); showing 40 by delta (largest first)"), "{t}");
    assert!(t.contains(&format!("⟦{}⟧", rho::audit::show_text(&r.tokens[0].text))), "{t}");
    assert_eq!(t.lines().filter(|l| l.contains('⟦')).count(), 40, "{t}");
}

#[test]
fn json_round_trips_through_the_documented_schema() {
    let s = study();
    let out = audit(&s.path, &["--format", "json", "--category", "H->L", "--contains", "e", "--top", "5", "--fail-if", "L->L<=0.5"]);
    assert_eq!(out.status.code(), Some(3));
    let text = stdout(&out);
    let raw: serde_json::Value = serde_json::from_str(&text).unwrap();
    let r: AuditReport = serde_json::from_str(&text).unwrap();
    // every field of the output is a field of the structs, and nothing is lost:
    // serialising the parsed report gives back the output byte for byte
    assert_eq!(serde_json::to_string_pretty(&r).unwrap() + "\n", text);
    assert_eq!(r.query.contains.as_deref(), Some("e"));
    assert_eq!(r.query.category, Some(Category::HL));
    assert_eq!(r.fail_if[0].condition, "L->L<=0.5");
    // deny_unknown_fields: an extra field anywhere is refused
    for path in [&[][..], &["query"][..], &["tokens", "0"][..], &["categories", "1"][..], &["fail_if", "0"][..]] {
        let mut v = raw.clone();
        let mut node = &mut v;
        for p in path {
            node = match p.parse::<usize>() {
                Ok(i) => &mut node[i],
                Err(_) => &mut node[*p],
            };
        }
        node.as_object_mut().unwrap().insert("surprise".into(), serde_json::json!(true));
        assert!(serde_json::from_value::<AuditReport>(v).is_err(), "extra field under {path:?} accepted");
    }
    // documented field names (docs/audit-json.md) are the ones printed
    let doc = std::fs::read_to_string(root().join("docs/audit-json.md")).unwrap();
    for k in raw.as_object().unwrap().keys().chain(raw["tokens"][0].as_object().unwrap().keys()).chain(raw["query"].as_object().unwrap().keys()) {
        assert!(doc.contains(&format!("`{k}`")), "docs/audit-json.md does not document `{k}`");
    }
}

#[test]
fn fail_if_gates_with_exit_status_3() {
    let s = study();
    // H->L is 83% of this study
    let out = audit(&s.path, &["--fail-if", "H->L>0.5"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stdout(&out).contains("--fail-if H->L>0.5: HOLDS"), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("H->L>0.5") && err.contains("0.83"), "{err}");

    for (conds, code) in [
        (&["H->L<0.5"][..], 0),
        (&["H→L >= 83%"][..], 3),
        (&["HL<=0.8", "LL>0.9"][..], 0),
        (&["HL<=0.8", "LL<0.9"][..], 3), // one of several holds
        (&["H->H>0.15"][..], 0),
        (&["L->H>=0"][..], 3),
    ] {
        let mut a = vec!["--format", "json"];
        for c in conds {
            a.extend(["--fail-if", c]);
        }
        let out = audit(&s.path, &a);
        assert_eq!(out.status.code(), Some(code), "{conds:?}: {}", stderr(&out));
        let r: AuditReport = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(r.failed, code == 3, "{conds:?}");
        assert_eq!(r.fail_if.len(), conds.len());
        assert_eq!(r.fail_if.iter().any(|c| c.holds), code == 3);
    }
}

#[test]
fn malformed_fail_if_is_a_flag_error() {
    let s = study();
    for bad in ["H->H", "H->H=0.1", "X->H>0.1", "H->H>1.5", "H->H>lots", "", ">0.2"] {
        let out = audit(&s.path, &["--fail-if", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.starts_with("error: --fail-if: "), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(out.stdout.is_empty(), "printed output despite a bad flag");
    }
}

#[test]
fn study_without_categories_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let out = rho(&["eval", "--quiet", "--checkpoints", fixtures().join("llama").to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap()]);
    assert!(out.status.success());
    let out = audit(&study, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("categories.json") && stderr(&out).contains("rho categorize"), "{}", stderr(&out));
    let out = audit(&dir.path().join("nothing"), &[]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn extra_columns_are_ignored() {
    // A study whose tokens.parquet has an extra large column: the audit output is unchanged
    // (the scans select their columns).
    let s = study();
    let before = json(&s.path, &["--top", "10"]);
    let p = s.path.join("tokens.parquet");
    let mut df = rho::util::read_parquet(&p).unwrap();
    let n = df.height();
    df.with_column(Column::new("blob".into(), vec!["x".repeat(1000); n])).unwrap();
    rho::util::write_parquet(&p, &mut df).unwrap();
    let after = json(&s.path, &["--top", "10"]);
    assert_eq!(before, after);
}

/// `rho audit ... | head -1`: the closed pipe ends rho quietly (SIGPIPE), no panic message.
#[test]
fn a_closed_stdout_pipe_is_not_a_panic() {
    let s = study();
    let script = format!(
        "'{}' audit --study '{}' --format jsonl --top 100000 | head -c 10 >/dev/null",
        env!("CARGO_BIN_EXE_rho"),
        s.path.display()
    );
    let out = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked") && !err.contains("Broken pipe"), "{err}");
    assert!(out.status.success());
}
