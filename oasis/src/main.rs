//! `oasis`: the one binary on the appliance. `oasis boot` runs the appliance image
//! (`oasis_boot`), `oasis serve` the services (`oasis_appliance`); every other subcommand asks
//! the running appliance through its admin socket, reads its store, or builds an image. The
//! decisions behind all of them are in `oasis_core`.

mod cli;
mod commands;

use clap::Parser;

use cli::{Cli, ClusterCommand, Command, ConfigCommand, ImageCommand, MachineCommand, UpdateCommand};
use commands::{boot, cluster, config, events, image, leases, machine, machines, serve, update};
use oasis_appliance::operator::Decision;
use oasis_core::rollout::Command as RolloutCommand;

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("OASIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {}", oasis_proto::error_chain(&e));
            std::process::exit(1);
        }
    };
    if let Err(err) = runtime.block_on(run(cli)) {
        eprintln!("error: {}", oasis_proto::error_chain(err.as_ref()));
        std::process::exit(oasis_appliance::exit_code(&err));
    }
}

/// Runs one command line.
async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Boot => boot::run().await,
        Command::Serve { config, new_store, test_refuse_start } => {
            if test_refuse_start {
                anyhow::bail!("this appliance slot was built with --test-failing-serve: oasis serve refuses to start");
            }
            serve::run(&config, new_store).await
        }
        Command::Config(ConfigCommand::Check { file }) => config::check(&file),
        Command::Config(ConfigCommand::Keygen { out }) => config::keygen(&out),
        Command::Config(ConfigCommand::Sign { key, file }) => config::sign(&key, &file),
        Command::Leases(state) => leases::run(&state),
        Command::Machines(state) => machines::run(&state),
        Command::Events { state, limit } => events::run(&state, limit),
        Command::Machine(MachineCommand::Boot { mac, target, state }) => machine::boot(mac, target, &state).await,
        Command::Machine(MachineCommand::Accept { id, state }) => machine::decide(&id, Some(Decision::Accept), &state),
        Command::Machine(MachineCommand::Reject { id, state }) => machine::decide(&id, Some(Decision::Reject), &state),
        Command::Machine(MachineCommand::Remove { id, state }) => machine::decide(&id, None, &state),
        Command::Machine(MachineCommand::Reprovision { id, state }) => {
            machine::decide(&id, Some(Decision::Reprovision), &state)
        }
        Command::Machine(MachineCommand::Power { op, id, all: _, state }) => machine::power(op, id.as_deref(), &state),
        Command::Cluster(ClusterCommand::Status(state)) => cluster::status(&state),
        Command::Cluster(ClusterCommand::Kubeconfig(state)) => cluster::kubeconfig(&state),
        Command::Cluster(ClusterCommand::Get { key, via, state }) => cluster::kv(&key, None, &via, &state),
        Command::Cluster(ClusterCommand::Put { key, value, via, state }) => {
            cluster::kv(&key, Some(&value), &via, &state)
        }
        Command::Image(ImageCommand::Build(build)) => image::build(&build),
        Command::Update(UpdateCommand::Verify(args)) => update::verify(&args),
        Command::Update(UpdateCommand::Apply { file, state }) => update::apply(&file, &state),
        Command::Update(UpdateCommand::Status(state)) => update::status(&state),
        Command::Update(UpdateCommand::Pause(state)) => update::rollout(RolloutCommand::Pause, &state),
        Command::Update(UpdateCommand::Resume(state)) => update::rollout(RolloutCommand::Resume, &state),
        Command::Update(UpdateCommand::Cancel(state)) => update::rollout(RolloutCommand::Cancel, &state),
    }
}
