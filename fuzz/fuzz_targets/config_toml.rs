//! `oasis.toml` as `oasis serve --config`, `oasis config check` and a USB stick's offer read it:
//! `Config::parse`, and `usb::offer::check` with the stick's `oasis.toml.sig` against a trusted key.
//! What parses must be servable: the checks `oasis serve` makes later (the TFTP settings, the DHCP
//! service, the boot scripts, the boot root's names, the listeners' ports) must not refuse or panic on a
//! configuration `config check` passed.
//!
//! Input: the file's bytes, then optionally the signature file's text after `oasis_fuzz::SEPARATOR`.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ed25519_dalek::{SigningKey, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use oasis_boot::usb::offer::{check, Acceptance, Offer};
use oasis_core::config::Config;
use oasis_proto::MacAddr;
use oasis_pxe::dhcp::conflict::NoCheck;
use oasis_pxe::dhcp::{DhcpConfig, DhcpService, MemoryStore, Mode};
use oasis_pxe::metrics::Metrics;
use oasis_pxe::policy::BootPolicy;
use oasis_pxe::script::ScriptRenderer;

const SAVE_AS: &str = "/var/lib/oasis/oasis.toml";

/// The trusted key; the seeds' signatures are made with its private half, `[7; 32]`.
fn trusted() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&[7; 32]).verifying_key())
}

fuzz_target!(|data: &[u8]| {
    let parts = oasis_fuzz::messages(data, 2);
    let (file, signature) = (parts[0], parts.get(1).map(|s| String::from_utf8_lossy(s)));
    for trusted_key in [None, Some(trusted())] {
        let acceptance = Acceptance {
            trusted_key,
            save_as: Path::new(SAVE_AS),
            net_class: None,
            data_dir: Some(Path::new("/var/lib/oasis")),
        };
        match check(file, signature.as_deref(), &acceptance) {
            Offer::Accepted { text, signed } => {
                assert_eq!(text.as_bytes(), file, "an accepted offer is the file as it is");
                assert_eq!(signed, trusted_key.is_some());
            }
            Offer::Refused { reason } => assert!(!reason.is_empty()),
        }
    }
    let Ok(text) = std::str::from_utf8(file) else { return };
    let Ok(config) = Config::parse(text, Path::new(SAVE_AS)) else { return };
    servable(&config);
});

/// What `oasis serve` does with a configuration before it touches the network.
fn servable(config: &Config) {
    if let Some((_, tftp)) = &config.tftp {
        tftp.check().expect("config check passed TFTP settings that the TFTP server refuses");
    }
    let policy = BootPolicy { server: config.address, http_port: config.http_port, ipxe_dir: config.ipxe_dir.clone() };
    if let Some(d) = &config.dhcp {
        let mode = match &d.full {
            Some((pool, network, authoritative)) => {
                Mode::Full { pool: pool.clone(), authoritative: *authoritative, network: network.clone() }
            }
            None => Mode::Proxy,
        };
        let dhcp = DhcpConfig {
            mode,
            interface: config.interface.clone(),
            server: config.address,
            server_port: d.port,
            client_port: d.client_port,
            proxy_port: d.proxy_port,
            policy: policy.clone(),
            rate_per_sec: d.rate_limit,
            rate_burst: d.rate_burst,
            reply_delay: d.reply_delay,
            tolerate_missing_uuid: d.tolerate_missing_uuid,
        };
        let store = Arc::new(MemoryStore::default());
        DhcpService::new(dhcp, store, Arc::new(NoCheck), Arc::new(Metrics::default()))
            .expect("a DHCP service from a checked configuration");
    }
    let profile = &config.profile;
    for name in std::iter::once(&profile.kernel).chain(profile.initrd.as_ref()) {
        oasis_pxe::boot_root::check_name(name.as_bytes()).expect("config check passed a file no boot root can serve");
    }
    assert_ne!(config.http_port, config.api_port, "config check passed HTTP and the API on one port");
    let scripts = ScriptRenderer::new(policy.base_url(), config.profile.clone());
    let mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    for script in [scripts.render_boot(mac), scripts.render_chain(), scripts.render_local(mac)] {
        assert!(script.starts_with("#!ipxe\n"), "{script}");
    }
}
