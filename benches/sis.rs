//! SIS benchmarks (run with `cargo bench --bench sis`): import of a generated
//! 100,000-student export (target ≤ 15 s, peak RSS ≤ 300 MB) and resolution
//! of every guardian in that district (target ≤ 500 ms).
//!
//! Each import runs in a child process (this same binary with `child-import`)
//! so that its peak RSS (`VmHWM` in `/proc/self/status`) belongs to the import
//! alone, not to the generator or to earlier runs. Medians of several runs.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use klaxon::audience::{self, AudienceSpec};
use klaxon::domain::Role;
use klaxon::sis::{self, GenerateOptions, ImportOptions, SisConfig};

const STUDENTS: u32 = 100_000;
const IMPORT_RUNS: usize = 3;
const RESOLVE_RUNS: usize = 7;

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child-import") {
        let (src, store) = (Path::new(&args[2]), Path::new(&args[3]));
        let t = Instant::now();
        let r = sis::import(src, store, &SisConfig::default(), &ImportOptions::default())
            .expect("import");
        println!(
            "{} {} {}",
            t.elapsed().as_secs_f64(),
            vm_hwm_kb(),
            r.students
        );
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("export");
    let t = Instant::now();
    let sum = sis::generate(
        &src,
        &GenerateOptions {
            students: STUDENTS,
            schools: None,
            seed: 7,
        },
    )
    .expect("generate");
    println!(
        "generate: {} students, {} guardians, {} staff, {} enrollments in {:.2} s",
        sum.students,
        sum.guardians,
        sum.staff,
        sum.enrollments,
        t.elapsed().as_secs_f64()
    );

    let exe = std::env::current_exe().expect("current exe");
    let (mut secs, mut rss) = (Vec::new(), Vec::new());
    let store = dir.path().join("store");
    for i in 0..IMPORT_RUNS {
        let store_i = dir.path().join(format!("store-{i}"));
        let out = Command::new(&exe)
            .arg("child-import")
            .arg(&src)
            .arg(&store_i)
            .output()
            .expect("child");
        assert!(
            out.status.success(),
            "child import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text.split_whitespace().collect();
        let (s, kb): (f64, f64) = (f[0].parse().expect("secs"), f[1].parse().expect("kb"));
        println!(
            "import run {}: {:.2} s, peak RSS {:.0} MB",
            i + 1,
            s,
            kb / 1024.0
        );
        secs.push(s);
        rss.push(kb / 1024.0);
        if i == 0 {
            std::fs::rename(&store_i, &store).expect("keep store");
        } else {
            let _ = std::fs::remove_dir_all(&store_i);
        }
    }
    println!(
        "import 100k students: median {:.2} s (target ≤ 15 s), median peak RSS {:.0} MB (target ≤ 300 MB)",
        median(secs),
        median(rss)
    );

    let conn = sis::open_current(&store).expect("open");
    for (label, spec) in [
        (
            "all guardians in the district",
            AudienceSpec {
                roles: vec![Role::Guardian],
                ..Default::default()
            },
        ),
        ("whole district, every role", AudienceSpec::default()),
        (
            "one school, every role (lockdown)",
            AudienceSpec {
                schools: vec!["sch-0001".into()],
                ..Default::default()
            },
        ),
    ] {
        let mut times = Vec::new();
        let mut n = 0;
        for _ in 0..RESOLVE_RUNS {
            let t = Instant::now();
            let a = audience::resolve(&conn, &spec, &[]).expect("resolve");
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            n = a.recipients.len();
        }
        println!(
            "resolve {label}: {n} recipients, median {:.0} ms (target ≤ 500 ms)",
            median(times)
        );
    }
}
