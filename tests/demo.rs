//! The demo on the built-in planted-truth corpus, and the recovery test: each
//! planted class lands in its expected Rho-1 category.

use rho::demo::{corpus::Class, run_demo, DemoConfig};
use rho::dynamics::Category;

#[test]
fn demo_recovers_the_planted_classes() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("demo");
    let s = run_demo(&study, &DemoConfig { quiet: true, ..Default::default() }).unwrap();
    eprintln!("{}", s.categories.table());
    eprintln!("{}", rho::demo::recovery_table(&s.recovery));
    // All four categories are present.
    for c in Category::ALL {
        assert!(s.categories.count(c) > 0, "no {c} token: {:?}", s.categories);
    }
    for r in &s.recovery {
        let need = if r.class == Class::Forgotten { 0.60 } else { 0.80 };
        assert!(r.n_tokens >= 50, "{:?}: only {} tokens", r.class, r.n_tokens);
        assert!(r.share >= need, "{:?} -> {}: {:.1}% < {:.0}%", r.class, r.expected, 100.0 * r.share, 100.0 * need);
    }
    // The study has what the other tools read.
    for f in ["study.json", "tokens.parquet", "trajectories.parquet", "categories.json", "token_classes.parquet"] {
        assert!(study.join(f).exists(), "{f}");
    }
    let m = rho::eval::study::Manifest::load(&study).unwrap();
    assert!(m.checkpoints.len() >= 9, "{} checkpoints", m.checkpoints.len());
    assert_eq!(m.checkpoints[0].name, "step-0");
    for run in ["base", "phase2", "reference", "slm", "clm"] {
        assert!(study.join("runs").join(run).join("metrics.jsonl").exists(), "{run}");
    }
    // The report: every chart, including the run charts (the demo has an SLM run).
    assert_eq!(s.report, study.join("report").join("index.html"));
    let index = std::fs::read_to_string(&s.report).unwrap();
    for f in rho::report::CHARTS.iter().chain(rho::report::RUN_CHARTS.iter()) {
        assert!(study.join("report").join(f).exists(), "{f}");
        assert!(index.contains(f), "index.html does not show {f}");
    }
}
