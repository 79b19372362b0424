//! The whole-system benchmark harness: runs `ferry bench ...` repeatedly and prints one JSON
//! line per run plus a median line per benchmark.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

struct Opts {
    smoke: bool,
    runs: usize,
    jobs: u64,
    broker: Option<String>,
}

fn parse_args() -> anyhow::Result<Opts> {
    let mut o = Opts {
        smoke: false,
        runs: 2,
        jobs: 100_000,
        broker: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--smoke" => o.smoke = true,
            "--runs" => o.runs = args.next().context("--runs needs a number")?.parse()?,
            "--jobs" => o.jobs = args.next().context("--jobs needs a number")?.parse()?,
            "--broker" => o.broker = Some(args.next().context("--broker needs a URL")?),
            other => bail!(
                "unknown argument {other:?}; expected --smoke, --runs N, --jobs N, --broker URL"
            ),
        }
    }
    if o.smoke {
        o.runs = 1;
        o.jobs = 2_000;
    }
    Ok(o)
}

fn ferry_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("FERRY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "-p", "ferry"])
        .current_dir(&root)
        .status()
        .context("building ferry")?;
    if !status.success() {
        bail!("building ferry failed");
    }
    Ok(root.join("target/release/ferry"))
}

fn run_once(bin: &PathBuf, args: &[String]) -> anyhow::Result<Value> {
    let out = Command::new(bin)
        .arg("bench")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    if !out.status.success() {
        bail!(
            "ferry bench {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().context("ferry bench printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn main() -> anyhow::Result<()> {
    let o = parse_args()?;
    let bin = ferry_bin()?;
    let jobs = o.jobs.to_string();
    let latency_jobs = if o.smoke {
        "500".to_owned()
    } else {
        "10000".to_owned()
    };
    let mut benches: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "enqueue",
            vec![
                "enqueue".into(),
                "--jobs".into(),
                jobs.clone(),
                "--concurrency".into(),
                "4".into(),
            ],
            vec!["jobs_per_s"],
        ),
        (
            "drain",
            vec![
                "drain".into(),
                "--jobs".into(),
                jobs.clone(),
                "--concurrency".into(),
                "50".into(),
            ],
            vec!["jobs_per_s"],
        ),
        (
            // Dispatch alone: leases, fencing and acks on, history off (as BullMQ runs with
            // removeOnComplete), at the worker concurrency the worker issue names.
            "drain-no-history",
            vec![
                "drain".into(),
                "--jobs".into(),
                jobs,
                "--concurrency".into(),
                "1000".into(),
                "--store".into(),
                "none".into(),
            ],
            vec!["jobs_per_s"],
        ),
        (
            "latency",
            vec![
                "latency".into(),
                "--jobs".into(),
                latency_jobs,
                "--rate".into(),
                "1000".into(),
            ],
            vec!["p50_ms", "p99_ms"],
        ),
        (
            // Worker memory with 1,000 jobs in flight at once (each sleeps), history off.
            "inflight",
            vec![
                "inflight".into(),
                "--concurrency".into(),
                "1000".into(),
                "--rate".into(),
                if o.smoke { "300" } else { "2000" }.into(),
                "--store".into(),
                "none".into(),
            ],
            vec!["peak_rss_mib"],
        ),
    ];
    if let Some(b) = &o.broker {
        for (_, args, _) in &mut benches {
            args.push("--broker".into());
            args.push(b.clone());
        }
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    for (name, args, keys) in benches {
        let mut results = Vec::new();
        for _ in 0..o.runs {
            let r = run_once(&bin, &args)?;
            println!("{r}");
            results.push(r);
        }
        let mut summary = json!({"bench": name, "summary": "median", "runs": o.runs, "cores": cores, "args": args.join(" ")});
        for k in keys {
            let vals: Vec<f64> = results.iter().filter_map(|r| r[k].as_f64()).collect();
            summary[k] = json!(median(vals));
        }
        println!("{summary}");
    }
    Ok(())
}
