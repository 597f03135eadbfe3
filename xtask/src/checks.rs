//! Release checks: the facade's feature matrix, API docs, and packaging.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{cargo, run};

/// Feature sets of the `paxos` facade that must build (with default features off).
/// Every row of the README's feature table appears in at least one of them.
const BUILDS: &[&[&str]] = &[
    &[],
    &["memory"],
    &["tcp", "tokio"],
    &["tcp", "smol"],
    &["tcp", "tokio", "smol"],
    &["memory", "tcp", "tokio"],
    &["file"],
    &["file", "tcp", "smol"],
    &["zmq", "tokio"],
    &["memory", "file", "tcp", "zmq", "tokio", "smol"],
];

/// Feature sets that cannot work, and the text their single compile error must contain.
const REFUSED: &[(&[&str], &str)] =
    &[(&["tcp"], "needs a runtime"), (&["zmq"], "runs on tokio only"), (&["zmq", "smol"], "runs on tokio only")];

/// Builds every documented feature combination of the facade, and checks that the
/// impossible ones fail with a message that says what to pick instead.
pub fn features() -> Result<()> {
    for features in BUILDS {
        let mut command = cargo();
        command.args(["check", "--quiet", "--package", "paxos", "--no-default-features"]);
        if !features.is_empty() {
            command.args(["--features", &features.join(",")]);
        }
        run(command).with_context(|| format!("features [{}] must build", features.join(", ")))?;
    }
    for (features, expected) in REFUSED {
        let mut command = cargo();
        command.args(["check", "--quiet", "--package", "paxos", "--no-default-features", "--features"]);
        command.arg(features.join(","));
        eprintln!("+ {command:?} (must fail)");
        let output = command.output().with_context(|| format!("could not start {command:?}"))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() {
            bail!("features [{}] built, but cannot work and must be refused", features.join(", "));
        }
        if !stderr.contains(expected) {
            bail!("features [{}] failed without saying \"{expected}\":\n{stderr}", features.join(", "));
        }
        let errors = stderr.matches("error:").count();
        // One compile_error! plus cargo's own "could not compile" line.
        if errors > 2 {
            bail!(
                "features [{}] failed with {errors} errors instead of one clear message:\n{stderr}",
                features.join(", ")
            );
        }
    }
    eprintln!("feature matrix: {} combinations build, {} are refused clearly", BUILDS.len(), REFUSED.len());
    Ok(())
}

/// Builds the API docs with every rustdoc warning denied.
pub fn doc() -> Result<()> {
    let mut command = cargo();
    command.args(["doc", "--workspace", "--no-deps", "--quiet"]).env("RUSTDOCFLAGS", "-D warnings");
    run(command)
}

/// Packages every publishable crate, verifying that each builds from its package alone.
pub fn package() -> Result<()> {
    let mut command: Command = cargo();
    command.args(["package", "--workspace", "--quiet", "--allow-dirty"]);
    for internal in ["paxos-bench", "paxos-sim", "xtask"] {
        command.args(["--exclude", internal]);
    }
    run(command)
}

/// The facade's runnable examples, with the features each needs.
const EXAMPLES: &[(&str, &[&str])] = &[
    ("single_decree", &[]),
    ("cluster", &[]),
    ("custom_storage", &[]),
    ("custom_transport", &[]),
    ("tcp_file_cluster", &["tcp", "tokio", "file"]),
];

/// Runs every example of the `paxos` facade to completion.
pub fn examples() -> Result<()> {
    for (name, features) in EXAMPLES {
        let mut command = cargo();
        command.args(["run", "--quiet", "--package", "paxos", "--example", name]);
        if !features.is_empty() {
            command.args(["--features", &features.join(",")]);
        }
        run(command).with_context(|| format!("example {name} must run to completion"))?;
    }
    Ok(())
}
