//! `oasis leases`: the DHCP leases, from the running appliance or its store.

use oasis_appliance::operator::Action;
use oasis_appliance::store::Store;
use oasis_pxe::dhcp::{Lease, LeaseState};

use super::read_state;
use super::table::{ago, table, until};
use crate::cli::StateArgs;

pub fn run(args: &StateArgs) -> anyhow::Result<()> {
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
