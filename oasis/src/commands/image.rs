//! `oasis image build ...`: the appliance's disk image, USB sticks, iPXE, node images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use oasis_core::config::Config;

use crate::cli::{ApplianceBuildArgs, BuildCommand, BundleBuildArgs, NodeBuildArgs, UsbStickArgs};

/// `oasis image build KIND`: builds it and prints what is in it (for the manifests, each entry's
/// sha256 and name).
pub fn build(build: &BuildCommand) -> anyhow::Result<()> {
    let manifest = match build {
        BuildCommand::Appliance(a) => return appliance(a),
        BuildCommand::UsbStick(a) => return usb_stick(a),
        BuildCommand::Bundle(a) => return bundle(a),
        BuildCommand::Ipxe(a) => oasis_image::ipxe::build_ipxe(&a.cache, &a.out)?,
        BuildCommand::TestPayload(a) => oasis_image::payload::build_test_payload(&a.cache, &a.out)?,
        BuildCommand::Node(a) => node(a)?,
    };
    for entry in manifest.entries() {
        println!("{}  {}", entry.sha256, entry.name);
    }
    Ok(())
}

/// `oasis image build node`: the node image, its kernel, initramfs and artifacts.
fn node(a: &NodeBuildArgs) -> anyhow::Result<oasis_image::manifest::Manifest> {
    let cache = oasis_image::debian::DebianCache::with_suite(&a.build.cache, a.suite.as_deref())?;
    let image =
        oasis_image::node::build_node_image_from(&cache, &a.agent, &a.overlay, a.k3s_bundle.as_deref(), &a.build.out)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if let Some(suite) = &a.suite {
        println!("Debian suite {suite} (apt state in {})", cache.dir().join("apt").join(suite).display());
    }
    println!(
        "kernel {} {:.1} MiB; initramfs {:.1} MiB compressed, {:.1} MiB uncompressed; {} modules",
        image.kernel_version,
        mib(image.kernel_bytes),
        mib(image.initrd_bytes),
        mib(image.initrd_uncompressed_bytes),
        image.modules.len()
    );
    for artifact in &image.artifacts {
        let version = artifact.version.as_deref().unwrap_or("version not recorded");
        println!("artifact {} ({version}) {:.1} MiB", artifact.name, mib(artifact.size));
    }
    if image.artifacts.iter().all(|a| a.name != oasis_image::k3s_bundle::K3S_ARTIFACT) {
        println!("kubernetes: not bundled (give --k3s-bundle DIR for k3s)");
    }
    Ok(image.manifest)
}

/// `oasis image build appliance`: writes the disk image and says what is in it.
fn appliance(a: &ApplianceBuildArgs) -> anyhow::Result<()> {
    let oasis = match &a.oasis {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    if let Some(key) = &a.trusted_key {
        // Refuse a key the appliance could not read, before building anything.
        oasis_boot::usb::signature::load_trusted_key(key)?;
    }
    let inputs = oasis_image::appliance::ApplianceInputs {
        oasis,
        node: a.node.clone(),
        ipxe: a.ipxe.clone(),
        overlay: a.overlay.clone(),
        appliance_overlay: a.appliance_overlay.clone(),
        trusted_key: a.trusted_key.clone(),
        version: a.version.clone(),
        test_fault: a.test_fault,
    };
    let image = oasis_image::appliance::build_appliance_image(&a.cache, &inputs, &a.out)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "{}: {:.1} MiB (EFI system partition {:.1} MiB); kernel {}, GRUB {}; initramfs {:.1} MiB compressed, {:.1} MiB uncompressed",
        image.path.display(),
        mib(image.bytes),
        mib(image.esp_bytes),
        image.kernel_version,
        image.grub_version,
        mib(image.initrd_bytes),
        mib(image.initrd_uncompressed_bytes),
    );
    println!(
        "signed USB configurations: {}",
        if a.trusted_key.is_some() { "required" } else { "not required (no --trusted-key)" }
    );
    println!("EFI system partition (GRUB, grub.cfg, grubenv):");
    for (path, sha256) in &image.esp_files {
        println!("{sha256}  {path}");
    }
    println!("slot A (slot B is empty until the appliance writes an update there):");
    for (path, sha256) in &image.slot_files {
        println!("{sha256}  {path}");
    }
    Ok(())
}

/// `oasis image build usb-stick`.
fn usb_stick(args: &UsbStickArgs) -> anyhow::Result<()> {
    use oasis_boot::usb::signature;
    use oasis_image::usb_stick::{CONFIG_FILE, SIGNATURE_FILE};
    let bytes = std::fs::read(&args.config).with_context(|| format!("cannot read {}", args.config.display()))?;
    Config::parse(&String::from_utf8_lossy(&bytes), &args.config)?;
    let mut sig_beside = args.config.as_os_str().to_owned();
    sig_beside.push(".sig");
    let sig_beside = PathBuf::from(sig_beside);
    let (signature, signed_how) = match &args.key {
        Some(key) => {
            let key = signature::load_private_key(key)?;
            let id = signature::key_id(&key.verifying_key());
            (Some(signature::signature_file(&key, &bytes)), format!("signed with key {id}"))
        }
        None if sig_beside.exists() => {
            let text = std::fs::read_to_string(&sig_beside)
                .with_context(|| format!("cannot read {}", sig_beside.display()))?;
            signature::parse_signature(&text, &sig_beside)?;
            (Some(text), format!("signature from {}", sig_beside.display()))
        }
        None => (None, "unsigned (an appliance with a trusted key refuses it)".to_string()),
    };
    let mut files: Vec<(&str, &[u8])> = vec![(CONFIG_FILE, &bytes)];
    if let Some(sig) = &signature {
        files.push((SIGNATURE_FILE, sig.as_bytes()));
    }
    let bundle = args.bundle.as_deref().map(stick_bundle).transpose()?;
    if let Some((name, bytes)) = &bundle {
        files.push((name.as_str(), bytes.as_slice()));
    }
    oasis_image::usb_stick::build_usb_stick(&files, &args.out, args.size_mib)?;
    println!(
        "{}: {} MiB USB stick, FAT partition labelled {} with {CONFIG_FILE}, {signed_how}{}",
        args.out.display(),
        args.size_mib,
        oasis_image::usb_stick::LABEL,
        match &bundle {
            Some((name, _)) => format!("; and the update bundle {name} (verified by the appliance)"),
            None => String::new(),
        }
    );
    Ok(())
}

/// The name on the stick (the file's, ending in `.bundle`) and bytes of an update bundle.
fn stick_bundle(path: &Path) -> anyhow::Result<(String, Vec<u8>)> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read {}; give the file `oasis image build bundle` wrote", path.display()))?;
    if !bytes.starts_with(oasis_image::bundle::MAGIC) {
        anyhow::bail!(
            "{} is not an oasis update bundle; give the file `oasis image build bundle` wrote",
            path.display()
        );
    }
    let suffix = oasis_boot::usb::bundle::BUNDLE_SUFFIX;
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    // FAT names are case-insensitive: the appliance takes `*.bundle` in any case.
    Ok((if name.to_lowercase().ends_with(suffix) { name } else { format!("{stem}{suffix}") }, bytes))
}

/// `oasis image build bundle`: signs the node image into one update bundle.
fn bundle(a: &BundleBuildArgs) -> anyhow::Result<()> {
    let key = oasis_image::signing::load_private_key(&a.key)?;
    let options = oasis_image::bundle::BundleOptions {
        version: a.version.clone(),
        sequence: a.sequence,
        kernel_version: a.kernel_version.clone(),
        agent_version: a.agent_version.clone(),
        k3s_version: a.k3s_version.clone(),
        appliance: a.appliance.clone(),
    };
    let manifest = oasis_image::bundle::write_bundle(&a.node, &options, &key, &a.out)?;
    let bytes = std::fs::metadata(&a.out).with_context(|| format!("cannot read {}", a.out.display()))?.len();
    println!(
        "{}: {:.1} MiB, signed with key {}",
        a.out.display(),
        bytes as f64 / (1024.0 * 1024.0),
        oasis_image::signing::key_id(&key.verifying_key())
    );
    println!("{}", manifest.summary());
    for member in &manifest.members {
        println!("{}  {} ({}, {} bytes)", member.sha256, member.name, member.role, member.size);
    }
    Ok(())
}
