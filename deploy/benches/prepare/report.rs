//! The prepare bench's report: samples per step, percentiles, the machine
//! and its load, printed as the markdown kept in tests/bench-results/.

use std::process::Command;
use std::time::Duration;

/// Columns, in the order [`Samples::add`] takes them.
const STEPS: [&str; 7] = [
    "floppy build",
    "ISO handling",
    "upload (store + temp URL)",
    "insert (floppy + CD)",
    "power (boot once + state + reset)",
    "other (validate, media check, gRPC)",
    "whole call",
];

/// One side's per-call seconds by step (NaN: the side has no such step),
/// and each round's wall time.
#[derive(Default)]
pub struct Samples {
    steps: Vec<Vec<f64>>,
    walls: Vec<f64>,
    failures: Vec<String>,
}

impl Samples {
    pub fn add(&mut self, row: &[f64; 7]) {
        if self.steps.is_empty() {
            self.steps = vec![Vec::new(); STEPS.len()];
        }
        for (col, v) in self.steps.iter_mut().zip(row) {
            col.push(*v);
        }
    }

    /// A call that failed: left out of the figures, counted and shown.
    pub fn failed(&mut self, e: &str) {
        self.failures.push(e.to_owned());
    }

    pub fn wall(&mut self, d: Duration) {
        self.walls.push(d.as_secs_f64());
    }
}

pub struct Table {
    pub title: String,
    pub service: Samples,
    pub peer: Samples,
}

/// Nearest-rank percentile of `v` (NaN when empty or not measured).
fn pct(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(s: f64) -> String {
    if s.is_nan() {
        "—".into()
    } else {
        format!("{:.2}", s * 1000.0)
    }
}

fn ratio(a: f64, b: f64) -> String {
    if a.is_nan() || b.is_nan() || b <= 0.0 {
        "—".into()
    } else {
        format!("{:.2}", a / b)
    }
}

pub struct Load(pub String);

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
pub fn loadavg() -> Load {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Load(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn first_line_with(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

fn command(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "?".into())
}

pub struct Run<'a> {
    pub sushy: &'a str,
    pub load_before: Load,
    pub load_after: Load,
    pub elapsed: Duration,
    pub tables: &'a [Table],
    pub note: Option<&'a str>,
}

#[allow(clippy::print_stdout)]
pub fn print(run: &Run<'_>) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: f64 = first_line_with("/proc/meminfo", "MemTotal")
        .trim_end_matches(" kB")
        .parse()
        .unwrap_or(0.0);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let dirty = !command("git", &["-C", root, "status", "--porcelain"]).is_empty();
    let profile = if cfg!(debug_assertions) {
        "debug (unoptimized)"
    } else {
        "release (cargo bench's bench profile)"
    };
    println!("# Deploy PrepareRamdisk benchmark\n");
    println!(
        "- Date: {}",
        command("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
    );
    println!(
        "- Machine: nproc {nproc}, CPU \"{}\", {:.1} GiB RAM, Linux {}",
        first_line_with("/proc/cpuinfo", "model name"),
        mem_kib / 1024.0 / 1024.0,
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "- Commit: {}{}",
        command("git", &["-C", root, "rev-parse", "--short", "HEAD"]),
        if dirty {
            " (with uncommitted changes)"
        } else {
            ""
        }
    );
    println!("- Profile: {profile}; {}", command("rustc", &["--version"]));
    println!(
        "- Peers: sushy-tools {} (fake driver, 20 systems) at {}; Swift from ../shared/rig/swift-up.sh (tempauth); deploy ISO 1 MiB and the peer's floppy from an HTTP server in the bench, all on 127.0.0.1",
        std::env::var("SUSHY_TOOLS_VERSION").unwrap_or_else(|_| "2.2.0".into()),
        run.sushy
    );
    println!(
        "- Load average (1, 5, 15 min): {} at the start, {} at the end (other helpers were building and testing on the same 2 cores; it shows here)",
        run.load_before.0, run.load_after.0
    );
    println!("- Command: cargo bench -p deploy --bench prepare");
    if let Some(n) = run.note {
        println!("- Note: {n}");
    }
    println!(
        "\nService: the deploy service in-process, called over gRPC; per-step seconds from PrepareRamdisk's response, the whole call timed by the client. Peer: the same BMC and store work with a plain HTTP client (reqwest), no service: upload = one PUT to Swift with a token fetched beforehand, or writing the file (the embedded store keeps a file); insert = two InsertMedia POSTs; power = the boot-once PATCH, a GET of the system and the Reset POST; device paths looked up once beforehand. The peer builds no floppy and checks nothing, so floppy build, other and ISO show \"—\" on its side. ISO handling: no such step, the deploy ISO is inserted by its URL and sushy downloads it inside insert (0 on the service's side). Ratio: service p50 / peer p50. Rounds alternate service and peer; each is preceded by one untimed warm-up call per side.\n"
    );
    for t in run.tables {
        println!("## {}\n", t.title);
        println!(
            "| step | service p50 ms | service p99 ms | peer p50 ms | peer p99 ms | ratio p50 |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for (i, step) in STEPS.iter().enumerate() {
            let (s, p) = (&t.service.steps[i], &t.peer.steps[i]);
            println!(
                "| {step} | {} | {} | {} | {} | {} |",
                ms(pct(s, 0.5)),
                ms(pct(s, 0.99)),
                ms(pct(p, 0.5)),
                ms(pct(p, 0.99)),
                ratio(pct(s, 0.5), pct(p, 0.5))
            );
        }
        let (sw, pw) = (&t.service.walls, &t.peer.walls);
        println!(
            "| wall per round (first call to last answer) | {} | {} | {} | {} | {} |\n",
            ms(pct(sw, 0.5)),
            ms(pct(sw, 0.99)),
            ms(pct(pw, 0.5)),
            ms(pct(pw, 0.99)),
            ratio(pct(sw, 0.5), pct(pw, 0.5))
        );
        let f = &t.service.failures;
        if !f.is_empty() {
            println!(
                "**{} of the service's calls failed** (left out of the figures above; the first: `{}`).\n",
                f.len(),
                f[0].replace('\n', " ")
            );
        }
    }
    println!("Bench wall time: {:.1} s.", run.elapsed.as_secs_f64());
}
