//! The console after setup: the status block, redrawn when it changes, and a one-letter menu.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::status::{self, Serve};
use super::terminal::{Input, Terminal};
use oasis_appliance::operator::{self, Action, Decision};
use oasis_appliance::store::Event;

/// How often the status is read again; a block is printed only when it changed.
pub const REFRESH: Duration = Duration::from_secs(3);
/// How often the stop flag is looked at while waiting for input.
const STOP_CHECK: Duration = Duration::from_millis(500);
/// Events shown by `e`.
const EVENTS_SHOWN: usize = 10;

/// The line shown above the menu while a bundle from a stick waits for confirmation.
pub const PENDING_BUNDLE: &str = "update bundle from the USB stick, verified";

pub const MENU: &str = "menu: [a] accept pending  [e] events  [x] export report to USB  [n] new store  [r] reboot  \
                        [p] power off\nChoice: ";

/// What the console asks of the supervisor: things that are not the console's business.
pub trait ApplianceActions {
    /// Writes the report to the USB stick; what was written, or why not.
    fn export_report(&self) -> Result<String, String>;
    /// Restarts `oasis serve` with a new store, the refused one kept aside; what happens, or why
    /// not (only a store `serve` refuses is replaced).
    fn start_afresh(&self) -> Result<String, String>;
    /// The summary of the verified update bundle from a USB stick waiting for the operator's
    /// confirmation, if there is one.
    fn pending_bundle(&self) -> Option<String>;
    /// Installs that bundle through `oasis serve`; what it became, or why not.
    fn install_bundle(&self) -> Result<String, String>;
    fn reboot(&self);
    fn power_off(&self);
}

/// Runs the status view on `term` until `stop` is set or no console can be read any more.
/// Blocking: give it its own thread. `data_dir` is the running appliance's data directory (its
/// admin socket, `oasis.toml` and `admin-token`).
pub fn run_status(
    term: &mut dyn Terminal,
    data_dir: &Path,
    actions: &dyn ApplianceActions,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut shown: Option<String> = None;
    let mut next_read = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if Instant::now() >= next_read {
            let mut block = status::render(&status::fetch(data_dir));
            if let Some(summary) = actions.pending_bundle() {
                block += &format!("{PENDING_BUNDLE}: {summary} ([u] installs it)\n");
            }
            if shown.as_ref() != Some(&block) {
                term.write(&format!("\n{block}{MENU}"))?;
                shown = Some(block);
            }
            next_read = Instant::now() + REFRESH;
        }
        let wait = next_read.saturating_duration_since(Instant::now()).min(STOP_CHECK);
        match term.read_line_within(wait)? {
            Input::Nothing => continue,
            Input::Closed => return Ok(()),
            Input::Line(line) => {
                run_choice(term, data_dir, actions, line.trim())?;
                // A fresh block after every command and on a bare Enter.
                shown = None;
                next_read = Instant::now();
            }
        }
    }
    Ok(())
}

fn say(term: &mut dyn Terminal, line: &str) -> io::Result<()> {
    term.write(&format!("{line}\n"))
}

/// Asks yes or no, `no` by default.
fn confirm(term: &mut dyn Terminal, question: &str) -> io::Result<bool> {
    loop {
        term.write(&format!("{question}, yes or no [no]: "))?;
        let Some(answer) = term.read_line()? else { return Ok(false) };
        match answer.trim().to_lowercase().as_str() {
            "yes" | "y" => return Ok(true),
            "" | "no" | "n" => return Ok(false),
            other => say(term, &format!("error: {other:?}: type yes or no"))?,
        }
    }
}

fn run_choice(
    term: &mut dyn Terminal,
    data_dir: &Path,
    actions: &dyn ApplianceActions,
    choice: &str,
) -> io::Result<()> {
    match choice.to_lowercase().as_str() {
        "" => Ok(()),
        "a" => accept_pending(term, data_dir),
        "e" => show_events(term, data_dir),
        "x" => {
            say(term, "oasis: exporting the report to the USB stick")?;
            match actions.export_report() {
                Ok(what) => say(term, &format!("oasis: report exported: {what}")),
                Err(why) => say(term, &format!("oasis: export failed: {why}")),
            }
        }
        "n" => {
            say(
                term,
                "oasis: a new store means a new appliance: new tokens and keys, no leases, no machines. The \
                 store oasis serve refuses is kept aside in the data partition.",
            )?;
            if confirm(term, "Start afresh with a new store")? {
                match actions.start_afresh() {
                    Ok(what) => say(term, &format!("oasis: {what}"))?,
                    Err(why) => say(term, &format!("oasis: not started afresh: {why}"))?,
                }
            }
            Ok(())
        }
        "u" => install_bundle(term, actions),
        "r" => {
            if confirm(term, "Reboot the appliance")? {
                say(term, "oasis: rebooting")?;
                actions.reboot();
            }
            Ok(())
        }
        "p" => {
            if confirm(term, "Power off the appliance")? {
                say(term, "oasis: powering off")?;
                actions.power_off();
            }
            Ok(())
        }
        other => say(
            term,
            &format!(
                "error: {other:?} is not on the menu: type a, e, x, n, r or p (u with an update bundle), then Enter"
            ),
        ),
    }
}

/// `u`: the pending update bundle, installed once confirmed.
fn install_bundle(term: &mut dyn Terminal, actions: &dyn ApplianceActions) -> io::Result<()> {
    let Some(summary) = actions.pending_bundle() else {
        return say(
            term,
            "oasis: no update bundle is waiting: plug in a USB stick labelled OASIS with one *.bundle file at its root",
        );
    };
    say(term, &format!("oasis: {PENDING_BUNDLE}: {summary}"))?;
    if !confirm(term, "Install it as a new node generation (the rollout to it then starts by itself)")? {
        return say(term, "oasis: not installed; it stays here until [u] installs it or another stick replaces it");
    }
    say(term, "oasis: installing the update bundle (verified again as it is installed)")?;
    match actions.install_bundle() {
        Ok(what) => say(term, &format!("oasis: {what}")),
        Err(why) => say(term, &format!("oasis: not installed: {why}")),
    }
}

/// Which of `count` listed machines the answer names: `all`, or numbers from 1.
fn parse_selection(answer: &str, count: usize) -> Result<Vec<usize>, String> {
    if answer.eq_ignore_ascii_case("all") {
        return Ok((0..count).collect());
    }
    let mut chosen = Vec::new();
    for word in answer.split([' ', ',']).filter(|w| !w.is_empty()) {
        match word.parse::<usize>() {
            Ok(n) if (1..=count).contains(&n) => {
                if !chosen.contains(&(n - 1)) {
                    chosen.push(n - 1)
                }
            }
            _ => return Err(format!("{word:?} is not a number from 1 to {count}; type numbers, all, or none")),
        }
    }
    Ok(chosen)
}

fn accept_pending(term: &mut dyn Terminal, data_dir: &Path) -> io::Result<()> {
    let machines = match status::fetch(data_dir).serve {
        Serve::Answering { machines, .. } => machines,
        Serve::NotRunning => return say(term, "oasis: oasis serve is not running; try again in a moment"),
        Serve::Failed(why) => return say(term, &format!("oasis: cannot read the machines: {why}")),
    };
    let pending = status::pending(&machines);
    if pending.is_empty() {
        return say(term, "oasis: no machine is waiting for acceptance");
    }
    say(term, "pending machines:")?;
    for (i, entry) in pending.iter().enumerate() {
        say(term, &format!("  {}) {}", i + 1, status::describe(entry)))?;
    }
    let chosen = loop {
        term.write("Accept which, numbers separated by spaces, all or none [all]: ")?;
        let Some(answer) = term.read_line()? else { return Ok(()) };
        let answer = answer.trim();
        if answer.eq_ignore_ascii_case("none") {
            return say(term, "oasis: nothing accepted");
        }
        match parse_selection(if answer.is_empty() { "all" } else { answer }, pending.len()) {
            Ok(chosen) => break chosen,
            Err(why) => say(term, &format!("error: {why}"))?,
        }
    };
    for i in chosen {
        let Some(view) = &pending[i].registration else { continue };
        let id = &view.record.id;
        let accept = Action::Decide { machine: id.clone(), decision: Decision::Accept };
        match operator::ask(data_dir, &accept) {
            Ok(Some(_)) => say(term, &format!("oasis: accepted {id}"))?,
            Ok(None) => say(term, &format!("oasis: {id} not accepted: oasis serve stopped"))?,
            Err(e) => say(term, &e.console_line(&format!("{id} not accepted")))?,
        }
    }
    Ok(())
}

fn show_events(term: &mut dyn Terminal, data_dir: &Path) -> io::Result<()> {
    let events: Vec<Event> = match operator::ask(data_dir, &Action::Events { limit: EVENTS_SHOWN }) {
        Ok(Some(body)) => match serde_json::from_slice(&body) {
            Ok(events) => events,
            Err(e) => return say(term, &format!("oasis: unreadable events: {e}")),
        },
        Ok(None) => return say(term, "oasis: oasis serve is not running; try again in a moment"),
        Err(e) => return say(term, &e.console_line("cannot read the events")),
    };
    say(term, &format!("events, newest last ({} shown):", events.len()))?;
    if events.is_empty() {
        say(term, "  none yet")?;
    }
    for e in &events {
        say(term, &format!("  #{} {}: {}", e.seq, e.kind, e.message))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;
    use crate::console::terminal::ScriptedTerminal;
    use oasis_appliance::admin;

    #[derive(Default)]
    struct Recorder {
        exports: AtomicUsize,
        reboots: AtomicUsize,
        power_offs: AtomicUsize,
        afresh: AtomicUsize,
        export_fails: bool,
        bundle: std::sync::Mutex<Option<String>>,
        installs: AtomicUsize,
    }

    impl ApplianceActions for Recorder {
        fn export_report(&self) -> Result<String, String> {
            self.exports.fetch_add(1, Ordering::SeqCst);
            if self.export_fails {
                Err("no USB stick labelled OASIS is plugged in".into())
            } else {
                Ok("oasis-report/ on the stick OASIS".into())
            }
        }
        fn start_afresh(&self) -> Result<String, String> {
            self.afresh.fetch_add(1, Ordering::SeqCst);
            Err("the store is sound: oasis serve uses it".into())
        }
        fn pending_bundle(&self) -> Option<String> {
            self.bundle.lock().unwrap().clone()
        }
        fn install_bundle(&self) -> Result<String, String> {
            self.installs.fetch_add(1, Ordering::SeqCst);
            let summary = self.bundle.lock().unwrap().take().ok_or("nothing pending")?;
            Ok(format!("installed as node generation 5: {summary}"))
        }
        fn reboot(&self) {
            self.reboots.fetch_add(1, Ordering::SeqCst);
        }
        fn power_off(&self) {
            self.power_offs.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Runs the menu on `data_dir`, answering `script`.
    fn run_in(data_dir: &Path, script: &[&str], actions: &Recorder) -> String {
        let stop = Arc::new(AtomicBool::new(false));
        let mut term = ScriptedTerminal::new(script);
        term.on_exhausted = Some(stop.clone());
        run_status(&mut term, data_dir, actions, &stop).unwrap();
        term.output
    }

    /// Runs the menu on a data directory with no server, answering `script`.
    fn run(script: &[&str], actions: &Recorder) -> String {
        run_in(tempfile::tempdir().unwrap().path(), script, actions)
    }

    #[test]
    fn reboot_and_power_off_ask_first() {
        let actions = Recorder::default();
        let out = run(&["r", "", "r", "maybe", "yes", "p", "no", "p", "y"], &actions);
        assert_eq!(actions.reboots.load(Ordering::SeqCst), 1, "{out}");
        assert_eq!(actions.power_offs.load(Ordering::SeqCst), 1, "{out}");
        assert_eq!(out.matches("Reboot the appliance, yes or no [no]: ").count(), 3, "{out}");
        assert!(out.contains("error: \"maybe\": type yes or no"));
        assert!(out.contains("oasis: rebooting") && out.contains("oasis: powering off"));
    }

    #[test]
    fn a_new_store_is_asked_for_twice_and_the_supervisor_answers() {
        let actions = Recorder::default();
        let out = run(&["n", "", "n", "yes"], &actions);
        assert_eq!(actions.afresh.load(Ordering::SeqCst), 1, "{out}");
        assert!(out.contains("no leases, no machines"), "{out}");
        assert!(out.contains("oasis: not started afresh: the store is sound"), "{out}");
    }

    #[test]
    fn export_reports_what_the_supervisor_said_and_unknown_letters_are_explained() {
        let actions = Recorder::default();
        let out = run(&["x", "z"], &actions);
        assert!(out.contains("oasis: report exported: oasis-report/ on the stick OASIS"), "{out}");
        assert!(out.contains("error: \"z\" is not on the menu"), "{out}");
        let failing = Recorder { export_fails: true, ..Recorder::default() };
        let out = run(&["x"], &failing);
        assert!(out.contains("oasis: export failed: no USB stick labelled OASIS"), "{out}");
    }

    #[test]
    fn a_block_after_every_command_each_starting_with_the_marker() {
        let out = run(&["", "e", "a"], &Recorder::default());
        assert_eq!(out.matches("oasis status: ").count(), 4, "{out}");
        assert_eq!(out.matches(MENU).count(), 4);
        assert!(out.contains("oasis status: oasis serve is not running"));
        assert!(out.contains("oasis: oasis serve is not running; try again in a moment"));
    }

    /// The real admin router on a Unix socket in `dir`, with one machine pending under the
    /// manual policy, registered through the real API router.
    fn admin_with_a_pending_machine(dir: &Path, rt: &tokio::runtime::Runtime) -> Arc<oasis_appliance::api::Api> {
        use axum::extract::ConnectInfo;
        use tower::ServiceExt;

        use oasis_core::registry::Policy;

        rt.block_on(async {
            let api = oasis_appliance::api::test_api(dir, Policy::Manual);
            let register = oasis_proto::RegisterRequest {
                token: api.identity.join_token.clone(),
                nonce: "nonce-0000000000000001".into(),
                boot_mac: "52:54:00:00:00:09".into(),
                wireguard_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [9u8; 32]),
                agent_version: "0.1.0".into(),
                inventory: oasis_proto::Inventory {
                    system: oasis_proto::System {
                        uuid: Some("6f1b2c3d-0000-4000-8000-000000000009".into()),
                        serial: Some("SN-9".into()),
                        ..Default::default()
                    },
                    cpus: 2,
                    ..Default::default()
                },
            };
            let mut req = axum::http::Request::builder()
                .method("POST")
                .uri(oasis_proto::REGISTER_PATH)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(serde_json::to_vec(&register).unwrap()))
                .unwrap();
            req.extensions_mut().insert(ConnectInfo(std::net::SocketAddr::from(([10, 0, 0, 100], 40000))));
            let res = oasis_appliance::api::router(api.clone()).oneshot(req).await.unwrap();
            assert!(res.status().is_success(), "registration: {}", res.status());

            let ca = oasis_appliance::pki::ClusterCa::load_or_create(&api.store).unwrap();
            let cluster = admin::ClusterHandle {
                status: tokio::sync::watch::channel(Arc::default()).1,
                etcd: oasis_appliance::etcd::EtcdClient::new(&ca).unwrap(),
                kubeconfig: tokio::sync::watch::channel(None).1,
            };
            let listener = admin::listen(dir).unwrap();
            let router = admin::router(api.clone(), cluster);
            tokio::spawn(async move { axum::serve(listener, router).await });
            api
        })
    }

    #[test]
    fn a_pending_machine_is_shown_and_accepted_through_the_admin_socket() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let api = admin_with_a_pending_machine(dir.path(), &rt);
        let id = "6f1b2c3d-0000-4000-8000-000000000009";

        let out = run_in(dir.path(), &["a", "7", ""], &Recorder::default());
        assert!(out.contains(&format!("pending: {id} (52:54:00:00:00:09, serial SN-9) ([a] accepts it)")), "{out}");
        assert!(out.contains(&format!("  1) {id} (52:54:00:00:00:09, serial SN-9)\n")), "{out}");
        assert!(out.contains("error: \"7\" is not a number from 1 to 1"), "{out}");
        assert!(out.contains(&format!("oasis: accepted {id}")), "{out}");
        let last_block = out.rsplit("oasis status: ").next().unwrap();
        assert!(last_block.contains("(1 accepted, 0 pending, 0 rejected)"), "{last_block}");
        let state = rt.block_on(async { api.registry.lock().await.find(id).unwrap().state });
        assert_eq!(state, oasis_proto::MachineState::Accepted);

        let out = run_in(dir.path(), &["a"], &Recorder::default());
        assert!(out.contains("oasis: no machine is waiting for acceptance"), "{out}");
    }

    #[test]
    fn a_pending_bundle_is_shown_and_installed_only_once_confirmed() {
        let actions = Recorder { bundle: std::sync::Mutex::new(Some("oasis 0.5.0".into())), ..Recorder::default() };
        let out = run(&["u", "", "u", "yes", "u"], &actions);
        assert_eq!(actions.installs.load(Ordering::SeqCst), 1, "{out}");
        let first_block = out.split(MENU).next().unwrap();
        assert!(first_block.contains(&format!("{PENDING_BUNDLE}: oasis 0.5.0 ([u] installs it)")), "{first_block}");
        assert_eq!(out.matches("Install it as a new node generation").count(), 2, "{out}");
        assert!(out.contains("oasis: not installed; it stays here"), "{out}");
        assert!(out.contains("oasis: installed as node generation 5: oasis 0.5.0"), "{out}");
        let after = out.rsplit("oasis: installed as").next().unwrap();
        assert!(!after.contains("[u] installs it"), "no longer shown once installed: {after}");
        assert!(after.contains("oasis: no update bundle is waiting"), "{after}");
    }

    #[test]
    fn selections_name_listed_machines() {
        assert_eq!(parse_selection("all", 3), Ok(vec![0, 1, 2]));
        assert_eq!(parse_selection("3 1,3", 3), Ok(vec![2, 0]));
        assert!(parse_selection("4", 3).unwrap_err().contains("from 1 to 3"));
        assert!(parse_selection("x", 3).is_err());
    }
}
