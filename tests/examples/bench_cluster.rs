//! Cluster assembly figures under TCG, printed: for each rack size, power-on to cluster healthy
//! (median of the runs), each member's etcd join time (learner added to voter, from the
//! appliance's events), and the recovery time after a voter's power cycle (power-on to healthy
//! again). Run by `scripts/bench-cluster`, as root, with the node image built.
//!
//!   bench_cluster [RUNS] [SIZES...]     (default 3 runs of 1, 3 and 5 machines)

use std::time::{Duration, Instant};

use oasis_e2e::json::{Event, Health};
use oasis_e2e::rack::{healthy_with, Rack};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Seconds from each "added to etcd as learner" event to the same machine's "is a voter" event.
fn join_times(events: &[Event]) -> Vec<f64> {
    let mut added = std::collections::HashMap::new();
    let mut times = Vec::new();
    let mut in_order: Vec<&Event> = events.iter().collect();
    in_order.sort_by_key(|e| e.seq);
    for e in in_order {
        let (msg, at) = (e.message.as_str(), e.at);
        let machine = msg.split_whitespace().next().unwrap_or("").to_string();
        if msg.contains("added to etcd as learner") {
            added.insert(machine, at);
        } else if msg.contains("is a voter") {
            if let Some(start) = added.remove(&machine) {
                times.push(at.saturating_sub(start) as f64);
            }
        }
    }
    times
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let sizes: Vec<usize> =
        if args.len() > 1 { args[1..].iter().map(|a| a.parse().unwrap()).collect() } else { vec![1, 3, 5] };
    let mut summary = Vec::new();
    for &size in &sizes {
        let voters = size.min(5) - (1 - size.min(5) % 2);
        let (mut healthy, mut joins, mut recoveries) = (Vec::new(), Vec::new(), Vec::new());
        for run in 1..=runs {
            let cluster = format!(
                "[cluster]\ncontrol_plane = {}\nmin_machines = {size}\nsettle_secs = 5\ndead_after_secs = 15\n",
                if voters >= 5 { 5 } else { 3 }
            );
            let mut rack = Rack::new(&format!("oasis-bc{size}"), size, &cluster);
            let start = Instant::now();
            let members: Vec<usize> = (0..voters).collect();
            rack.wait(Duration::from_secs(1800), "cluster healthy", |s| healthy_with(s, &members));
            let t = start.elapsed().as_secs_f64();
            let events = rack.appliance.events(1000);
            let j = join_times(&events);
            // Power-cycle the last voter: off until degraded, on until healthy again.
            let victim = voters - 1;
            let recovery = if voters >= 3 {
                rack.power_off(victim);
                rack.wait(Duration::from_secs(600), "degraded", |s| s.health == Health::Degraded);
                let back = Instant::now();
                rack.power_on(victim);
                rack.wait(Duration::from_secs(1800), "healthy again", |s| healthy_with(s, &members));
                Some(back.elapsed().as_secs_f64())
            } else {
                None
            };
            println!(
                "{size} machine(s), run {run}: healthy {t:.0} s after power-on; etcd joins {:?} s; recovery {}",
                j,
                recovery.map(|r| format!("{r:.0} s")).unwrap_or_else(|| "-".into())
            );
            healthy.push(t);
            joins.extend(j);
            recoveries.extend(recovery);
        }
        summary.push(format!(
            "{size} machine(s) ({voters} voter(s)), {runs} run(s): power-on to healthy median {:.0} s; etcd join per member median {:.0} s (n={}); voter power-cycle recovery median {}",
            median(healthy),
            median(joins.clone()),
            joins.len(),
            if recoveries.is_empty() { "-".to_string() } else { format!("{:.0} s", median(recoveries)) }
        ));
    }
    println!("== summary");
    for line in summary {
        println!("{line}");
    }
}
