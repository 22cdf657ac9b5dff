//! The smoke suite's in-process parts at tiny sizes: the benchmark code runs
//! in every test run, but no figure decides pass or fail.

use bench::report::Report;
use bench::suite::{self, Options};

#[test]
fn in_process_parts_of_the_smoke_suite_run_and_report() {
    let out = std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id()));
    let opts = Options { out: out.clone(), ..Options::smoke(&suite::workspace()) };
    let mut report = Report { smoke: true, ..Report::default() };

    suite::first_invocation(&opts, &mut report, false).unwrap();
    let off = suite::throughput(&opts, &mut report);
    suite::breakdown(&opts, &mut report);
    suite::ingest(&opts, &mut report, false).unwrap();
    suite::logging_overhead(&opts, &mut report, &off, false).unwrap();

    let sections: Vec<&str> = report.rows.iter().map(|r| r.section.as_str()).collect();
    for section in ["first invocation", "throughput", "breakdown", "ingest", "logging"] {
        assert!(sections.contains(&section), "no {section} figures in {sections:?}");
    }
    assert!(report.rows.iter().all(|r| r.measured.is_finite()), "{}", report.table());
    report.write(&out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
    assert!(std::fs::read_to_string(out.join("chart.svg")).unwrap().starts_with("<svg"));
    std::fs::remove_dir_all(&out).unwrap();
}
