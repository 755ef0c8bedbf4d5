//! Unit tests of the selection and the formats on hand-made tables.

use super::*;

/// Two sequences: seq 0 "The cat sat on the mat." (pos 1..=6), seq 1 "a,b\n\"c\"" (pos 1..=3).
fn tokens_df() -> DataFrame {
    let rows: &[(u32, u32, &str)] = &[
        (0, 1, "The"),
        (0, 2, " cat"),
        (0, 3, " sat"),
        (0, 4, " on"),
        (0, 5, " the"),
        (0, 6, " mat."),
        (1, 1, "a,b"),
        (1, 2, "\n"),
        (1, 3, "\"c\""),
    ];
    let mut start = 0u32;
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    let mut last_seq = 0;
    for r in rows {
        if r.0 != last_seq {
            start = 0;
            last_seq = r.0;
        }
        starts.push(start);
        start += r.2.len() as u32;
        ends.push(start);
    }
    DataFrame::new(vec![
        Column::new("seq".into(), rows.iter().map(|r| r.0).collect::<Vec<u32>>()),
        Column::new("pos".into(), rows.iter().map(|r| r.1).collect::<Vec<u32>>()),
        Column::new("doc".into(), rows.iter().map(|r| r.0 + 10).collect::<Vec<u32>>()),
        Column::new("token_id".into(), (0..rows.len() as u32).collect::<Vec<u32>>()),
        Column::new("text".into(), rows.iter().map(|r| r.2).collect::<Vec<&str>>()),
        Column::new("start".into(), starts),
        Column::new("end".into(), ends),
    ])
    .unwrap()
}

/// Trajectories of the same 9 tokens, in another order than tokens_df (the join must not care).
fn traj_df() -> DataFrame {
    // (seq, pos, category, delta, last_loss, mean_loss, residual_std)
    let rows: &[(u32, u32, &str, f32, f32, f32, f32)] = &[
        (1, 3, "H->H", 0.0, 5.0, 5.0, 0.9),
        (0, 1, "L->L", 0.0, 0.5, 0.5, 0.1),
        (0, 2, "H->L", -2.0, 1.0, 2.0, 0.9), // ties with (1, 3), a row earlier in the file
        (0, 3, "H->H", 0.1, 4.0, 4.0, 0.7),
        (0, 4, "L->H", 1.5, 3.0, 2.0, 0.2),
        (0, 5, "L->L", 0.0, 0.4, 0.4, 0.7),
        (0, 6, "H->H", -0.1, 6.0, 6.0, 0.5),
        (1, 1, "L->L", 0.05, 0.2, 0.2, 0.05),
        (1, 2, "H->L", -3.0, 0.1, 1.6, 0.4),
    ];
    DataFrame::new(vec![
        Column::new("seq".into(), rows.iter().map(|r| r.0).collect::<Vec<u32>>()),
        Column::new("pos".into(), rows.iter().map(|r| r.1).collect::<Vec<u32>>()),
        Column::new("token_id".into(), rows.iter().map(|r| r.0 * 100 + r.1).collect::<Vec<u32>>()),
        Column::new("category".into(), rows.iter().map(|r| r.2).collect::<Vec<&str>>()),
        Column::new("delta".into(), rows.iter().map(|r| r.3).collect::<Vec<f32>>()),
        Column::new("slope".into(), rows.iter().map(|r| r.3 / 2.0).collect::<Vec<f32>>()),
        Column::new("first_loss".into(), rows.iter().map(|r| r.4 - r.3).collect::<Vec<f32>>()),
        Column::new("last_loss".into(), rows.iter().map(|r| r.4).collect::<Vec<f32>>()),
        Column::new("mean_loss".into(), rows.iter().map(|r| r.5).collect::<Vec<f32>>()),
        Column::new("std_loss".into(), rows.iter().map(|r| r.6 * 2.0).collect::<Vec<f32>>()),
        Column::new("residual_std".into(), rows.iter().map(|r| r.6).collect::<Vec<f32>>()),
    ])
    .unwrap()
}

fn select(opts: &AuditOptions) -> (u64, Vec<TokenRecord>) {
    select_tokens(traj_df().lazy(), tokens_df().lazy(), opts).unwrap()
}

fn keys(ts: &[TokenRecord]) -> Vec<(u32, u32)> {
    ts.iter().map(|t| (t.seq, t.pos)).collect()
}

#[test]
fn sorts_largest_first_with_ties_by_seq_pos() {
    let (m, ts) = select(&AuditOptions { top: 4, ..Default::default() });
    assert_eq!(m, 9);
    // the tie 0.9 at (1,3) and (0,2), then the tie 0.7 at (0,3) and (0,5), in (seq, pos) order
    // whatever the order of the rows in the file.
    assert_eq!(keys(&ts), vec![(0, 2), (1, 3), (0, 3), (0, 5)]);
    assert_eq!(ts.iter().map(|t| t.rank).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // the cut falls inside a tie: the tie is still ordered by (seq, pos)
    let (_, ts) = select(&AuditOptions { top: 1, ..Default::default() });
    assert_eq!(keys(&ts), vec![(0, 2)]);
    let (_, ts) = select(&AuditOptions { top: 3, ..Default::default() });
    assert_eq!(keys(&ts), vec![(0, 2), (1, 3), (0, 3)]);
    let (_, ts) = select(&AuditOptions { top: 2, sort: SortKey::Delta, ..Default::default() });
    assert_eq!(keys(&ts), vec![(0, 4), (0, 3)]);
    let (_, ts) = select(&AuditOptions { top: 2, ascending: true, ..Default::default() });
    assert_eq!(keys(&ts), vec![(1, 1), (0, 1)]);
    let (_, ts) = select(&AuditOptions { top: 2, sort: SortKey::Delta, ascending: true, ..Default::default() });
    assert_eq!(keys(&ts), vec![(1, 2), (0, 2)]);
    let (_, ts) = select(&AuditOptions { top: 1, sort: SortKey::LastLoss, ..Default::default() });
    assert_eq!(keys(&ts), vec![(0, 6)]);
    let (_, ts) = select(&AuditOptions { top: 1, sort: SortKey::MeanLoss, ascending: true, ..Default::default() });
    assert_eq!(keys(&ts), vec![(1, 1)]);
}

#[test]
fn filters_by_category_and_text() {
    let (m, ts) = select(&AuditOptions { category: Some(Category::HH), ..Default::default() });
    assert_eq!(m, 3);
    assert_eq!(keys(&ts), vec![(1, 3), (0, 3), (0, 6)]);
    assert!(ts.iter().all(|t| t.category == Category::HH));

    // " the" and "The": case-sensitive substring
    let (m, ts) = select(&AuditOptions { contains: Some("he".into()), ..Default::default() });
    assert_eq!(m, 2);
    assert_eq!(keys(&ts), vec![(0, 5), (0, 1)]);
    let (m, ts) = select(&AuditOptions { contains: Some("he".into()), category: Some(Category::LL), top: 1, ..Default::default() });
    assert_eq!((m, keys(&ts)), (2, vec![(0, 5)]));
    let (m, ts) = select(&AuditOptions { contains: Some("zebra".into()), ..Default::default() });
    assert_eq!((m, ts.len()), (0, 0));
    let (m, ts) = select(&AuditOptions { top: 0, ..Default::default() });
    assert_eq!((m, ts.len()), (9, 0));
}

#[test]
fn records_carry_text_span_and_context() {
    let (_, ts) = select(&AuditOptions { category: Some(Category::LH), context: 2, ..Default::default() });
    let t = &ts[0];
    assert_eq!((t.seq, t.pos, t.doc, t.token_id), (0, 4, 10, 4));
    assert_eq!(t.text, " on");
    assert_eq!((t.start, t.end), (11, 14));
    assert_eq!(t.context_before, " cat sat");
    assert_eq!(t.context_after, " the mat.");
    assert_eq!((t.delta, t.slope, t.last_loss, t.first_loss), (1.5, 0.75, 3.0, 1.5));
    assert_eq!((t.mean_loss, t.std_loss, t.residual_std), (2.0, 0.4, 0.2));

    // at the start of a sequence, and context that does not cross into the next seq
    let (_, ts) = select(&AuditOptions { contains: Some("The".into()), context: 3, ..Default::default() });
    assert_eq!((ts[0].seq, ts[0].pos), (0, 1));
    assert_eq!(ts[0].context_before, "");
    assert_eq!(ts[0].context_after, " cat sat on");
    let (_, ts) = select(&AuditOptions { sort: SortKey::LastLoss, top: 1, context: 10, ..Default::default() });
    assert_eq!((ts[0].seq, ts[0].pos), (0, 6));
    assert_eq!(ts[0].context_before, "The cat sat on the");
    assert_eq!(ts[0].context_after, "");
    let (_, ts) = select(&AuditOptions { context: 0, top: 1, ..Default::default() });
    assert_eq!((ts[0].context_before.as_str(), ts[0].context_after.as_str()), ("", ""));
}

#[test]
fn context_skips_missing_positions() {
    let mut m = HashMap::new();
    for (p, t) in [(1u32, "a"), (2, "b"), (4, "d"), (5, "e")] {
        m.insert((7u32, p), TokenInfo { text: t.into(), ..Default::default() });
    }
    m.insert((8, 3), TokenInfo { text: "X".into(), ..Default::default() });
    assert_eq!(context(&m, 7, 3, 2), ("ab".to_string(), "de".to_string()));
    assert_eq!(context(&m, 7, 3, 1), ("b".to_string(), "d".to_string()));
    assert_eq!(context(&m, 7, 1, 5), ("".to_string(), "bde".to_string()));
    assert_eq!(context(&m, 7, 0, 0), ("".to_string(), "".to_string()));
    assert_eq!(context(&m, 7, u32::MAX, 3), ("".to_string(), "".to_string()));
}

fn summary() -> CategorizeSummary {
    CategorizeSummary {
        threshold: 0.2,
        l_mean: 2.0,
        checkpoints: vec!["a".into(), "b".into()],
        total: 10,
        categories: vec![
            crate::dynamics::CategoryShare { category: Category::HH, count: 2, share: 0.2 },
            crate::dynamics::CategoryShare { category: Category::LH, count: 1, share: 0.1 },
            crate::dynamics::CategoryShare { category: Category::HL, count: 3, share: 0.3 },
            crate::dynamics::CategoryShare { category: Category::LL, count: 4, share: 0.4 },
        ],
    }
}

#[test]
fn conditions_are_evaluated_on_study_shares() {
    let opts = AuditOptions {
        fail_if: vec![parse_condition("H->H>0.15").unwrap(), parse_condition("L→L<0.4").unwrap()],
        ..Default::default()
    };
    let r = build_report("s", &summary(), &opts, 0, vec![]);
    assert!(r.failed);
    assert_eq!(r.fail_if[0].condition, "H->H>0.15");
    assert!(r.fail_if[0].holds);
    assert_eq!(r.fail_if[0].share, 0.2);
    assert!(!r.fail_if[1].holds);
    let opts = AuditOptions { fail_if: vec![parse_condition("H->H>=0.25").unwrap()], ..Default::default() };
    assert!(!build_report("s", &summary(), &opts, 0, vec![]).failed);
    assert!(!build_report("s", &summary(), &AuditOptions::default(), 0, vec![]).failed);
}

#[test]
fn csv_quoting() {
    assert_eq!(csv_field("abc"), "abc");
    assert_eq!(csv_field("a,b"), "\"a,b\"");
    assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    assert_eq!(csv_field("a\nb"), "\"a\nb\"");
    assert_eq!(csv_field(" the"), "\" the\"");
    assert_eq!(csv_field(""), "");
}

#[test]
fn formats_render_the_same_report() {
    let (m, ts) = select(&AuditOptions { top: 9, ..Default::default() });
    let r = build_report("s", &summary(), &AuditOptions { top: 9, ..Default::default() }, m, ts);
    // json and jsonl round trip to the same report
    let j = render(&r, Format::Json).unwrap();
    assert_eq!(serde_json::from_str::<AuditReport>(&j).unwrap(), r);
    let lines: Vec<AuditLine> =
        render(&r, Format::Jsonl).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(AuditReport::from_lines(lines).unwrap(), r);
    // csv: header + 9 rows; the quoted "\n" token spans two physical lines
    let csv = render(&r, Format::Csv).unwrap();
    assert!(csv.starts_with("rank,category,seq,pos,"));
    assert!(csv.contains(",\"\"\"c\"\"\","), "{csv}");
    assert!(csv.contains(",\"a,b\","), "{csv}");
    // table escapes the line break
    let t = render(&r, Format::Table).unwrap();
    assert!(t.contains("⟦\\n⟧"), "{t}");
    assert!(t.contains("9 tokens match (all tokens)"), "{t}");
    assert!(t.contains("H→H") && t.contains("20.0%"), "{t}");
}

#[test]
fn unknown_fields_are_refused() {
    let r = build_report("s", &summary(), &AuditOptions::default(), 0, vec![]);
    let mut v = serde_json::to_value(&r).unwrap();
    v["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<AuditReport>(v).is_err());
    let mut v = serde_json::to_value(&r).unwrap();
    v["query"]["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<AuditReport>(v).is_err());
    let line = serde_json::to_value(AuditLine::Summary(r.summary())).unwrap();
    assert_eq!(line["type"], "summary");
    let mut bad = line.clone();
    bad["extra"] = serde_json::json!(1);
    assert!(serde_json::from_value::<AuditLine>(bad).is_err());
    assert!(serde_json::from_value::<AuditLine>(line).is_ok());
}
