//! Release checks: the facade's feature matrix, API docs, and packaging.

use std::path::PathBuf;
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
    remove_stale_package_sources()?;
    let mut command: Command = cargo();
    command.args(["package", "--workspace", "--quiet", "--allow-dirty"]);
    for internal in ["paxos-bench", "paxos-sim", "xtask"] {
        command.args(["--exclude", internal]);
    }
    run(command)
}

/// `cargo package` verifies a crate against its workspace dependencies through a
/// local registry, and unpacks their packages under `$CARGO_HOME/registry/src`.
/// An unpacked copy left by an earlier run is reused as it is, even though the
/// crate changed since under the same version, so the check would build against
/// stale code. Removes those copies (only this workspace's, never crates.io's).
fn remove_stale_package_sources() -> Result<()> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => match std::env::var_os("HOME") {
            Some(home) => PathBuf::from(home).join(".cargo"),
            None => return Ok(()),
        },
    };
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry").join("src")) else { return Ok(()) };
    for registry in registries {
        let registry = registry?.path();
        let name = registry.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with("index.crates.io") {
            continue;
        }
        for unpacked in std::fs::read_dir(&registry)? {
            let unpacked = unpacked?.path();
            let crate_name = unpacked.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
            if crate_name.starts_with("paxos") && unpacked.is_dir() {
                std::fs::remove_dir_all(&unpacked)
                    .with_context(|| format!("removing stale package sources {}", unpacked.display()))?;
            }
        }
    }
    Ok(())
}

/// The facade's runnable examples, with the features each needs.
const EXAMPLES: &[(&str, &[&str])] = &[
    ("single_decree", &[]),
    ("cluster", &[]),
    ("custom_storage", &[]),
    ("custom_transport", &[]),
    ("kv_store", &[]),
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
