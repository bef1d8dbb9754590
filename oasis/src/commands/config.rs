//! `oasis config check|keygen|sign`: an `oasis.toml` checked as `oasis serve` would, and the
//! keys that sign configurations for USB sticks.

use std::path::Path;

use anyhow::Context;
use oasis_core::config::Config;

pub fn check(file: &Path) -> anyhow::Result<()> {
    let c = Config::load(file)?;
    println!("{}: ok", file.display());
    println!("  interface {} address {}", c.interface, c.rack_net());
    match &c.dhcp {
        None => println!("  DHCP off"),
        Some(d) => match &d.full {
            Some((pool, _, _)) => println!(
                "  DHCP full: {} to {}, {} reservations, lease {} s, conflict check {:?}",
                pool.start,
                pool.end,
                pool.reservations.len(),
                pool.lease_secs,
                d.conflict_check
            ),
            None => println!("  DHCP proxy (boot information only)"),
        },
    }
    match &c.tftp {
        Some((port, _)) => println!("  TFTP on port {port}"),
        None => println!("  TFTP off"),
    }
    println!("  HTTP on port {}", c.http_port);
    println!("  boot root {} (iPXE in {}/)", c.boot_root.display(), c.ipxe_dir);
    println!(
        "  profile: kernel {} initrd {} cmdline {:?}",
        c.profile.kernel,
        c.profile.initrd.as_deref().unwrap_or("-"),
        c.profile.cmdline
    );
    println!("  data dir {}", c.data_dir.display());
    for path in &c.update_trusted_keys {
        let key = oasis_image::signing::load_trusted_key(path)?.with_context(|| {
            format!("{}: [update] trusted_keys names {}, which does not exist; give the public key `oasis config keygen` wrote", file.display(), path.display())
        })?;
        println!("  update bundles may be signed by key {} ({})", oasis_image::signing::key_id(&key), path.display());
    }
    Ok(())
}

/// `oasis config keygen --out DIR`.
pub fn keygen(dir: &Path) -> anyhow::Result<()> {
    let (private, public, key) = oasis_boot::usb::signature::keygen(dir)?;
    println!("key {}", oasis_boot::usb::signature::key_id(&key));
    println!(
        "  private: {} (keep it secret; sign with `oasis config sign --key {} oasis.toml`)",
        private.display(),
        private.display()
    );
    println!("  public:  {} (build it into the appliance image as its trusted key)", public.display());
    Ok(())
}

/// `oasis config sign --key PRIVATE FILE`.
pub fn sign(key: &Path, file: &Path) -> anyhow::Result<()> {
    let sig = oasis_boot::usb::signature::sign_file(key, file)?;
    println!("{}: signed, signature in {}", file.display(), sig.display());
    Ok(())
}
