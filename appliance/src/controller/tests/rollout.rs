//! The node rollout through the controller: the fake etcd and clock, a real store holding the
//! generations record, and machines that reboot when (and only when) their boot is asked to.

use oasis_core::generations::Generation;
use oasis_core::rollout::{Gate, RolloutState};

use super::*;

fn generation(sequence: u64) -> Generation {
    Generation {
        sequence,
        version: format!("0.{sequence}.0"),
        kernel: "6.12.118+deb13-amd64".into(),
        agent: "test".into(),
        etcd: "3.5.16-4".into(),
        k3s: None,
        key_id: "key".into(),
        installed_at: START,
        failed: false,
    }
}

fn mac(machine: &str) -> oasis_proto::MacAddr {
    oasis_proto::MacAddr([2, 0, 0, 0, 0, machine[1..].parse().unwrap()])
}

impl Rack {
    /// Three members with their data on disks, assembled, every agent on the shipped generation,
    /// and generation 1 installed.
    async fn assembled_with_generation_1() -> Rack {
        let rack = Rack::new(3).await;
        rack.on_generation_1().await
    }

    async fn on_generation_1(mut self) -> Rack {
        self.disks = true;
        for m in self.ids().await {
            self.running.insert(m, 0);
        }
        self.assemble().await;
        let rack = self;
        rack.api
            .store
            .update_generations(|g| {
                *g = g.with_installed(generation(1)).0;
                vec![]
            })
            .await
            .unwrap();
        rack
    }

    fn rollout_progress(&self) -> String {
        self.status.borrow().rollout.clone()
    }

    fn generations(&self) -> Generations {
        self.api.store.generations().unwrap()
    }

    /// The reboot a machine's desired state asks of its current boot, if any.
    async fn reboot_asked(&self, machine: &str) -> Option<RebootRequest> {
        let key = self.api.registry.lock().await.records().find(|r| r.id == machine)?.wireguard_key.clone();
        let published = self.api.desired.borrow();
        let (told_key, state) = published.states.get(machine)?;
        state.reboot.clone().filter(|r| r.boot == key && *told_key == key)
    }

    async fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.api.registry.lock().await.records().map(|r| r.id.clone()).collect();
        ids.sort();
        ids
    }

    /// The machine boots again: a new key (registered now), the generation its boot script
    /// names, its member down until its agent starts etcd again; with `starting_k3s`, its k3s
    /// takes a while to run.
    async fn reboot(&mut self, machine: &str) {
        if self.kubernetes {
            self.starting.insert(machine.to_string(), 3);
        }
        self.etcd.set_up(&peer_url(machine), false);
        let served = self.generations().served(mac(machine));
        let now = self.clock.now();
        let mut registry = self.api.registry.lock().await;
        let mut record = registry.records().find(|r| r.id == machine).unwrap().clone();
        let boots = record.wireguard_key.rsplit('-').next().unwrap().parse::<u32>().unwrap();
        record.wireguard_key = format!("key-{machine}-{}", boots + 1);
        record.last_registered = now;
        registry.apply(record);
        drop(registry);
        self.running.insert(machine.into(), served);
    }

    /// Ticks with agents acting; a machine whose boot is asked to reboot does; generations in
    /// `bad` never start etcd. Returns the machines rebooted, in order.
    async fn roll(&mut self, ticks: usize, bad: &[u64]) -> Vec<String> {
        let mut rebooted = vec![];
        let ids = self.ids().await;
        for _ in 0..ticks {
            for m in &ids {
                if self.reboot_asked(m).await.is_some() {
                    self.reboot(m).await;
                    rebooted.push(m.to_string());
                }
            }
            let members = self.assembly().members;
            let down = members.keys().filter(|m| self.etcd.answering(ep(m)).is_none()).count();
            assert!(down <= 1, "never two members down at once");
            for m in &ids {
                if !bad.contains(&self.running[m]) && self.etcd_spec(m).is_some_and(|s| s.run) {
                    self.etcd.start(m, &peer_url(m));
                }
                self.heartbeat(m).await;
            }
            self.tick().await;
            self.starting.retain(|_, ticks| {
                *ticks -= 1;
                *ticks > 0
            });
            let progress = self.rollout_progress();
            if self.progress_log.last() != Some(&progress) {
                self.progress_log.push(progress);
            }
            let record = self.generations();
            if record.rollout.as_ref().is_some_and(|r| !r.active()) {
                break;
            }
        }
        rebooted
    }
}

#[tokio::test]
async fn a_rollout_moves_leadership_off_and_reboots_one_member_at_a_time_into_the_new_generation() {
    let mut rack = Rack::assembled_with_generation_1().await;
    rack.agents_act().await;
    rack.tick().await;
    assert_eq!(rack.rollout_progress(), "starting the rollout from generation 0 to 1");
    rack.tick().await;
    assert_eq!(rack.rollout_progress(), "moving m1 to generation 1");
    // m1 leads (the fake's lowest id): leadership goes to another voter first.
    rack.etcd.calls();
    rack.tick().await;
    assert_eq!(rack.rollout_progress(), "moving etcd's leadership off m1");
    let moved = rack.etcd.calls();
    assert!(matches!(moved.as_slice(), [Call::MoveLeader(at, _)] if *at == ep("m1")), "{moved:?}");
    rack.tick().await;
    assert_eq!(rack.rollout_progress(), "m1 boots generation 1 (kexec)");
    let asked = rack.reboot_asked("m1").await.expect("m1's boot is asked to reboot");
    assert_eq!((asked.generation, asked.boot.as_str(), asked.kexec), (1, "key-m1-0", true));
    assert_eq!(rack.generations().served(mac("m1")), 1, "its boot script names the new generation");
    assert_eq!(rack.generations().served(mac("m2")), 0, "the others' do not");

    let rebooted = rack.roll(200, &[]).await;
    assert_eq!(rebooted, ["m1", "m2", "m3"], "each once, in order");
    let record = rack.generations();
    let rollout = record.rollout.clone().unwrap();
    assert_eq!(rollout.state, RolloutState::Done, "{}", rack.rollout_progress());
    assert_eq!((record.current, record.previous), (1, Some(0)));
    assert!(["m1", "m2", "m3"]
        .iter()
        .all(|m| record.served(mac(m)) == 1 && record.machines[&mac(m)].confirmed == Some(1)));
    assert_eq!(rack.assembly().members.len(), 3, "the same members: nobody was removed");
    let kinds = rack.event_kinds();
    assert_eq!(kinds.iter().filter(|k| *k == "rollout-reboot").count(), 3);
    assert_eq!(kinds.iter().filter(|k| *k == "rollout-done").count(), 1);
    for m in ["m1", "m2", "m3"] {
        assert!(rack.reboot_asked(m).await.is_none(), "nothing asks {m} to reboot any more");
    }
}

#[tokio::test]
async fn a_generation_whose_etcd_never_starts_fails_its_gate_and_the_machine_goes_back() {
    let mut rack = Rack::assembled_with_generation_1().await;
    rack.controller.rollout.timeout = Duration::from_secs(60);
    // Generation 1's etcd never answers: m1 cannot pass its gates and times out.
    let mut rebooted = rack.roll(30, &[1]).await;
    assert_eq!(rebooted, ["m1"]);
    assert!(
        rack.rollout_progress().contains("m1 to come back") || rack.rollout_progress().contains("etcd member on m1")
    );
    rack.clock.0.fetch_add(61, Ordering::SeqCst);
    rebooted.extend(rack.roll(60, &[1]).await);
    assert_eq!(rebooted, ["m1", "m1"], "m1 went and came back; m2 and m3 were never touched");
    let record = rack.generations();
    let rollout = record.rollout.clone().unwrap();
    assert_eq!(rollout.state, RolloutState::Failed);
    let failure = rollout.failure.unwrap();
    assert_eq!((failure.machine.as_str(), failure.gate), ("m1", Gate::Voter));
    assert!(failure.back, "m1 is back on generation 0, healthy");
    assert!(record.get(1).unwrap().failed);
    assert_eq!((record.current, record.served(mac("m1"))), (0, 0));
    assert_eq!(rack.running["m1"], 0);
    // Not retried, however long it waits.
    rack.roll(20, &[]).await;
    assert_eq!(rack.generations().rollout.unwrap().state, RolloutState::Failed);
    assert!(rack.event_kinds().iter().any(|k| k == "rollout-failed"));
    assert!(
        rack.rollout_progress().contains("stopped") || rack.rollout_progress().contains("failed"),
        "{}",
        rack.rollout_progress()
    );
}

#[tokio::test]
async fn with_k3s_the_servers_go_first_then_the_agents_each_once_its_k3s_runs_again() {
    let mut rack = Rack::with_kubernetes(4).await.on_generation_1().await;
    // k3s runs everywhere before the rollout starts: three servers, one agent.
    for _ in 0..20 {
        if ["m1", "m2", "m3", "m4"].iter().all(|m| rack.told_services(m).iter().any(|s| s.name == "k3s")) {
            break;
        }
        rack.agents_act().await;
        rack.tick().await;
    }
    let k3s_args = |m: &str| rack.told_services(m).into_iter().find(|s| s.name == "k3s").map(|s| s.args.join(" "));
    assert!(k3s_args("m1").is_some_and(|a| a.starts_with("server")), "{:?}", k3s_args("m1"));
    assert!(k3s_args("m4").is_some_and(|a| a.starts_with("agent")), "{:?}", k3s_args("m4"));
    rack.progress_log.clear();
    let rebooted = rack.roll(300, &[]).await;
    assert_eq!(rebooted, ["m1", "m2", "m3", "m4"], "servers first, then the agent");
    assert_eq!(rack.generations().rollout.unwrap().state, RolloutState::Done);
    let log = rack.progress_log.join("\n") + "\n";
    assert!(log.contains("the services on m1 to run"), "each waits for its k3s to run again:\n{log}");
    golden("rollout-k3s.txt", &log);
}
