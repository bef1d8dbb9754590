//! The oasis appliance: `oasis serve` and the commands around it.
//!
//! - [`boot`]: `oasis boot`, the appliance image's supervisor: disk, configuration, serve, console.
//! - [`config`]: `oasis.toml`, parsed and checked.
//! - [`store`]: the redb store of leases, machines and events.
//! - [`serve`]: runs the network boot services on the store.
//! - [`admin`]: the admin socket the CLI talks to while `serve` runs.
//! - [`operator`]: every operator action, its one handler, and the table from its errors to
//!   HTTP statuses and exit codes; the HTTPS admin routes, the admin socket, the CLI and the
//!   console only parse into it.
//! - [`limits`]: the descriptor limit and the connection caps sized to fit in it.
//! - [`console`]: the serial console: first-boot questions, then the status view and its menu.
//! - [`cli`]: command-line definitions and the state-reading commands.
//! - [`exit`]: the exit codes, read off an error's typed causes.
//! - [`pki`]: the cluster CA, which certifies etcd's members and the appliance as their client.
//! - [`etcd`]: the appliance's etcd client (membership, status, keys).
//! - [`assembly`]: the controller that turns accepted machines into a cluster.
//! - [`k3s`]: the k3s services, CAs and kubeconfig of a cluster with a k3s bundle.
//! - [`usb`]: configuration from a USB stick labelled `OASIS`, and the report written back to it.

pub mod admin;
pub mod api;
pub mod assembly;
pub mod boot;
pub mod cli;
pub mod config;
pub mod console;
pub mod etcd;
pub mod exit;
pub mod identity;
pub mod k3s;
pub mod limits;
pub mod netboot;
pub mod operator;
pub mod pki;
pub mod registry;
pub mod serve;
pub mod store;
pub mod usb;
pub mod wireguard;

use cli::{BuildCommand, Cli, ClusterCommand, Command, ConfigCommand, ImageCommand, MachineCommand};

/// Runs one command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Boot => tokio::task::spawn_blocking(boot::run).await??,
        Command::Serve { config, new_store } => {
            let config = config::Config::load(&config)?;
            serve::run(config, new_store).await?;
        }
        Command::Config(ConfigCommand::Check { file }) => cli::config_check(&file)?,
        Command::Config(ConfigCommand::Keygen { out }) => cli::config_keygen(&out)?,
        Command::Config(ConfigCommand::Sign { key, file }) => cli::config_sign(&key, &file)?,
        Command::Leases(state) => cli::leases(&state)?,
        Command::Machines(state) => cli::machines(&state)?,
        Command::Events { state, limit } => cli::events(&state, limit)?,
        Command::Machine(MachineCommand::Boot { mac, target, state }) => cli::machine_boot(mac, target, &state).await?,
        Command::Machine(MachineCommand::Accept { id, state }) => {
            cli::machine_decision(&id, Some(operator::Decision::Accept), &state)?
        }
        Command::Machine(MachineCommand::Reject { id, state }) => {
            cli::machine_decision(&id, Some(operator::Decision::Reject), &state)?
        }
        Command::Machine(MachineCommand::Remove { id, state }) => cli::machine_decision(&id, None, &state)?,
        Command::Cluster(ClusterCommand::Status(state)) => cli::cluster_status(&state)?,
        Command::Cluster(ClusterCommand::Kubeconfig(state)) => cli::cluster_kubeconfig(&state)?,
        Command::Cluster(ClusterCommand::Get { key, via, state }) => cli::cluster_kv(&key, None, &via, &state)?,
        Command::Cluster(ClusterCommand::Put { key, value, via, state }) => {
            cli::cluster_kv(&key, Some(&value), &via, &state)?
        }
        Command::Image(ImageCommand::Build(build)) => {
            let manifest = match &build {
                BuildCommand::Appliance(a) => return cli::build_appliance(a),
                BuildCommand::UsbStick(a) => return cli::build_usb_stick(a),
                BuildCommand::Ipxe(a) => oasis_image::ipxe::build_ipxe(&a.cache, &a.out)?,
                BuildCommand::TestPayload(a) => oasis_image::payload::build_test_payload(&a.cache, &a.out)?,
                BuildCommand::Node(a) => {
                    let image = oasis_image::node::build_node_image(
                        &a.build.cache,
                        &a.agent,
                        &a.overlay,
                        a.k3s_bundle.as_deref(),
                        &a.build.out,
                    )?;
                    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
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
                    image.manifest
                }
            };
            for entry in manifest.entries() {
                println!("{}  {}", entry.sha256, entry.name);
            }
        }
    }
    Ok(())
}

/// Exit code of a store that needs its operator: damaged, or missing where one existed.
pub const EXIT_STORE: i32 = 5;

/// The exit code for an error, from the typed causes along its whole chain ([`exit::Exit::of`]):
/// 2 for a request the running appliance refused as asked, 3 for a configuration to fix (bad
/// file, or one this host does not match), 4 for a store in use, [`EXIT_STORE`] (5) for a store
/// damaged or lost, 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    exit::Exit::of(err.as_ref()).code()
}
