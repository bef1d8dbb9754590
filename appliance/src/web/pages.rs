//! The HTML of each page, rendered on the server (maud: every value escaped by the macro). Plain
//! words for a technician: no etcd or Kubernetes terms where a simpler one does.

use std::collections::BTreeMap;

use maud::{html, Markup, DOCTYPE};
use oasis_core::assembly::status::{ClusterStatus, Health};

use crate::admin::MachineEntry;

/// What the page says about the appliance itself.
#[derive(Debug, Clone)]
pub struct Appliance {
    pub version: &'static str,
    pub address: std::net::Ipv4Addr,
    /// The SHA-256 of the appliance's HTTPS certificate, as the console shows it.
    pub fingerprint: String,
}

/// The frame of every page: its title, the navigation and (when logged in) logout.
fn layout(title: &str, csrf: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · oasis" }
                link rel="stylesheet" href="/assets/oasis.css";
                @if csrf.is_some() {
                    script src="/assets/live.js" defer {}
                }
            }
            body {
                header {
                    nav aria-label="pages" {
                        a href="/" class="brand" { "oasis" }
                        @if csrf.is_some() {
                            a href="/" { "Overview" }
                            a href="/machines" { "Machines" }
                            a href="/cluster" { "Cluster" }
                            a href="/events" { "Events" }
                            a href="/updates" { "Updates" }
                            a href="/downloads" { "Downloads" }
                        }
                    }
                    @if let Some(csrf) = csrf {
                        form method="post" action="/logout" class="logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The login page; `notice` says why the visitor is here (a session that ended, a wrong token).
pub fn login(notice: Option<&str>) -> Markup {
    layout(
        "Log in",
        None,
        html! {
            h1 { "Log in" }
            @if let Some(notice) = notice {
                p class="notice" role="alert" { (notice) }
            }
            form method="post" action="/login" class="login" {
                // For password managers and screen readers: the token is the admin's.
                input type="text" name="user" value="admin" autocomplete="username" hidden;
                label for="token" { "Admin token" }
                input id="token" name="token" type="password" autocomplete="current-password" required autofocus;
                p class="hint" {
                    "The admin token is shown on the appliance's console at first boot and written to the USB stick's report."
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The overview: the cluster's health in words, what it waits for, machines by state, the
/// appliance itself.
pub fn overview(csrf: &str, status: Option<&ClusterStatus>, machines: &[MachineEntry], me: &Appliance) -> Markup {
    let counts = machine_counts(machines);
    layout(
        "Overview",
        Some(csrf),
        live(
            "overview",
            html! {
                h1 { "Overview" }
                section aria-labelledby="cluster" {
                    h2 id="cluster" { "Cluster" }
                    @match status {
                        Some(status) => {
                            p class={ "health " (health_class(status.health)) } { (health_words(status.health)) }
                            @if !status.progress.is_empty() {
                                p { "Now: " (status.progress) }
                            }
                            @if !status.rollout.is_empty() {
                                p { "Upgrade: " (status.rollout) }
                            }
                            @for warning in &status.warnings {
                                p class="notice" { (warning) }
                            }
                        }
                        None => p { "The cluster is not managed by this appliance." }
                    }
                }
                section aria-labelledby="machines" {
                    h2 id="machines" { "Machines" }
                    @if counts.is_empty() {
                        p { "No machine has booted from the network yet." }
                    } @else {
                        dl class="counts" {
                            @for (state, count) in &counts {
                                dt { (state) } dd { (count) }
                            }
                        }
                    }
                }
                section aria-labelledby="appliance" {
                    h2 id="appliance" { "This appliance" }
                    dl {
                        dt { "Version" } dd { (me.version) }
                        dt { "Address" } dd { (me.address) }
                        dt { "Certificate" } dd class="fingerprint" { (me.fingerprint) }
                    }
                }
            },
        ),
    )
}

/// A page for an error the visitor can do something about.
pub fn problem(title: &str, words: &str) -> Markup {
    layout(
        title,
        None,
        html! {
            h1 { (title) }
            p { (words) }
            p { a href="/" { "Back to the overview" } }
        },
    )
}

/// The health of the cluster in a technician's words.
pub fn health_words(health: Health) -> &'static str {
    match health {
        Health::Starting => "Starting: the appliance has just come up and is looking at the machines.",
        Health::Waiting => "Waiting for machines before the cluster is formed.",
        Health::Assembling => "Forming the cluster from the machines.",
        Health::Healthy => "Healthy: every control machine is in place and answering.",
        Health::Degraded => "Working, but not every control machine answers: one more failure could stop it.",
        Health::QuorumLost => "Stopped: too many control machines are down for the cluster to work.",
    }
}

fn health_class(health: Health) -> &'static str {
    match health {
        Health::Healthy => "good",
        Health::Degraded | Health::Starting | Health::Waiting | Health::Assembling => "busy",
        Health::QuorumLost => "bad",
    }
}

/// Machines counted by [`state_words`].
fn machine_counts(machines: &[MachineEntry]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for entry in machines {
        *counts.entry(state_words(entry)).or_insert(0) += 1;
    }
    counts
}

/// What a machine is to oasis, in words: registered ones by their state, the rest "booted".
fn state_words(entry: &MachineEntry) -> &'static str {
    match entry.registration.as_ref().map(|r| r.record.state) {
        Some(oasis_proto::MachineState::Accepted) => "accepted",
        Some(oasis_proto::MachineState::Pending) => "waiting to be accepted",
        Some(oasis_proto::MachineState::Rejected) => "rejected",
        None => "booted, not registered",
    }
}

/// How long ago Unix time `at` was, from `now`, in a technician's words (`12 s ago`).
pub fn ago(at: u64, now: u64) -> String {
    let secs = now.saturating_sub(at);
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86400 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86400),
    }
}

/// One machine as the pages show it: every field a word, `-` for what is not known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineRow {
    /// What the operator names it by: its id once registered, else its boot MAC.
    pub name: String,
    pub mac: String,
    pub state: String,
    pub role: String,
    pub power: String,
    pub bmc: String,
    pub address: String,
    pub inventory: String,
    pub heartbeat: String,
    pub generation: String,
    /// Its agent's last error, if it said one.
    pub last_error: Option<String>,
}

impl MachineRow {
    /// What is known of the machine, as the machines table's columns after its name and the
    /// facts on its own page: `(data-field, label, value)`.
    fn cells(&self) -> [(&'static str, &'static str, &str); 9] {
        [
            ("mac", "Boot MAC", &self.mac),
            ("state", "State", &self.state),
            ("role", "Role", &self.role),
            ("power", "Power", &self.power),
            ("address", "Address", &self.address),
            ("inventory", "Inventory", &self.inventory),
            ("heartbeat", "Last heard", &self.heartbeat),
            ("generation", "Generation", &self.generation),
            ("bmc", "BMC", &self.bmc),
        ]
    }

    pub fn of(entry: &MachineEntry, status: Option<&ClusterStatus>, now: u64) -> MachineRow {
        let dash = || "-".to_string();
        let registration = entry.registration.as_ref();
        let record = registration.map(|r| &r.record);
        let heartbeat = registration.and_then(|r| r.last_heartbeat.as_ref());
        let role = record
            .and_then(|r| status?.machines.iter().find(|m| m.id == r.id))
            .map_or_else(dash, |m| m.role.replace("control-plane", "control"));
        MachineRow {
            name: record.map_or_else(|| entry.netboot.mac.to_string(), |r| r.id.clone()),
            mac: entry.netboot.mac.to_string(),
            state: state_words(entry).into(),
            role,
            power: entry.power.as_ref().map_or_else(dash, |p| p.word()),
            bmc: entry.bmc.clone().unwrap_or_else(dash),
            address: entry.netboot.last_ip.map_or_else(dash, |ip| ip.to_string()),
            inventory: record.map_or_else(dash, |r| {
                let inv = &r.inventory;
                let memory = inv.memory_bytes as f64 / f64::from(1u32 << 30);
                format!("{} CPUs, {memory:.1} GiB, {} disks", inv.cpus, inv.disks.len())
            }),
            heartbeat: heartbeat.map_or_else(dash, |h| ago(h.at, now)),
            generation: heartbeat.and_then(|h| h.heartbeat.generation).map_or_else(dash, |g| g.to_string()),
            last_error: heartbeat.and_then(|h| h.heartbeat.last_error.clone()),
        }
    }
}

/// Every machine, a row each, linked to its page.
pub fn machines(csrf: &str, rows: &[MachineRow]) -> Markup {
    layout(
        "Machines",
        Some(csrf),
        live(
            "machine-list",
            html! {
                h1 { "Machines" }
                @if rows.is_empty() {
                    p { "No machine has booted from the network yet." }
                } @else {
                    div class="scroll" {
                        table id="machines" {
                            @let labels = rows[0].cells().map(|(_, label, _)| label);
                            (head(&[&["Machine"][..], &labels].concat()))
                            tbody {
                                @for row in rows {
                                    tr data-mac=(row.mac) {
                                    th scope="row" { a href={ "/machines/" (row.name) } { (row.name) } }
                                    @for (field, label, value) in row.cells() {
                                        td data-field=(field) data-label=(label) { (value) }
                                    }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    )
}

/// What can be done to a machine from its page: `(action, button words, what it does)`.
pub const MACHINE_ACTIONS: &[(&str, &str, &str)] = &[
    ("accept", "Accept", "let it join the rack"),
    ("reject", "Reject", "keep it out of the rack"),
    ("remove", "Forget", "forget it; it registers as new when it boots again"),
    ("power-on", "Power on", "switch it on through its BMC"),
    ("power-off", "Power off", "switch it off; oasis then leaves it off"),
    ("power-cycle", "Power cycle", "switch it off and on again"),
    ("reprovision", "Reprovision", "take it out of the cluster, wipe its data disk and boot it fresh as a spare"),
];

/// One machine: what is known of it, its events, and a button per action (each confirmed on
/// a page of its own before anything is done).
pub fn machine(
    csrf: &str,
    row: &MachineRow,
    events: &[oasis_core::records::Event],
    notice: Option<&str>,
    now: u64,
) -> Markup {
    layout(
        &row.name,
        Some(csrf),
        live(
            "machine",
            html! {
                h1 { "Machine " (row.name) }
                @if let Some(notice) = notice {
                    p class="notice" role="status" { (notice) }
                }
                section aria-labelledby="facts" {
                    h2 id="facts" { "What oasis knows" }
                    dl {
                        @for (field, label, value) in row.cells() {
                            dt { (label) } dd data-field=(field) { (value) }
                        }
                        dt { "Last error" } dd { (row.last_error.as_deref().unwrap_or("none")) }
                    }
                }
                section aria-labelledby="actions" {
                    h2 id="actions" { "Actions" }
                    p class="hint" { "Each asks you to confirm first." }
                    div class="actions" {
                        @for (action, words, _) in MACHINE_ACTIONS {
                            a class="button" href={ "/machines/" (row.name) "/confirm/" (action) } { (words) }
                        }
                    }
                }
                section aria-labelledby="events" {
                    h2 id="events" { "Events" }
                    @if events.is_empty() {
                        p { "None yet." }
                    } @else {
                        (event_list(events, now))
                    }
                }
            },
        ),
    )
}

/// What a confirmation page asks, and where its one button sends the answer.
#[derive(Debug)]
pub struct Confirmation<'a> {
    /// `Power off m3?`
    pub question: String,
    /// What it does, in a few words (`switch it off; oasis then leaves it off`).
    pub what: &'a str,
    /// The button's words (`Power off`).
    pub words: &'a str,
    /// Where the form posts, with its one field besides the form token.
    pub post_to: String,
    pub field: (&'a str, &'a str),
    /// Where "Cancel" goes.
    pub back: String,
}

/// The page that asks before an action is done: the one button that does it, and a way back.
pub fn confirm(csrf: &str, c: &Confirmation<'_>) -> Markup {
    layout(
        c.words,
        Some(csrf),
        html! {
            h1 { (c.question) }
            p { "This will " (c.what) "." }
            form method="post" action=(c.post_to) class="confirm" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name=(c.field.0) value=(c.field.1);
                button type="submit" autofocus { "Yes, " (c.words.to_lowercase()) }
                " "
                a href=(c.back) { "Cancel" }
            }
        },
    )
}

/// The cluster: its health, its members (etcd's, in plain words) and the mesh between the
/// machines as a matrix of handshake ages.
pub fn cluster(csrf: &str, status: Option<&ClusterStatus>) -> Markup {
    layout(
        "Cluster",
        Some(csrf),
        live(
            "cluster",
            html! {
                h1 { "Cluster" }
                @match status {
                    None => p { "The cluster is not managed by this appliance." },
                    Some(status) => {
                        p class={ "health " (health_class(status.health)) } { (health_words(status.health)) }
                        @if !status.progress.is_empty() { p { "Now: " (status.progress) } }
                        section aria-labelledby="members" {
                            h2 id="members" { "Members of the cluster's store" }
                            @if status.members.is_empty() {
                                p { "None yet: the store starts once the control machines are chosen." }
                            } @else {
                                div class="scroll" {
                                    table id="members" {
                                        (head(&["Machine", "Member", "Votes", "Leads", "Answers", "Version"]))
                                        tbody {
                                            @for m in &status.members {
                                                tr {
                                                    th scope="row" { (m.machine.as_deref().unwrap_or("-")) }
                                                    td { (m.id) }
                                                    td { @if m.learner { "not yet (catching up)" } @else { "yes" } }
                                                    td { @if m.leader { "yes" } @else { "no" } }
                                                    td { @if m.healthy { "yes" } @else { "no" } }
                                                    td { (m.version.as_deref().unwrap_or("-")) }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        section aria-labelledby="mesh" {
                            h2 id="mesh" { "Links between machines" }
                            p class="hint" { "How long ago each machine (row) last heard from each other one (column) over the encrypted mesh." }
                            (mesh_matrix(status))
                        }
                    }
                }
            },
        ),
    )
}

/// The mesh as a matrix: a row per machine that reports, a column per machine it reaches.
fn mesh_matrix(status: &ClusterStatus) -> Markup {
    let mut ends: Vec<&str> = status.mesh.iter().flat_map(|p| [p.from.as_str(), p.to.as_str()]).collect();
    ends.sort_unstable();
    ends.dedup();
    let age = |from: &str, to: &str| {
        status.mesh.iter().find(|p| p.from == from && p.to == to).map(|p| match p.handshake_age_secs {
            Some(secs) => format!("{secs} s"),
            None => "never".to_string(),
        })
    };
    html! {
        @if ends.is_empty() {
            p { "No machine has reported its links yet." }
        } @else {
            div class="scroll" {
                table id="mesh" {
                    thead { tr { td {} @for to in &ends { th scope="col" { (to) } } } }
                    tbody {
                        @for from in &ends {
                            tr {
                                th scope="row" { (from) }
                                @for to in &ends {
                                    td { @if from == to { "" } @else { (age(from, to).unwrap_or_else(|| "-".into())) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The newest events, newest first, those matching `filter` (in their kind or words) only.
pub fn events(csrf: &str, events: &[oasis_core::records::Event], filter: &str, now: u64) -> Markup {
    layout(
        "Events",
        Some(csrf),
        html! {
            h1 { "Events" }
            form method="get" action="/events" class="filter" {
                label for="q" { "Show only events with" }
                input id="q" name="q" type="search" value=(filter);
                button type="submit" { "Filter" }
            }
            (live("event-list", html! {
                @if events.is_empty() {
                    p { "No event matches." }
                } @else {
                    (event_list(events, now))
                }
            }))
        },
    )
}

/// What each rollout command does, for its confirmation: `(command, button words, what it does)`.
pub const ROLLOUT_COMMANDS: &[(&str, &str, &str)] = &[
    ("pause", "Pause", "let the machine being moved finish, then move no other until resumed"),
    ("resume", "Resume", "move the remaining machines again, one at a time"),
    ("cancel", "Cancel", "stop the upgrade and move the machines already moved back, one at a time"),
];

/// Where a machine in flight is, in words.
fn phase_words(phase: oasis_core::rollout::Phase) -> &'static str {
    match phase {
        oasis_core::rollout::Phase::MovingLeader => "handing its lead to another machine",
        oasis_core::rollout::Phase::Rebooting => "restarting into its new generation",
        oasis_core::rollout::Phase::Checking => "back; its checks are running",
    }
}

/// Updates: the generations installed, the rollout machine by machine, what holds it and why,
/// and its commands (each confirmed on a page of its own).
pub fn updates(csrf: &str, update: &crate::generations::UpdateStatus, notice: Option<&str>, now: u64) -> Markup {
    layout(
        "Updates",
        Some(csrf),
        html! {
            h1 { "Updates" }
            @if let Some(notice) = notice {
                p class="notice" role="status" { (notice) }
            }
            section aria-labelledby="rollout" id="rollout-section" data-live {
                h2 id="rollout" { "Upgrade of the machines" }
                @match &update.rollout {
                    None => {
                        p { "No upgrade has run. Installing a newer bundle (below, or oasis update apply) starts one." }
                        @if !update.progress.is_empty() { p { "Now: " (update.progress) } }
                    }
                    Some(rollout) => {
                        p id="rollout-state" { "Generation " (rollout.from) " to " (rollout.target) ": " strong { (rollout.state) } }
                        @if !update.progress.is_empty() { p { "Now: " (update.progress) } }
                        @if let Some(failure) = &rollout.failure {
                            p class="notice" {
                                (failure.machine) " failed the check '" (failure.gate) "': " (failure.detail)
                                @if let Some(error) = &failure.last_error { " (its last error: " (error) ")" }
                                @if failure.back { "; it is back on the generation it came from." }
                                @else if failure.back_failed { "; going back failed too: look at the machine." }
                                @else { "; it is going back." }
                            }
                        }
                        p { (rollout.done.len()) " machines done, started " (ago(rollout.started_at, now)) "." }
                        @if !rollout.in_flight.is_empty() {
                            ul id="in-flight" {
                                @for f in &rollout.in_flight {
                                    li { (f.machine) " to generation " (f.to) ": " (phase_words(f.phase)) ", since " (ago(f.since, now)) }
                                }
                            }
                        }
                        div class="actions" {
                            @for (command, words, _) in ROLLOUT_COMMANDS {
                                a class="button" href={ "/updates/confirm/" (command) } { (words) }
                            }
                        }
                    }
                }
            }
            section aria-labelledby="upload" {
                h2 id="upload" { "Install a bundle" }
                form method="post" action="/updates/upload" enctype="multipart/form-data" class="upload" {
                    // Before the file: the server checks it before reading the bundle.
                    input type="hidden" name="csrf" value=(csrf);
                    label for="bundle" { "Update bundle" }
                    input id="bundle" name="bundle" type="file" accept=".bundle" required;
                    button type="submit" { "Upload and check" }
                }
                p class="hint" {
                    "The bundle's signature and every file in it are checked before anything is installed; a bundle \
                     that fails the checks changes nothing. A newer generation is then rolled out to the machines \
                     one at a time."
                }
            }
            section aria-labelledby="generations" id="generations-section" data-live {
                h2 id="generations" { "Generations installed" }
                div class="scroll" {
                    table id="generations" {
                        (head(&["Generation", "Version", "State", "Kernel", "Store", "Installed"]))
                        tbody {
                            @for g in &update.generations {
                                tr {
                                    th scope="row" { (g.sequence) @if g.sequence == update.current { " (current)" } }
                                    td { (g.version) } td { (g.state) }
                                    td { (g.kernel.as_deref().unwrap_or("-")) } td { (g.etcd.as_deref().unwrap_or("-")) }
                                    td { (g.installed_at.map_or_else(|| "-".to_string(), |at| ago(at, now))) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// What can be downloaded: `(file, what it is)`; the kubeconfig only when the cluster has one.
pub const DOWNLOADS: &[(&str, &str)] = &[
    ("inventory.txt", "The machines: id, serial, network cards, CPUs, memory, disks, state, role and power, a line each (as the USB stick's report has it)."),
    ("cluster-status.txt", "The cluster's health, its members and what it waits for (as `oasis cluster status` says it)."),
    ("kubeconfig", "Access to the Kubernetes cluster as its administrator: keep it as safe as the admin token."),
];

/// The downloads: the rack's report files, and the kubeconfig when there is one.
pub fn downloads(csrf: &str, kubeconfig: bool, cluster: bool) -> Markup {
    layout(
        "Downloads",
        Some(csrf),
        html! {
            h1 { "Downloads" }
            section aria-labelledby="files" {
                h2 id="files" { "The rack's report" }
                ul class="downloads" {
                    @for (file, what) in DOWNLOADS {
                        li {
                            @if (*file == "kubeconfig" && !kubeconfig) || (*file == "cluster-status.txt" && !cluster) {
                                strong { (file) } ": not here yet. "
                                @if *file == "kubeconfig" { "There is one once the cluster runs Kubernetes (a k3s bundle)." }
                                @else { "The cluster is not managed by this appliance." }
                            } @else {
                                a href={ "/downloads/" (file) } download=(file) { (file) } ": " (what)
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Events, a line each: how long ago, the kind, the words.
fn event_list(events: &[oasis_core::records::Event], now: u64) -> Markup {
    html! {
        ul class="events" {
            @for e in events {
                li { span class="age" { (ago(e.at, now)) } " " span class="kind" { (e.kind) } " " (e.message) }
            }
        }
    }
}

/// A part of a page that is kept current while the page is open (`live.js` replaces it with
/// the same part of the page fetched again after the appliance says something changed).
fn live(id: &str, body: Markup) -> Markup {
    html! { div id=(id) data-live { (body) } }
}

/// A table's head: a column header each.
fn head(columns: &[&str]) -> Markup {
    html! { thead { tr { @for column in columns { th scope="col" { (column) } } } } }
}

/// The stylesheet, compiled in.
pub const STYLESHEET: &str = include_str!("oasis.css");

/// The script that keeps a page current (the only script of the page), compiled in.
pub const LIVE_SCRIPT: &str = include_str!("live.js");
