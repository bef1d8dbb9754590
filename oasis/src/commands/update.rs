//! `oasis update ...`: update bundles. `verify` runs the same streaming verifier and rules the
//! appliance runs before it installs a bundle, and installs nothing; `apply` and `status` ask the
//! running appliance (`oasis_appliance::generations`).

use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use oasis_core::update::{self, EtcdChange, Installed};
use oasis_image::bundle::{self, BundleManifest, Sink, VerifyOptions};
use oasis_image::signing::{self, VerifyingKey};

use oasis_appliance::admin;
use oasis_appliance::generations::{Applied, UpdateStatus};
use oasis_appliance::operator::Action;

use crate::cli::{StateArgs, UpdateVerifyArgs};

/// How long an install may take: the bundle is read, hashed and written once on the appliance.
const APPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

/// `oasis update verify FILE --trusted-key PUB [--installed-sequence N --installed-etcd V]`.
pub fn verify(args: &UpdateVerifyArgs) -> anyhow::Result<()> {
    let trusted = args.trusted_key.iter().map(|path| trusted_key(path)).collect::<anyhow::Result<Vec<_>>>()?;
    let installed = match (args.installed_sequence, &args.installed_etcd) {
        (Some(sequence), Some(etcd)) => {
            Some(Installed { sequence, etcd_version: etcd.clone(), architecture: bundle::ARCHITECTURE.into() })
        }
        _ => None,
    };
    let file = std::fs::File::open(&args.file).with_context(|| format!("cannot open {}", args.file.display()))?;
    let options = VerifyOptions {
        trusted: &trusted,
        architecture: bundle::ARCHITECTURE,
        max_total_bytes: bundle::DEFAULT_MAX_TOTAL_BYTES,
    };
    let rules = |manifest: &BundleManifest| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        match &installed {
            Some(installed) => update::check_update(installed, manifest).map(drop).map_err(Into::into),
            None => Ok(()),
        }
    };
    let verified = bundle::read_bundle(BufReader::new(file), &options, &rules, Sink::Discard)
        .with_context(|| format!("verifying {}", args.file.display()))?;
    let manifest = &verified.manifest;
    println!("{}: verified, signed by key {}", args.file.display(), verified.key_id);
    println!("{}", manifest.summary());
    for member in &manifest.members {
        println!("{}  {} ({}, {} bytes)", member.sha256, member.name, member.role, member.size);
    }
    match &installed {
        Some(installed) => {
            let change = match update::check_update(installed, manifest)? {
                EtcdChange::Same => "etcd unchanged".to_string(),
                EtcdChange::Patch => {
                    format!("etcd patch change {} to {}", installed.etcd_version, manifest.changes.etcd)
                }
                EtcdChange::Minor => {
                    format!("etcd minor upgrade {} to {}", installed.etcd_version, manifest.changes.etcd)
                }
            };
            println!("installable over sequence {}: {change}", installed.sequence);
        }
        None => println!(
            "installable: not checked (give --installed-sequence and --installed-etcd for the sequence and etcd rules)"
        ),
    }
    Ok(())
}

/// The public key at `path`, which must exist.
fn trusted_key(path: &Path) -> anyhow::Result<VerifyingKey> {
    signing::load_trusted_key(path)?
        .with_context(|| format!("{} does not exist; give the public key `oasis config keygen` wrote", path.display()))
}

/// `oasis update apply FILE`: installs the bundle on the running appliance.
pub fn apply(file: &Path, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let path = std::fs::canonicalize(file)
        .with_context(|| format!("cannot find {}; give the path of a bundle file on this appliance", file.display()))?;
    let (method, request) = Action::UpdateApply { path: path.clone() }.request();
    let Some(body) = admin::request_within(&data_dir, method, &request, APPLY_TIMEOUT).context("asking oasis serve")?
    else {
        anyhow::bail!("oasis serve is not running on {}: start it, then apply the bundle", data_dir.display());
    };
    let applied: Applied = serde_json::from_slice(&body).context("reading the answer of oasis serve")?;
    if state.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    println!("{}: installed as node generation {}", path.display(), applied.generation.sequence);
    println!("{}", applied.summary);
    if !applied.pruned.is_empty() {
        let list: Vec<String> = applied.pruned.iter().map(u64::to_string).collect();
        println!("removed generations no longer kept: {}", list.join(", "));
    }
    Ok(())
}

/// `oasis update pause|resume|cancel`: prints what the appliance did, or why it did nothing.
pub fn rollout(command: oasis_core::rollout::Command, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let body = super::ask_running(&data_dir, &Action::Rollout(command), ": start it to act on the rollout")?;
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `oasis update status [--json]`.
pub fn status(state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let body = super::ask_running(&data_dir, &Action::UpdateStatus, ": start it to see its node generations")?;
    if state.json {
        println!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let status: UpdateStatus = serde_json::from_slice(&body).context("reading the answer of oasis serve")?;
    println!("node generations (current {}, highest sequence {}):", status.current, status.highest_sequence);
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    for g in &status.generations {
        println!(
            "  {:>4}  {:<9}  {:<12}  kernel {}  etcd {}{}  {}",
            g.sequence,
            g.state.to_string(),
            g.version,
            dash(&g.kernel),
            dash(&g.etcd),
            g.k3s.as_ref().map(|k| format!("  k3s {k}")).unwrap_or_default(),
            g.path.display()
        );
    }
    if let Some(a) = &status.appliance {
        println!("appliance: runs {}; its update to {} (generation {}): {}", a.running, a.version, a.sequence, a.state);
    }
    match &status.rollout {
        None if !status.progress.is_empty() => println!("rollout: none yet; {}", status.progress),
        None => println!("rollout: none yet"),
        Some(r) => {
            println!("rollout: generation {} to {}: {} ({} machine(s) done)", r.from, r.target, r.state, r.done.len());
            if !status.progress.is_empty() {
                println!("  now: {}", status.progress);
            }
            for f in &r.in_flight {
                println!("  in flight: {} to generation {}, {:?} since {}", f.machine, f.to, f.phase, f.since);
            }
            if let Some(f) = &r.failure {
                let back = match (f.back, f.back_failed) {
                    (_, true) => "it did not come back either: repair it",
                    (true, _) => "it is back on its previous generation",
                    _ => "it is on its way back",
                };
                println!("  failed: {} at gate '{}': {}; {back}", f.machine, f.gate, f.detail);
                if let Some(e) = &f.last_error {
                    println!("  its agent's last error: {e}");
                }
            }
        }
    }
    if !status.machines.is_empty() {
        println!("machines:");
    }
    for m in &status.machines {
        let gen = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |n| n.to_string());
        let failed: Vec<String> = m.generations.failed.iter().map(u64::to_string).collect();
        println!(
            "  {}  served {}  desired {}  attempted {} ({}x)  confirmed {}  failed {}",
            m.mac,
            m.served,
            gen(m.generations.desired),
            gen(m.generations.attempted),
            m.generations.attempts,
            gen(m.generations.confirmed),
            if failed.is_empty() { "-".to_string() } else { failed.join(",") }
        );
    }
    Ok(())
}
