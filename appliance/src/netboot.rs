//! Who may fetch which boot script, and what each network boot carries for itself: the appliance's
//! [`MachineDirectory`] for HTTP boot, over the store.
//!
//! - **Full DHCP mode** (this appliance hands out the rack's addresses): the boot script of MAC `M`
//!   goes only to the address bound to `M` in the lease table, that is to the machine that got `M`'s
//!   lease; anyone else gets 403. In proxy mode (a site DHCP server) there is no lease table to ask
//!   and every peer is served, as before.
//! - **Per-boot tokens**: when the appliance serves the node image, each network boot script carries
//!   `oasis.token=` with a fresh random token. Its SHA-256, with the address the script went to, is
//!   committed before the script is served and replaces the one before for that MAC: a restart
//!   between the script and the registration loses nothing, and a registration for `M` is accepted
//!   with the token of `M`'s newest script (see [`oasis_core::registry`]). The join token goes on no
//!   script.
//! - **Node generations**: a machine's network boot script names the kernel and initramfs of the
//!   generation chosen for it ([`Generations::served`]), served from `DATA_DIR/generations/` under
//!   `/boot/generations/`; the shipped generation (0) is the profile's. The script also carries
//!   `oasis.generation=N`, so the agent reports which generation it runs. A record it cannot read
//!   gets a 503 (the machine asks again), never another generation's files.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use oasis_proto::MacAddr;
use oasis_pxe::http::{BootTarget, MachineDirectory, ScriptRefusal};
use oasis_pxe::script::BootFiles;

use crate::identity::random_token;
use crate::store::Store;
use oasis_core::generations::{Generations, SHIPPED};
use oasis_core::registry::{credential_hash, BootToken};

/// Where generation directories are served, beneath `/boot/`.
pub const GENERATIONS_MOUNT: &str = "generations";

/// The boot files of generation `sequence` for `mac` under `record`; `None`: the profile's.
pub fn boot_files_of(record: &Generations, mac: MacAddr) -> Option<BootFiles> {
    generation_files(record.served(mac))
}

/// The boot files of generation `n`; `None` for the shipped one: the profile's.
fn generation_files(n: u64) -> Option<BootFiles> {
    match n {
        SHIPPED => None,
        n => Some(BootFiles {
            kernel: format!("{GENERATIONS_MOUNT}/{n}/{}", oasis_image::payload::KERNEL),
            initrd: Some(format!("{GENERATIONS_MOUNT}/{n}/{}", oasis_image::payload::INITRD)),
        }),
    }
}

/// The directory `oasis serve` gives HTTP boot.
#[derive(Debug, Clone)]
pub struct NetbootDirectory {
    store: Store,
    /// Full DHCP mode: scripts go to lease holders only.
    check_leases: bool,
    /// The profile boots the node agent: scripts carry per-boot tokens.
    issue_tokens: bool,
    /// The generation [`boot_args`](MachineDirectory::boot_args) put on a script being made, for
    /// its [`boot_files`](MachineDirectory::boot_files): one read of the record per script, so
    /// the files a script names and the `oasis.generation=` it carries always agree.
    serving: Arc<Mutex<HashMap<MacAddr, u64>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn describe(peer: Option<IpAddr>) -> String {
    peer.map_or_else(|| "an unknown address".to_string(), |p| p.to_string())
}

impl NetbootDirectory {
    /// `check_leases` when this appliance's DHCP hands out the rack's addresses (full mode);
    /// `issue_tokens` when the boot profile is the node image, whose agent registers.
    pub fn new(store: Store, check_leases: bool, issue_tokens: bool) -> Self {
        Self { store, check_leases, issue_tokens, serving: Arc::default() }
    }

    /// The generation `mac` boots now, from the store's record.
    fn served(&self, mac: MacAddr) -> Result<u64, ScriptRefusal> {
        let record = self.store.generations().map_err(|e| {
            ScriptRefusal::Unavailable(format!(
                "the node generations record is unreadable: {e}",
                e = oasis_proto::error_chain(&e)
            ))
        })?;
        Ok(record.served(mac))
    }
}

impl MachineDirectory for NetbootDirectory {
    fn boot_target(&self, mac: MacAddr) -> BootTarget {
        self.store.boot_target(mac)
    }

    fn record_boot(&self, mac: MacAddr) {
        self.store.record_boot(mac)
    }

    fn admit(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<(), ScriptRefusal> {
        if !self.check_leases {
            return Ok(());
        }
        let leased = self
            .store
            .bound_address(
                mac,
                peer.and_then(|p| match p {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                }),
                now(),
            )
            .map_err(|e| {
                ScriptRefusal::Unavailable(format!(
                    "the lease table is unreadable: {e}",
                    e = oasis_proto::error_chain(&e)
                ))
            })?;
        match leased {
            Some(address) if peer == Some(IpAddr::V4(address)) => Ok(()),
            Some(address) => Err(ScriptRefusal::Forbidden(format!(
                "the boot script of {mac} goes only to {address}, the address this appliance leased to {mac}; {} \
                 asked for it",
                describe(peer)
            ))),
            None => Err(ScriptRefusal::Forbidden(format!(
                "{mac} holds no address from this appliance, and {} asked for its boot script: a machine gets its \
                 boot script from the address this appliance leased it",
                describe(peer)
            ))),
        }
    }

    fn boot_args(&self, mac: MacAddr, peer: Option<IpAddr>) -> Result<String, ScriptRefusal> {
        if !self.issue_tokens {
            return Ok(String::new());
        }
        let generation = self.served(mac)?;
        let token = random_token();
        let issued_to = match peer {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        };
        let record = BootToken { sha256: credential_hash(&token), issued_to, issued_at: now() };
        self.store.save_boot_token_blocking(mac, record).map_err(|e| {
            ScriptRefusal::Unavailable(format!(
                "the boot script's token could not be recorded: {e}",
                e = oasis_proto::error_chain(&e)
            ))
        })?;
        lock(&self.serving).insert(mac, generation);
        Ok(format!("oasis.token={token} {}={generation}", oasis_proto::GENERATION_ARG))
    }

    fn boot_files(&self, mac: MacAddr) -> Result<Option<BootFiles>, ScriptRefusal> {
        if !self.issue_tokens {
            // A custom profile is not a node image: generations do not apply.
            return Ok(None);
        }
        let generation = match lock(&self.serving).remove(&mac) {
            Some(generation) => generation,
            None => self.served(mac)?,
        };
        Ok(generation_files(generation))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use oasis_pxe::dhcp::{Lease, LeaseState};

    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);

    fn leased(store: &Store, ip: Ipv4Addr) {
        let lease = Lease { ip, mac: MAC, state: LeaseState::Bound, expires: now() + 3600, updated: now() };
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.save_lease(lease)).unwrap();
    }

    #[test]
    fn a_machine_boots_the_generation_chosen_for_it_and_the_shipped_one_is_the_profile() {
        use oasis_core::generations::{Generation, MachineGenerations};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let directory = NetbootDirectory::new(store.clone(), false, true);
        assert_eq!(directory.boot_files(MAC).unwrap(), None, "a rack with only generation 0 boots the profile");
        let generation = Generation {
            sequence: 3,
            version: "0.15.3".into(),
            kernel: "6.12".into(),
            agent: "a".into(),
            etcd: "3.5.16".into(),
            k3s: None,
            key_id: "k".into(),
            installed_at: 1,
            failed: false,
        };
        let (mut record, _) = Generations::default().with_installed(generation);
        record.machines.insert(MAC, MachineGenerations { desired: Some(3), ..Default::default() });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(store.save_generations(record, vec![])).unwrap();
        let args = directory.boot_args(MAC, None).unwrap();
        assert!(args.ends_with(" oasis.generation=3"), "the script names the generation it boots: {args}");
        let files = directory.boot_files(MAC).unwrap().unwrap();
        assert_eq!(files.kernel, "generations/3/vmlinuz");
        let others = directory.boot_args(MacAddr([2; 6]), None).unwrap();
        assert!(others.ends_with(" oasis.generation=0"), "{others}");
        // One read per script: a record changed between the arguments and the files does not
        // split the script between two generations.
        assert!(directory.boot_args(MAC, None).unwrap().ends_with(" oasis.generation=3"));
        rt.block_on(store.save_generations(Generations::default(), vec![])).unwrap();
        assert_eq!(directory.boot_files(MAC).unwrap().unwrap().kernel, "generations/3/vmlinuz");
        assert_eq!(directory.boot_files(MAC).unwrap(), None, "the next script reads the record again");
        assert_eq!(files.initrd.as_deref(), Some("generations/3/initrd.img"));
        assert_eq!(directory.boot_files(MacAddr([2; 6])).unwrap(), None, "others stay on the current one");
        let custom = NetbootDirectory::new(store, false, false);
        assert_eq!(custom.boot_files(MAC).unwrap(), None, "a custom profile is not a node image");
    }

    #[test]
    fn in_full_mode_only_the_lease_holder_gets_the_script() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let directory = NetbootDirectory::new(store.clone(), true, true);
        let holder = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)));
        match directory.admit(MAC, holder) {
            Err(ScriptRefusal::Forbidden(why)) => assert!(why.contains("holds no address"), "{why}"),
            other => panic!("{other:?}"),
        }
        leased(&store, Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(directory.admit(MAC, holder), Ok(()));
        let stranger = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 101)));
        match directory.admit(MAC, stranger) {
            Err(ScriptRefusal::Forbidden(why)) => {
                assert!(why.contains("goes only to 10.0.0.100") && why.contains("10.0.0.101 asked"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        assert!(directory.admit(MAC, None).is_err(), "an unknown peer is nobody's lease holder");

        let proxy = NetbootDirectory::new(store, false, true);
        assert_eq!(proxy.admit(MAC, stranger), Ok(()), "proxy mode has no lease to check against");
    }

    #[test]
    fn each_network_boot_gets_a_fresh_token_committed_before_it_is_served() {
        let dir = tempfile::tempdir().unwrap();
        let peer = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)));
        let newest = {
            let store = Store::open(dir.path()).unwrap();
            let directory = NetbootDirectory::new(store.clone(), false, true);
            let first = directory.boot_args(MAC, peer).unwrap();
            let second = directory.boot_args(MAC, peer).unwrap();
            assert_ne!(first, second);
            assert!(second.ends_with(" oasis.generation=0"), "the shipped generation: {second}");
            let token = second.strip_prefix("oasis.token=").unwrap().split(' ').next().unwrap();
            assert_eq!(token.len(), 32);
            let stored = store.boot_token(MAC).unwrap().unwrap();
            assert_eq!(stored.sha256, credential_hash(token), "the newest script's token is the one kept");
            assert_eq!(stored.issued_to, Some(Ipv4Addr::new(10, 0, 0, 100)));
            assert!(!std::fs::read(dir.path().join(crate::store::STORE_FILE))
                .unwrap()
                .windows(token.len())
                .any(|w| w == token.as_bytes()));
            second
        };
        // Durable: a restart between the script and the registration loses nothing.
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(crate::store::StoreError::InUse { .. }) => std::thread::sleep(std::time::Duration::from_millis(10)),
                Err(e) => panic!("{e}"),
            }
        };
        let token = newest.strip_prefix("oasis.token=").unwrap().split(' ').next().unwrap();
        assert_eq!(store.boot_token(MAC).unwrap().unwrap().sha256, credential_hash(token));

        let custom = NetbootDirectory::new(store, false, false);
        assert_eq!(custom.boot_args(MAC, peer).unwrap(), "", "a custom profile carries no token");
    }
}
