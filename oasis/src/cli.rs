//! The command line: clap's definitions of every subcommand and its arguments. What each does
//! is in `commands/`, one file per subcommand.

//! The `oasis` command line: argument definitions and the commands that read state.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use oasis_proto::MacAddr;

use oasis_core::config::Config;

#[derive(Debug, Parser)]
#[command(name = "oasis", version, about = "Network boot and self-assembly for disconnected racks", after_help = oasis_appliance::exit::EXIT_CODES_HELP)]
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
        /// For tests of the appliance's update (an image built with --test-failing-serve):
        /// refuse to start.
        #[arg(long, hide = true)]
        test_refuse_start: bool,
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
    /// Update bundles: signed node generations.
    #[command(subcommand)]
    Update(UpdateCommand),
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Verify a bundle completely (header, signature, every member's size and SHA-256) without
    /// installing anything, and with --installed-sequence and --installed-etcd whether it may be
    /// installed over them; prints its summary or why it is refused (exit 3).
    Verify(UpdateVerifyArgs),
    /// Install a bundle on the running appliance as a node generation: it is verified as it is
    /// read (signed by a trusted key, newer than what is installed, etcd one minor version up at
    /// most, every member intact) before anything is used; a refused bundle changes nothing
    /// (exit 3). Keeps the current generation and the one before it, and prunes older ones.
    Apply {
        /// The bundle, a file on the appliance.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        state: StateArgs,
    },
    /// The node generations installed, which one the rack runs, what each machine is served,
    /// and the rollout: which machine it moves and the gate that holds it.
    Status(StateArgs),
    /// Pause the node rollout before its next machine (the one in flight finishes its gates).
    Pause(StateArgs),
    /// Resume a paused rollout, or start a cancelled or stopped one again (not a generation that
    /// failed its gates: install a newer bundle).
    Resume(StateArgs),
    /// Cancel the node rollout: no machine starts, and those already moved go back, last first.
    Cancel(StateArgs),
}

#[derive(Debug, Args)]
pub struct UpdateVerifyArgs {
    /// The bundle (`oasis image build bundle`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// A public key bundles may be signed with (`oasis config keygen`); repeat for several.
    #[arg(long, value_name = "PUB", required = true)]
    pub trusted_key: Vec<PathBuf>,
    /// The sequence number of the installed generation.
    #[arg(long, value_name = "N", requires = "installed_etcd")]
    pub installed_sequence: Option<u64>,
    /// The installed etcd version (`3.4.23` or Debian's `3.4.23-4+b4`).
    #[arg(long, value_name = "V", requires = "installed_sequence")]
    pub installed_etcd: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Roles, etcd members, mesh links, and what assembly is doing or waiting for.
    Status(StateArgs),
    /// Print the admin kubeconfig (images built with a k3s bundle).
    Kubeconfig(StateArgs),
    /// Read one etcd key through the member on machine VIA (by default the leader, or another
    /// healthy voter).
    Get {
        key: String,
        #[arg(long, default_value = oasis_appliance::operator::ANY_MEMBER)]
        via: String,
        #[command(flatten)]
        state: StateArgs,
    },
    /// Write one etcd key through the member on machine VIA (by default the leader, or another
    /// healthy voter).
    Put {
        key: String,
        value: String,
        #[arg(long, default_value = oasis_appliance::operator::ANY_MEMBER)]
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
    /// Reprovision an accepted machine an operator wants clean: its etcd member leaves (quorum
    /// kept, a spare takes its place), its agent wipes its data disk and reboots it through the
    /// network, and it comes back as a fresh spare. Its agent must be up.
    Reprovision {
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
    /// Power control through a machine's BMC (its `[[power.bmc]]` in the config): status, on,
    /// off, cycle (off then on), pxe (the next boot only from the network). Each action waits
    /// until the BMC reads back the state asked, and is an event.
    Power {
        #[arg(value_enum)]
        op: PowerArg,
        /// The machine: id, id prefix or boot MAC (a machine that never booted: the MAC of its
        /// `[[power.bmc]]`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every machine with a BMC, one after another in the config's order.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        state: StateArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PowerArg {
    Status,
    On,
    Off,
    Cycle,
    Pxe,
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
    /// An update bundle: the node image (kernel, initramfs, etcd, k3s when it has it) in one
    /// file with a manifest signed by --key, for `oasis update`.
    Bundle(BundleBuildArgs),
}

#[derive(Debug, Args)]
pub struct BundleBuildArgs {
    /// The node image directory (`oasis image build node`).
    #[arg(long, value_name = "DIR")]
    pub node: PathBuf,
    /// The product version the bundle installs.
    #[arg(long, value_name = "V")]
    pub version: String,
    /// Its sequence number: appliances refuse a bundle whose number is not above the installed one.
    #[arg(long, value_name = "N")]
    pub sequence: u64,
    /// The private key to sign with (`oasis config keygen`).
    #[arg(long, value_name = "PRIVATE")]
    pub key: PathBuf,
    /// The bundle file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The kernel version; read from the kernel's header when not given.
    #[arg(long, value_name = "V")]
    pub kernel_version: Option<String>,
    /// The node agent's version; the --version when not given.
    #[arg(long, value_name = "V")]
    pub agent_version: Option<String>,
    /// The k3s version, recorded when the node image carries k3s.
    #[arg(long, value_name = "V")]
    pub k3s_version: Option<String>,
    /// An appliance disk image (`oasis image build appliance`): the bundle then updates the
    /// appliance itself too, into its other boot slot.
    #[arg(long, value_name = "IMAGE")]
    pub appliance: Option<PathBuf>,
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
    /// The version the image's boot slot says it holds (what the appliance reports and an update
    /// bundle names). Default: this oasis's version. For patched builds and tests.
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// For tests only: a fault the image's boot slot has on purpose (`failing-serve`: `oasis
    /// serve` refuses to start; `hanging-trial`: a trial boot hangs), so that an appliance update
    /// to it falls back.
    #[arg(long, hide = true, value_name = "FAULT")]
    pub test_fault: Option<oasis_image::appliance::TestFault>,
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
    /// Put this update bundle (`oasis image build bundle`) on the stick too: the appliance
    /// verifies it and installs it when confirmed on its console, or at once with
    /// `[update] apply_from_stick = true`.
    #[arg(long, value_name = "BUNDLE")]
    pub bundle: Option<PathBuf>,
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
    /// The Debian suite the kernel, its modules, busybox and etcd come from (e.g. `trixie` for
    /// Debian 13), with apt state of its own in the cache; the host's apt is left alone. Default:
    /// the build host's suite, through its apt sources.
    #[arg(long, value_name = "CODENAME")]
    pub suite: Option<String>,
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
    pub fn data_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.config, &self.data_dir) {
            (Some(file), _) => Config::load(file)?.data_dir,
            (None, Some(dir)) => dir.clone(),
            (None, None) => PathBuf::from("/var/lib/oasis"),
        })
    }
}
