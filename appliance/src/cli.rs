//! The `oasis` command line: argument definitions and the commands that read state.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use oasis_pxe::dhcp::{Lease, LeaseState};
use oasis_pxe::mac::MacAddr;
use serde::de::DeserializeOwned;

use crate::admin::{self, MachineEntry};
use crate::api::MachineView;
use crate::config::Config;
use crate::operator::{self, Action, Decision};
use crate::store::{Event, Store};

#[derive(Debug, Parser)]
#[command(name = "oasis", version, about = "Network boot and self-assembly for disconnected racks", after_help = crate::exit::EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs the appliance image: prepares its disk, finds the configuration (USB stick, saved, or
    /// console questions), runs `oasis serve` and the console. Started by the image's /init.
    Boot,
    /// Run DHCP, TFTP and HTTP boot on the configured interface until stopped.
    Serve {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// If the store is damaged, or missing where one existed, start afresh with a new one
        /// (a new identity, no leases or machines) instead of refusing to start. What was there
        /// is moved aside (`oasis.redb.old-TIME`, `admin-token.old-TIME`), never deleted. A
        /// sound store is kept whatever this says.
        #[arg(long)]
        new_store: bool,
    },
    /// Check and sign configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List DHCP leases.
    Leases(StateArgs),
    /// List machines: what their network boots showed and, once their agent registered, their
    /// state, inventory and management link.
    Machines(StateArgs),
    /// Show recent events.
    Events {
        #[command(flatten)]
        state: StateArgs,
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Act on one machine.
    #[command(subcommand)]
    Machine(MachineCommand),
    /// Build what the appliance serves.
    #[command(subcommand)]
    Image(ImageCommand),
    /// The cluster the rack assembles into.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Roles, etcd members, mesh links, and what assembly is doing or waiting for.
    Status(StateArgs),
    /// Print the admin kubeconfig (images built with a k3s bundle).
    Kubeconfig(StateArgs),
    /// Read one etcd key through the member on machine VIA.
    Get {
        key: String,
        #[arg(long)]
        via: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Write one etcd key through the member on machine VIA.
    Put {
        key: String,
        value: String,
        #[arg(long)]
        via: String,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Parse and check FILE; print what it configures.
    Check { file: PathBuf },
    /// Make a key pair for signing USB configurations: DIR/oasis-config.key (private, keep it
    /// off the appliance) and DIR/oasis-config.pub (build it into the appliance image).
    Keygen {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Check FILE and sign it with a private key from `oasis config keygen`: writes FILE.sig.
    Sign {
        #[arg(long, value_name = "PRIVATE")]
        key: PathBuf,
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum MachineCommand {
    /// Accept a pending machine (by id, id prefix or boot MAC): it gets its credential and its
    /// management link on its next registration.
    Accept {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Reject a machine: it stays refused until removed.
    Reject {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Forget a machine; it registers as new the next time it boots.
    Remove {
        id: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Tell a machine to boot from the network (the boot profile) or from its local disk.
    Boot {
        mac: MacAddr,
        #[arg(value_enum)]
        target: BootArg,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BootArg {
    Network,
    Local,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build artifacts from Debian packages (downloaded with apt-get, never installed).
    #[command(subcommand)]
    Build(BuildCommand),
}

#[derive(Debug, Subcommand)]
pub enum BuildCommand {
    /// The iPXE builds (undionly.kpxe, ipxe.efi, snponly.efi) and their SHA256SUMS.
    Ipxe(BuildArgs),
    /// A test payload: Debian's kernel and a busybox initramfs that prints a marker and powers off.
    TestPayload(BuildArgs),
    /// The node image: Debian's kernel and an initramfs with busybox, NIC and WireGuard modules and
    /// the node agent; beside it etcd (and k3s with --k3s-bundle), listed in artifacts.json.
    Node(NodeBuildArgs),
    /// The appliance's bootable disk image (BIOS and UEFI): GRUB, Debian's kernel, an initramfs
    /// that runs `oasis boot`, and the node image and iPXE builds it serves to the rack.
    Appliance(ApplianceBuildArgs),
    /// A USB stick image (an MBR and a FAT partition labelled OASIS) carrying oasis.toml and,
    /// with --key (or a FILE.sig beside it), oasis.toml.sig. Write it to a stick with `dd`.
    UsbStick(UsbStickArgs),
}

#[derive(Debug, Args)]
pub struct ApplianceBuildArgs {
    /// The node image directory (`oasis image build node`).
    #[arg(long, value_name = "DIR")]
    pub node: PathBuf,
    /// The iPXE directory (`oasis image build ipxe`).
    #[arg(long, value_name = "DIR")]
    pub ipxe: PathBuf,
    /// A public key (`oasis config keygen`): the appliance then applies only USB configurations
    /// signed with its private key.
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Option<PathBuf>,
    /// The oasis binary to ship. Default: this one.
    #[arg(long, value_name = "FILE")]
    pub oasis: Option<PathBuf>,
    /// The root filesystem overlay (`buildroot-overlay/rootfs-overlay` of the oasis sources).
    #[arg(long, default_value = oasis_image::node::DEFAULT_OVERLAY)]
    pub overlay: PathBuf,
    /// The appliance's overlay, applied over the other (`buildroot-overlay/appliance-overlay`).
    #[arg(long, default_value = oasis_image::appliance::DEFAULT_APPLIANCE_OVERLAY)]
    pub appliance_overlay: PathBuf,
    /// The disk image to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Where downloaded packages are kept between builds.
    #[arg(long, default_value = "/var/cache/oasis/debian")]
    pub cache: PathBuf,
}

#[derive(Debug, Args)]
pub struct UsbStickArgs {
    /// The configuration to put on the stick; it is checked first.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Sign it with this private key (`oasis config keygen`). Without it, FILE.sig is taken if
    /// it is beside FILE.
    #[arg(long, value_name = "PRIVATE")]
    pub key: Option<PathBuf>,
    /// The image file to write.
    #[arg(long, value_name = "IMAGE")]
    pub out: PathBuf,
    #[arg(long, default_value_t = oasis_image::usb_stick::DEFAULT_SIZE_MIB)]
    pub size_mib: u64,
}

#[derive(Debug, Args)]
pub struct NodeBuildArgs {
    /// The node agent binary (`target/release/oasis-agent`).
    #[arg(long)]
    pub agent: PathBuf,
    /// The root filesystem overlay (`buildroot-overlay/rootfs-overlay` of the oasis sources).
    #[arg(long, default_value = oasis_image::node::DEFAULT_OVERLAY)]
    pub overlay: PathBuf,
    /// A directory with the `k3s` binary and k3s-airgap-images-amd64.tar(.gz|.zst) from one k3s
    /// release: servers then run k3s on oasis's etcd. Without it the cluster is etcd only.
    #[arg(long, value_name = "DIR")]
    pub k3s_bundle: Option<PathBuf>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Where to write the artifacts.
    #[arg(long)]
    pub out: PathBuf,
    /// Where downloaded packages are kept between builds.
    #[arg(long, default_value = "/var/cache/oasis/debian")]
    pub cache: PathBuf,
}

#[derive(Debug, Args)]
pub struct StateArgs {
    /// The appliance's configuration (its data_dir is used).
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    pub config: Option<PathBuf>,
    /// The appliance's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl StateArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.config, &self.data_dir) {
            (Some(file), _) => Config::load(file)?.data_dir,
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from("/var/lib/oasis"),
        })
    }
}

/// Reads state from the running appliance, or from the store when none runs.
fn read_state<T: DeserializeOwned>(
    data_dir: &Path,
    action: Action,
    direct: impl FnOnce(&Store) -> Result<T, crate::store::StoreError>,
) -> anyhow::Result<T> {
    if let Some(body) = operator::ask(data_dir, &action).context("asking oasis serve")? {
        return serde_json::from_slice(&body).context("reading the answer of oasis serve");
    }
    if !data_dir.join(crate::store::STORE_FILE).exists() {
        bail!("no oasis state in {}: give --config or --data-dir of an appliance", data_dir.display());
    }
    let store = Store::open(data_dir)?;
    Ok(direct(&store)?)
}

fn ago(t: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let secs = now.saturating_sub(t);
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn until(t: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if t <= now {
        "expired".into()
    } else {
        format!("in {}m", (t - now).div_ceil(60))
    }
}

/// Prints rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    print!("{}", render_table(header, rows));
}

/// Rows under a header, each column as wide as its widest cell; no cell is ever cut.
fn render_table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        format!("{}\n", text.join("  ").trim_end())
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row);
    }
    out
}

pub fn leases(args: &StateArgs) -> anyhow::Result<()> {
    let mut leases: Vec<Lease> = read_state(&args.data_dir()?, Action::Leases, Store::leases)?;
    leases.sort_by_key(|l| l.ip);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
        return Ok(());
    }
    let rows = leases
        .iter()
        .map(|l| {
            let state = match l.state {
                LeaseState::Bound => "bound",
                LeaseState::Released => "released",
                LeaseState::Declined => "declined",
            };
            vec![l.ip.to_string(), l.mac.to_string(), state.into(), until(l.expires), ago(l.updated)]
        })
        .collect();
    table(&["ADDRESS", "MAC", "STATE", "EXPIRES", "UPDATED"], rows);
    Ok(())
}

pub fn machines(args: &StateArgs) -> anyhow::Result<()> {
    let entries: Vec<MachineEntry> = read_state(&args.data_dir()?, Action::Machines, |store| {
        // Read without a running appliance: no heartbeats or handshakes to show.
        let views = store
            .records()?
            .into_iter()
            .map(|record| MachineView { record, last_heartbeat: None, handshake_age_secs: None })
            .collect();
        Ok(admin::machine_entries(store.machines()?, views))
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    print!("{}", machines_table(&entries));
    Ok(())
}

/// The `oasis machines` table.
fn machines_table(entries: &[MachineEntry]) -> String {
    let gib = |bytes: u64| format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64);
    let rows = entries
        .iter()
        .map(|e| {
            let m = &e.netboot;
            let mut row = vec![
                m.mac.to_string(),
                m.firmware().into(),
                m.last_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "-".into()),
                m.boot_count.to_string(),
            ];
            match &e.registration {
                None => {
                    row.extend(["-".into(), "not registered".into(), "-".into(), "-".into(), "-".into(), "-".into()])
                }
                Some(v) => {
                    let r = &v.record;
                    let inv = &r.inventory;
                    // Whole: an operator types it (`oasis machine accept ID`), and two machines'
                    // ids may differ only at their end (`mac-525400bb0001`, `mac-525400bb0002`).
                    row.extend([
                        r.id.clone(),
                        r.state.to_string(),
                        format!(
                            "{} {}cpu {}",
                            inv.system.serial.as_deref().unwrap_or("no-serial"),
                            inv.cpus,
                            gib(inv.memory_bytes)
                        ),
                        r.overlay.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
                        v.last_heartbeat.as_ref().map(|h| ago(h.at)).unwrap_or_else(|| "-".into()),
                        v.handshake_age_secs.map(|s| format!("{s}s ago")).unwrap_or_else(|| "-".into()),
                    ]);
                }
            }
            row
        })
        .collect();
    render_table(
        &["MAC", "FIRMWARE", "ADDRESS", "BOOTS", "ID", "STATE", "INVENTORY", "OVERLAY", "HEARTBEAT", "HANDSHAKE"],
        rows,
    )
}

/// `oasis cluster status`, from the running appliance.
pub fn cluster_status(args: &StateArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir()?;
    let Some(body) = operator::ask(&data_dir, &Action::ClusterStatus).context("asking oasis serve")? else {
        bail!("oasis serve is not running on {}: the cluster status comes from it", data_dir.display());
    };
    let status: crate::assembly::status::ClusterStatus =
        serde_json::from_slice(&body).context("reading the answer of oasis serve")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(())
}

/// `oasis cluster kubeconfig`: the admin kubeconfig from the running appliance.
pub fn cluster_kubeconfig(args: &StateArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir()?;
    let Some(body) = operator::ask(&data_dir, &Action::Kubeconfig).context("asking oasis serve")? else {
        bail!("oasis serve is not running on {}", data_dir.display());
    };
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `oasis cluster get|put KEY [VALUE] --via MACHINE`: prints the value read or written.
pub fn cluster_kv(key: &str, value: Option<&str>, via: &str, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let (via, key) = (via.to_string(), key.to_string());
    let action = match value {
        Some(value) => Action::KvPut { via, key, value: value.to_string() },
        None => Action::KvGet { via, key },
    };
    let Some(body) = operator::ask(&data_dir, &action).context("asking oasis serve")? else {
        bail!("oasis serve is not running on {}", data_dir.display());
    };
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `oasis machine accept|reject|remove ID`, through the running appliance.
pub fn machine_decision(id: &str, decision: Option<Decision>, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let machine = id.to_string();
    let (action, word, past) = match decision {
        Some(decision) => (Action::Decide { machine, decision }, decision.word(), decision.past()),
        None => (Action::Remove { machine }, "remove", "removed"),
    };
    let answer = operator::ask(&data_dir, &action).context("asking oasis serve")?;
    if answer.is_none() {
        bail!("oasis serve is not running on {}: start it, then {word} the machine", data_dir.display());
    }
    println!("{id} {past}");
    Ok(())
}

pub fn events(args: &StateArgs, limit: usize) -> anyhow::Result<()> {
    let events: Vec<Event> = read_state(&args.data_dir()?, Action::Events { limit }, |s| s.events(limit))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let rows = events.iter().map(|e| vec![e.seq.to_string(), ago(e.at), e.kind.clone(), e.message.clone()]).collect();
    table(&["SEQ", "WHEN", "KIND", "WHAT"], rows);
    Ok(())
}

pub async fn machine_boot(mac: MacAddr, target: BootArg, state: &StateArgs) -> anyhow::Result<()> {
    let data_dir = state.data_dir()?;
    let word = match target {
        BootArg::Network => "network",
        BootArg::Local => "local",
    };
    let mode = match target {
        BootArg::Network => crate::store::BootMode::Network,
        BootArg::Local => crate::store::BootMode::Local,
    };
    if operator::ask(&data_dir, &Action::SetBoot { mac, mode }).context("asking oasis serve")?.is_none() {
        let store = Store::open(&data_dir)?;
        store.set_boot_mode(mac, mode).await?;
    }
    println!("{mac} will boot from {}", if word == "local" { "its local disk" } else { "the network" });
    Ok(())
}

pub fn config_check(file: &Path) -> anyhow::Result<()> {
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
    Ok(())
}

/// `oasis image build appliance`: writes the disk image and says what is in it.
pub fn build_appliance(a: &ApplianceBuildArgs) -> anyhow::Result<()> {
    let oasis = match &a.oasis {
        Some(path) => path.clone(),
        None => std::env::current_exe()?,
    };
    if let Some(key) = &a.trusted_key {
        // Refuse a key the appliance could not read, before building anything.
        crate::usb::signature::load_trusted_key(key)?;
    }
    let inputs = oasis_image::appliance::ApplianceInputs {
        oasis,
        node: a.node.clone(),
        ipxe: a.ipxe.clone(),
        overlay: a.overlay.clone(),
        appliance_overlay: a.appliance_overlay.clone(),
        trusted_key: a.trusted_key.clone(),
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
    for (path, sha256) in &image.esp_files {
        println!("{sha256}  {path}");
    }
    Ok(())
}

/// `oasis config keygen --out DIR`.
pub fn config_keygen(dir: &Path) -> anyhow::Result<()> {
    let (private, public, key) = crate::usb::signature::keygen(dir)?;
    println!("key {}", crate::usb::signature::key_id(&key));
    println!(
        "  private: {} (keep it secret; sign with `oasis config sign --key {} oasis.toml`)",
        private.display(),
        private.display()
    );
    println!("  public:  {} (build it into the appliance image as its trusted key)", public.display());
    Ok(())
}

/// `oasis config sign --key PRIVATE FILE`.
pub fn config_sign(key: &Path, file: &Path) -> anyhow::Result<()> {
    let sig = crate::usb::signature::sign_file(key, file)?;
    println!("{}: signed, signature in {}", file.display(), sig.display());
    Ok(())
}

/// `oasis image build usb-stick`.
pub fn build_usb_stick(args: &UsbStickArgs) -> anyhow::Result<()> {
    use crate::usb::signature;
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
    oasis_image::usb_stick::build_usb_stick(&files, &args.out, args.size_mib)?;
    println!(
        "{}: {} MiB USB stick, FAT partition labelled {} with {CONFIG_FILE}, {signed_how}",
        args.out.display(),
        args.size_mib,
        oasis_image::usb_stick::LABEL
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use oasis_proto::MachineState;

    use super::*;
    use crate::registry::MachineRecord;

    fn record(id: &str, mac: &str) -> MachineRecord {
        MachineRecord {
            id: id.into(),
            state: MachineState::Pending,
            boot_mac: mac.parse().unwrap(),
            wireguard_key: String::new(),
            inventory: Default::default(),
            agent_version: "0.1.0".into(),
            overlay: None,
            credential_sha256: None,
            first_registered: 1,
            last_registered: 1,
            reason: String::new(),
            recent_nonces: vec![],
        }
    }

    #[test]
    fn the_machines_table_shows_every_id_whole() {
        let ids = ["mac-525400bb0001", "mac-525400bb0002", "6f1b2c3d-0000-4000-8000-000000000009"];
        let macs = ["52:54:00:bb:00:01", "52:54:00:bb:00:02", "52:54:00:00:00:09"];
        let views = ids
            .iter()
            .zip(macs)
            .map(|(id, mac)| MachineView { record: record(id, mac), last_heartbeat: None, handshake_age_secs: None })
            .collect();
        let text = machines_table(&admin::machine_entries(vec![], views));
        let rows: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(rows.len(), ids.len(), "{text}");
        for (id, mac) in ids.iter().zip(macs) {
            let row = rows.iter().find(|r| r.starts_with(mac)).unwrap_or_else(|| panic!("no row for {mac}:\n{text}"));
            assert!(row.split_whitespace().any(|cell| cell == *id), "{id} is not whole in its row:\n{text}");
        }
    }
}
