//! `oasis update ...`: update bundles. `verify` runs the same streaming verifier and rules the
//! appliance runs before it installs a bundle, and installs nothing.

use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use oasis_core::update::{self, EtcdChange, Installed};
use oasis_image::bundle::{self, BundleManifest, Sink, VerifyOptions};
use oasis_image::signing::{self, VerifyingKey};

use crate::cli::UpdateVerifyArgs;

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
