//! `oasis events`: the newest events.

use oasis_appliance::operator::Action;
use oasis_appliance::store::Event;

use super::read_state;
use super::table::{ago, table};
use crate::cli::StateArgs;

pub fn run(args: &StateArgs, limit: usize) -> anyhow::Result<()> {
    let events: Vec<Event> = read_state(&args.data_dir()?, Action::Events { limit }, |s| s.events(limit))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let rows = events.iter().map(|e| vec![e.seq.to_string(), ago(e.at), e.kind.clone(), e.message.clone()]).collect();
    table(&["SEQ", "WHEN", "KIND", "WHAT"], rows);
    Ok(())
}
