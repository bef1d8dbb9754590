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
            }
            body {
                header {
                    nav aria-label="pages" {
                        a href="/" class="brand" { "oasis" }
                        @if csrf.is_some() {
                            a href="/" { "Overview" }
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

/// Machines by what they are to oasis: registered ones by their state, the rest as "booted".
fn machine_counts(machines: &[MachineEntry]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for entry in machines {
        let word = match entry.registration.as_ref().map(|r| r.record.state) {
            Some(oasis_proto::MachineState::Accepted) => "accepted",
            Some(oasis_proto::MachineState::Pending) => "waiting to be accepted",
            Some(oasis_proto::MachineState::Rejected) => "rejected",
            None => "booted, not registered",
        };
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// The stylesheet, compiled in.
pub const STYLESHEET: &str = include_str!("oasis.css");
