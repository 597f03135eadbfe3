//! The `paxos-bench` command: runs Basic and Multi-Paxos over a set of
//! configurations, each in a child process of its own (so its peak RSS is its
//! own), prints a comparison table, and writes `report.json` and `report.svg`.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use paxos_bench::report::{self, Outcome};
use paxos_bench::{ProtocolKind, Record, Spec, StorageKind, TransportKind};

/// Batching setting(s) to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BatchChoice {
    /// `batch_commands_max` = 1024.
    On,
    /// `batch_commands_max` = 1.
    Off,
    /// Both.
    Both,
}

#[derive(Parser, Debug)]
#[command(
    name = "paxos-bench",
    about = "Basic versus Multi-Paxos: throughput, commit latency and peak memory",
    long_about = "Without matrix flags, runs the default comparison. With any of --transports, --storages, \
--replicas, --command-bytes, --in-flight or --batch, runs their cross product instead (the loop transport \
only with memory storage)."
)]
struct Cli {
    /// Transports: loop (the protocol alone), memory, tcp, zmq.
    #[arg(long, value_delimiter = ',', value_parser = parse_transport)]
    transports: Vec<TransportKind>,
    /// Storages: memory, file.
    #[arg(long, value_delimiter = ',', value_parser = parse_storage)]
    storages: Vec<StorageKind>,
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=9))]
    replicas: Vec<u16>,
    /// Command payload sizes in bytes.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    command_bytes: Vec<u32>,
    /// Commands in flight (concurrent clients).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=100_000))]
    in_flight: Vec<u32>,
    /// Batching.
    #[arg(long, value_enum)]
    batch: Option<BatchChoice>,
    /// Protocols to run.
    #[arg(long, value_delimiter = ',', value_parser = parse_protocol, default_value = "basic,multi")]
    protocols: Vec<ProtocolKind>,
    /// Warm-up per run, in milliseconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    warm_up_ms: u64,
    /// Measured window per run, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    window_ms: u64,
    /// Where report.json and report.svg go (default: the workspace's target/paxos-bench).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Internal: run this one spec (JSON) in this process and print its record as JSON.
    #[arg(long, hide = true)]
    one: Option<String>,
}

fn parse_transport(text: &str) -> Result<TransportKind, String> {
    text.parse().map_err(|error: paxos_bench::spec::ParseKindError| error.to_string())
}

fn parse_storage(text: &str) -> Result<StorageKind, String> {
    text.parse().map_err(|error: paxos_bench::spec::ParseKindError| error.to_string())
}

fn parse_protocol(text: &str) -> Result<ProtocolKind, String> {
    text.parse().map_err(|error: paxos_bench::spec::ParseKindError| error.to_string())
}

fn spec(transport: TransportKind, storage: StorageKind, in_flight: usize, batch: bool) -> Spec {
    Spec { protocol: ProtocolKind::Basic, transport, storage, replicas: 3, command_bytes: 8, in_flight, batch }
}

/// The default comparison: the protocol alone at the targets, then the
/// async node over each compiled-in transport and storage, 1 and 1024 in flight
/// (and 10,000 over TCP with file storage, where the peak is).
fn default_specs() -> Vec<Spec> {
    use StorageKind::{File, Memory};
    use TransportKind::{Loop, Tcp, Zmq};
    let mut specs = vec![
        spec(Loop, Memory, 1, true),
        spec(Loop, Memory, 1024, false),
        spec(Loop, Memory, 1024, true),
        spec(Loop, Memory, 10_000, true),
        Spec { replicas: 5, command_bytes: 1024, ..spec(Loop, Memory, 1024, true) },
        spec(TransportKind::Memory, Memory, 1, true),
        spec(TransportKind::Memory, Memory, 1024, true),
    ];
    if cfg!(feature = "tcp") {
        specs.push(spec(Tcp, Memory, 1, true));
        specs.push(spec(Tcp, Memory, 1024, true));
        // Pipelining alone, with latency on the wire: one command per slot.
        specs.push(spec(Tcp, Memory, 1024, false));
        if cfg!(feature = "file") {
            specs.push(spec(Tcp, File, 1, true));
            specs.push(spec(Tcp, File, 1024, true));
            // With fsyncs in the path, more in flight fill each group commit: the peak.
            specs.push(spec(Tcp, File, 10_000, true));
        }
    } else if cfg!(feature = "file") {
        specs.push(spec(TransportKind::Memory, File, 1, true));
        specs.push(spec(TransportKind::Memory, File, 1024, true));
    }
    if cfg!(feature = "zmq") {
        specs.push(spec(Zmq, Memory, 1, true));
        specs.push(spec(Zmq, Memory, 1024, true));
    }
    specs
}

fn matrix(cli: &Cli) -> Result<Vec<Spec>> {
    let or = |given: &[u32], default: u32| if given.is_empty() { vec![default] } else { given.to_vec() };
    let transports = if cli.transports.is_empty() {
        vec![TransportKind::Loop, TransportKind::Memory]
    } else {
        cli.transports.clone()
    };
    let storages = if cli.storages.is_empty() { vec![StorageKind::Memory] } else { cli.storages.clone() };
    let replicas: Vec<u32> = or(&cli.replicas.iter().map(|value| u32::from(*value)).collect::<Vec<_>>(), 3);
    let batches = match cli.batch.unwrap_or(BatchChoice::On) {
        BatchChoice::On => vec![true],
        BatchChoice::Off => vec![false],
        BatchChoice::Both => vec![true, false],
    };
    let mut specs = Vec::new();
    for transport in &transports {
        for storage in &storages {
            if *transport == TransportKind::Loop && *storage != StorageKind::Memory {
                continue;
            }
            for replicas in &replicas {
                for command_bytes in or(&cli.command_bytes, 8) {
                    for in_flight in or(&cli.in_flight, 64) {
                        for batch in &batches {
                            let spec = Spec {
                                protocol: ProtocolKind::Basic,
                                transport: *transport,
                                storage: *storage,
                                replicas: *replicas as usize,
                                command_bytes: command_bytes as usize,
                                in_flight: in_flight as usize,
                                batch: *batch,
                            };
                            spec.validate().with_context(|| format!("cannot run {}", spec.label()))?;
                            specs.push(spec);
                        }
                    }
                }
            }
        }
    }
    if specs.is_empty() {
        bail!("no configuration to run: the loop transport runs only with --storages memory");
    }
    Ok(specs)
}

fn run_one(json: &str, warm_up: Duration, window: Duration) -> Result<()> {
    let spec: Spec = serde_json::from_str(json).context("--one takes a Spec as JSON")?;
    let measurement = paxos_bench::run(&spec, warm_up, window)?;
    let record = Record::new(&spec, &measurement, paxos_bench::peak_rss_bytes());
    println!("{}", serde_json::to_string(&record)?);
    Ok(())
}

/// Runs `spec` in a child process; its stdout is the record, its stderr the error.
fn run_child(spec: &Spec, cli: &Cli) -> Result<Record, String> {
    let exe = std::env::current_exe().map_err(|error| format!("cannot find this executable: {error}"))?;
    let json = serde_json::to_string(spec).map_err(|error| error.to_string())?;
    let output = Command::new(exe)
        .args(["--one", &json, "--warm-up-ms", &cli.warm_up_ms.to_string(), "--window-ms", &cli.window_ms.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot start the run: {error}"))?;
    if !output.status.success() {
        let message = child_error(&String::from_utf8_lossy(&output.stderr));
        return Err(format!("run failed ({}): {message}", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).map_err(|error| format!("unreadable result {stdout:?}: {error}"))
}

/// What a failed child run said: its error line, or a panic's location and
/// message, not the last line of a backtrace (`RUST_BACKTRACE` may be set).
fn child_error(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    match lines.iter().position(|line| line.starts_with(ERROR_PREFIX) || line.contains("panicked at")) {
        // A panic's message is on the line after its location.
        Some(at) if lines[at].contains("panicked at") => lines[at..lines.len().min(at + 2)].join(" "),
        Some(at) => lines[at].trim_start_matches(ERROR_PREFIX).trim().to_string(),
        None => lines.iter().rfind(|line| !line.trim().is_empty()).unwrap_or(&"no message").to_string(),
    }
}

fn default_out() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(target) => PathBuf::from(target).join("paxos-bench"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("target").join("paxos-bench"),
    }
}

/// How this binary's error line starts; a parent run reads its child's by it.
const ERROR_PREFIX: &str = "paxos-bench: error:";

/// Errors end the output as one plain line (no backtrace, even with
/// `RUST_BACKTRACE` set), so the last thing a user sees says what failed.
fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{ERROR_PREFIX} {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<()> {
    // Silent unless asked: `RUST_LOG=warn` shows, say, what a transport dropped
    // during a run (each run's process inherits the variable).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    let warm_up = Duration::from_millis(cli.warm_up_ms);
    let window = Duration::from_millis(cli.window_ms);
    if let Some(json) = &cli.one {
        return run_one(json, warm_up, window);
    }
    let custom = !(cli.transports.is_empty()
        && cli.storages.is_empty()
        && cli.replicas.is_empty()
        && cli.command_bytes.is_empty()
        && cli.in_flight.is_empty()
        && cli.batch.is_none());
    let specs = if custom { matrix(&cli)? } else { default_specs() };
    let runs: Vec<Spec> =
        specs.iter().flat_map(|spec| cli.protocols.iter().map(|protocol| spec.with_protocol(*protocol))).collect();
    eprintln!(
        "paxos-bench: {} runs ({} configurations x {} protocols), about {:.0} s",
        runs.len(),
        specs.len(),
        cli.protocols.len(),
        runs.len() as f64 * (warm_up + window).as_secs_f64() * 1.3
    );
    // A directory that cannot be made fails now, not after the whole matrix.
    let out = cli.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for (number, spec) in runs.iter().enumerate() {
        eprint!("[{:>2}/{}] {:<5} {:<40} ", number + 1, runs.len(), spec.protocol.to_string(), spec.label());
        let result = run_child(spec, &cli);
        match &result {
            Ok(record) => eprintln!(
                "{:>8} ops/s  p50 {:>8.1} us  p99 {:>8.1} us  rss {:>4} MiB",
                report::human(record.ops_per_sec),
                record.p50_us,
                record.p99_us,
                record.peak_rss_bytes >> 20
            ),
            Err(error) => eprintln!("ERROR: {error}"),
        }
        outcomes.push(Outcome { spec: spec.clone(), result });
    }
    eprintln!("paxos-bench: done in {:.1} s", started.elapsed().as_secs_f64());
    println!("{}", report::table(&outcomes));
    let json_path = out.join("report.json");
    std::fs::write(&json_path, report::json(&outcomes) + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;
    let svg_path = out.join("report.svg");
    let title = format!("Basic vs Multi-Paxos, commands/s ({} s windows)", window.as_secs_f64());
    std::fs::write(&svg_path, report::svg(&outcomes, &title))
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let json_shown = json_path.canonicalize().unwrap_or(json_path);
    let svg_shown = svg_path.canonicalize().unwrap_or(svg_path);
    println!("report: {}", json_shown.display());
    println!("chart:  {}", svg_shown.display());
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|outcome| {
            let error = outcome.result.as_ref().err()?;
            Some(format!("{} {}: {error}", outcome.spec.protocol, outcome.spec.label()))
        })
        .collect();
    if !failures.is_empty() {
        bail!(
            "{} of {} runs failed and report no figure:\n  {}",
            failures.len(),
            outcomes.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_child_run_is_reported_by_its_error_line_or_panic() {
        let error = format!("{ERROR_PREFIX} the replicas' logs disagree, so no figure is reported: slot 3\n");
        assert_eq!(child_error(&error), "the replicas' logs disagree, so no figure is reported: slot 3");
        let panic = "\nthread 'main' panicked at paxos-core/src/learner.rs:9:5:\nagreement violated\nstack backtrace:\n   0: main\n";
        assert_eq!(child_error(panic), "thread 'main' panicked at paxos-core/src/learner.rs:9:5: agreement violated");
        assert_eq!(child_error("killed\n\n"), "killed");
        assert_eq!(child_error(""), "no message");
    }
}
