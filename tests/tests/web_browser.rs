//! The web page in a real browser (issue 18): Debian's chromium, driven through chromedriver,
//! against a real `oasis serve` in a namespace with three machines registered and waiting to be
//! accepted. A technician logs in (a wrong token first), sees the machines, watches a row change
//! without a reload when a machine is accepted elsewhere, accepts another from its page, sees an
//! event arrive live, finds that no upgrade can be paused when none runs, and logs out; a change
//! without the form token is refused; and every request the pages made went to the appliance.
//! Each page's screenshot is written to `docs/ui/` (kept in the repository, shown in the README).

use std::path::PathBuf;

use fantoccini::Locator;
use oasis_e2e::appliance::{self, Appliance};
use oasis_e2e::browser::{self, Browser, Driver};
use oasis_e2e::{bundles, node_image, oasis, workspace_root, Netns};

/// Three machines waiting to be accepted: A is accepted from the CLI while the page is open, B
/// from its own page, C is rejected from the CLI while the events page is open.
const MACS: [&str; 3] = ["52:54:00:0e:00:71", "52:54:00:0e:00:72", "52:54:00:0e:00:73"];

#[test]
fn a_technician_logs_in_follows_the_machines_live_acts_on_one_and_logs_out() {
    browser::check_installed();
    let ns = Netns::create("oasis-ui").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A signed bundle of the node image to upload from the updates page, and a copy with one
    // byte changed.
    let (private, public) = bundles::keygen(dir.path());
    let bundle = dir.path().join("node-1.bundle");
    bundles::build(&node_image().unwrap_or_else(|e| panic!("{e}")), 1, &private, &bundle);
    let tampered = dir.path().join("tampered.bundle");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&tampered, bytes).unwrap();
    let extra = format!("[registration]\npolicy = \"manual\"\n\n[update]\ntrusted_keys = [\"{}\"]\n", public.display());
    let config = appliance::write_config(dir.path(), "mode = \"off\"", &appliance::node_boot_root(dir.path()), &extra);
    let args = appliance::join_args(&config);
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));
    for (i, mac) in MACS.iter().enumerate() {
        let uuid = format!("4c4c4544-0000-0000-0000-0000000e007{}", i + 1);
        let request = appliance::register_request(&args.token, &uuid, mac, 10 + i as u8, 1);
        appliance::register(&ns, &args.pin, request).expect("registered");
    }
    let visit = Visit {
        token: std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap().trim().to_string(),
        data_dir: app.data_dir.clone(),
        shots: workspace_root().join("docs/ui"),
        bundle,
        tampered,
    };
    let driver = Driver::start(&ns, &dir.path().join("chromedriver.log"));
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(visit.walk(&driver));
    });
    drop(app);
}

/// What the browser's walk needs: the admin token, the store (for the CLI), where shots go, the
/// bundles to upload.
struct Visit {
    token: String,
    data_dir: PathBuf,
    shots: PathBuf,
    bundle: PathBuf,
    tampered: PathBuf,
}

/// The appliance's HTTPS port (`oasis_proto::API_PORT`, checked at the start of the walk).
const BASE: &str = "https://10.0.0.1:9443";

impl Visit {
    /// `oasis ARGS --data-dir` against the running appliance, as an operator at its console.
    fn cli(&self, args: &[&str]) -> String {
        let mut all = args.to_vec();
        all.extend(["--data-dir", self.data_dir.to_str().unwrap()]);
        let out = oasis(&all);
        assert!(out.status.success(), "oasis {all:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn shot(&self, name: &str) -> PathBuf {
        self.shots.join(format!("{name}.png"))
    }

    async fn walk(&self, driver: &Driver) {
        assert_eq!(BASE, format!("https://10.0.0.1:{}", oasis_proto::API_PORT));
        let b = Browser::open(driver, "laptop", 1280, 860).await;
        self.log_in(&b).await;
        self.follow_the_machines(&b).await;
        self.act_from_a_machine_page(&b).await;
        self.follow_the_events(&b).await;
        self.look_at_cluster_and_updates(&b).await;
        self.install_a_bundle(&b).await;
        self.look_at_downloads(&b).await;
        self.forged_changes_are_refused(&b).await;
        self.the_page_agrees_with_the_cli(&b).await;
        self.log_out(&b).await;

        // What went over the network (chromium's own pages, chrome://, load from inside it).
        let requested: Vec<String> = b
            .requested()
            .await
            .into_iter()
            .filter(|url| ["http:", "https:", "ws:", "wss:", "ftp:"].iter().any(|s| url.starts_with(s)))
            .collect();
        let ours = requested.iter().filter(|url| url.starts_with(&format!("{BASE}/"))).count();
        let elsewhere: Vec<&String> = requested.iter().filter(|url| !url.starts_with(&format!("{BASE}/"))).collect();
        assert!(elsewhere.is_empty(), "the pages asked for something off the appliance: {elsewhere:?}");
        for part in ["/assets/oasis.css", "/assets/live.js", "/live"] {
            assert!(requested.iter().any(|url| url.ends_with(part)), "no request for {part} in the log: {requested:?}");
        }
        eprintln!("{ours} requests, all to the appliance");
        let complaints: Vec<String> =
            b.console().await.into_iter().filter(|m| !m.contains("the server responded with a status of")).collect();
        assert!(complaints.is_empty(), "the browser's console: {complaints:?}");
        b.client.close().await.unwrap();

        let phone = Browser::open(driver, "phone", 390, 844).await;
        self.on_a_phone(&phone).await;
        phone.client.close().await.unwrap();
    }

    /// A wrong token is refused on the login page; the admin token opens the overview.
    async fn log_in(&self, b: &Browser) {
        b.goto(&format!("{BASE}/")).await;
        assert!(b.url().await.ends_with("/login"), "{}", b.url().await);
        b.screenshot(&self.shot("login")).await;
        submit_token(b, "not-the-token").await;
        let notice = b.wait_text(".notice", |t| !t.is_empty()).await;
        assert!(notice.contains("not the admin token"), "{notice}");
        submit_token(b, &self.token).await;
        b.wait_text("h1", |t| t == "Overview").await;
        let counts = b.wait_text("dl.counts", |t| t.contains("waiting to be accepted")).await;
        assert!(counts.contains('3'), "{counts}");
        // The certificate's fingerprint the console shows (from the file serve writes for it).
        let console = std::fs::read_to_string(self.data_dir.join("web-certificate-sha256")).unwrap();
        let shown = b.wait_text("dd.fingerprint", |t| !t.is_empty()).await;
        assert_eq!(shown, console.trim());
        b.screenshot(&self.shot("overview")).await;
    }

    /// The machines page shows each machine; one accepted from the CLI changes its row while
    /// the page stays open (no reload: a mark set on the window survives).
    async fn follow_the_machines(&self, b: &Browser) {
        b.goto(&format!("{BASE}/machines")).await;
        let state = |mac: &str| format!("tr[data-mac=\"{mac}\"] td[data-field=\"state\"]");
        for mac in MACS {
            b.wait_text(&state(mac), |t| t == "waiting to be accepted").await;
        }
        b.run("window.oasisMark = 'still this page'; return null;").await;
        self.cli(&["machine", "accept", MACS[0]]);
        b.wait_text(&state(MACS[0]), |t| t == "accepted").await;
        let mark = b.run("return window.oasisMark || null;").await;
        assert_eq!(mark, "still this page", "the row changed by a reload, not live");
        b.screenshot(&self.shot("machines")).await;
    }

    /// B accepted from its page with the keyboard alone: its link, the action, the
    /// confirmation, the page saying so.
    async fn act_from_a_machine_page(&self, b: &Browser) {
        let link = format!("tr[data-mac=\"{}\"] th a", MACS[1]);
        b.client.find(Locator::Css(&link)).await.unwrap().click().await.unwrap();
        b.wait_text("h1", |t| t.starts_with("Machine ")).await;
        b.screenshot(&self.shot("machine")).await;
        // With the keyboard alone: Tab to the action, Enter; the confirmation's button has the
        // focus, Enter again.
        b.tab_to_and_enter("Accept").await;
        b.wait_text("h1", |t| t.starts_with("Accept ")).await;
        b.screenshot(&self.shot("confirm")).await;
        b.tab_to_and_enter("Yes, accept").await;
        let notice = b.wait_text(".notice", |t| !t.is_empty()).await;
        assert!(notice.starts_with("Accepted"), "{notice}");
        b.wait_text("dd[data-field=\"state\"]", |t| t == "accepted").await;
    }

    /// The events page shows an event written after it opened (C rejected from the CLI).
    async fn follow_the_events(&self, b: &Browser) {
        b.goto(&format!("{BASE}/events")).await;
        b.wait_text("ul.events", |t| t.contains("machine-accepted")).await;
        b.run("window.oasisMark = 'still this page'; return null;").await;
        self.cli(&["machine", "reject", MACS[2]]);
        b.wait_text("ul.events li", |t| t.contains("machine-rejected")).await;
        assert_eq!(b.run("return window.oasisMark || null;").await, "still this page");
        b.screenshot(&self.shot("events")).await;
        // The filter keeps what matches only.
        let form = b.client.form(Locator::Css("form.filter")).await.unwrap();
        form.set_by_name("q", "rejected").await.unwrap().submit().await.unwrap();
        let shown = b.wait_text("ul.events", |t| !t.contains("machine-accepted")).await;
        assert!(shown.contains("machine-rejected"), "{shown}");
    }

    /// The cluster page, and the updates page: with no upgrade running, pausing one is refused
    /// in words, and nothing is done.
    async fn look_at_cluster_and_updates(&self, b: &Browser) {
        b.goto(&format!("{BASE}/cluster")).await;
        b.wait_text("h1", |t| t == "Cluster").await;
        b.screenshot(&self.shot("cluster")).await;
        b.goto(&format!("{BASE}/updates")).await;
        let section = b.wait_text("#rollout-section", |t| !t.is_empty()).await;
        assert!(section.contains("No upgrade has run"), "{section}");
        b.screenshot(&self.shot("updates")).await;
        b.goto(&format!("{BASE}/updates/confirm/pause")).await;
        b.client.find(Locator::Css("form.confirm button")).await.unwrap().click().await.unwrap();
        let notice = b.wait_text(".notice", |t| !t.is_empty()).await;
        assert!(notice.starts_with("Not done:"), "{notice}");
    }

    /// A bundle uploaded from the updates page: a tampered one is refused and changes nothing,
    /// the signed one is installed as generation 1 (as `oasis update status` then says).
    async fn install_a_bundle(&self, b: &Browser) {
        let upload = |file: PathBuf| async move {
            b.goto(&format!("{BASE}/updates")).await;
            let field = b.client.wait().for_element(Locator::Id("bundle")).await.unwrap();
            field.send_keys(file.to_str().unwrap()).await.unwrap();
            b.client.find(Locator::Css("form.upload button")).await.unwrap().click().await.unwrap();
            b.wait_text(".notice", |t| !t.is_empty()).await
        };
        let refused = upload(self.tampered.clone()).await;
        assert!(refused.starts_with("Not installed:"), "{refused}");
        let installed = upload(self.bundle.clone()).await;
        assert!(installed.starts_with("Installed as generation 1"), "{installed}");
        b.screenshot(&self.shot("updates-installed")).await;
        let status = self.cli(&["update", "status"]);
        assert!(status.contains("0.15.1"), "{status}");
    }

    /// The downloads: the machines as the USB report lists them; no kubeconfig without
    /// Kubernetes. A file is fetched by the page itself (its session), as the link would.
    async fn look_at_downloads(&self, b: &Browser) {
        b.goto(&format!("{BASE}/downloads")).await;
        let list = b.wait_text("ul.downloads", |t| !t.is_empty()).await;
        assert!(list.contains("kubeconfig: not here yet"), "{list}");
        b.screenshot(&self.shot("downloads")).await;
        let fetch =
            "fetch('/downloads/inventory.txt').then(r => r.text()).then(arguments[0], e => arguments[0](String(e)));";
        let inventory = b.run_async(fetch).await;
        let inventory = inventory.as_str().unwrap_or_default();
        for mac in MACS {
            assert!(inventory.contains(mac), "{mac} in {inventory}");
        }
        assert!(inventory.starts_with("ID "), "{inventory}");
    }

    /// Changes without the session's form token, sent from the page itself (so the cookie
    /// goes with them), are refused and do nothing.
    async fn forged_changes_are_refused(&self, b: &Browser) {
        let post = |body: &str| {
            format!(
                "fetch('/machines/{}/act', {{method: 'POST', body: new URLSearchParams({body})}})\
                 .then(r => arguments[0](r.status), e => arguments[0](String(e)));",
                MACS[2]
            )
        };
        assert_eq!(b.run_async(&post("{action: 'accept'}")).await, 403);
        assert_eq!(b.run_async(&post("{action: 'accept', csrf: 'guessed'}")).await, 403);
        b.goto(&format!("{BASE}/machines/{}", MACS[2])).await;
        b.wait_text("dd[data-field=\"state\"]", |t| t == "rejected").await;
    }

    /// Each machine's row says what `oasis machines --json` says of it.
    async fn the_page_agrees_with_the_cli(&self, b: &Browser) {
        b.goto(&format!("{BASE}/machines")).await;
        b.wait_text("h1", |t| t == "Machines").await;
        let rows = b
            .run(
                "return [...document.querySelectorAll('#machines tbody tr')].map(tr => Object.fromEntries(\
                 [['name', tr.querySelector('th').textContent]].concat(\
                 [...tr.querySelectorAll('td')].map(td => [td.dataset.field, td.textContent]))));",
            )
            .await;
        let listed: serde_json::Value = serde_json::from_str(&self.cli(&["machines", "--json"])).unwrap();
        let listed = listed.as_array().unwrap();
        assert_eq!(rows.as_array().map(Vec::len), Some(listed.len()), "{rows}");
        for machine in listed {
            let mac = machine["mac"].as_str().unwrap();
            let row = rows.as_array().unwrap().iter().find(|r| r["mac"] == mac).unwrap_or_else(|| panic!("{mac}"));
            let registration = &machine["registration"];
            assert_eq!(row["name"], registration["id"], "{row} / {machine}");
            let state = match registration["state"].as_str().unwrap() {
                "pending" => "waiting to be accepted",
                other => other,
            };
            assert_eq!(row["state"], state, "{row} / {machine}");
            let inventory = &registration["inventory"];
            let memory = inventory["memory_bytes"].as_f64().unwrap() / f64::from(1u32 << 30);
            let cpus = &inventory["cpus"];
            let words = format!("{cpus} CPUs, {memory:.1} GiB, {} disks", inventory["disks"].as_array().unwrap().len());
            assert_eq!(row["inventory"], words.as_str(), "{row} / {machine}");
            // No BMC in this rack: nothing is known of their power.
            assert!(machine["power"].is_null(), "{machine}");
            assert_eq!(row["power"], "-", "{row} / {machine}");
        }
    }

    /// Log out: the login page, and the overview is behind it again.
    async fn log_out(&self, b: &Browser) {
        b.client.find(Locator::Css("form.logout button")).await.unwrap().click().await.unwrap();
        b.wait_text("h1", |t| t == "Log in").await;
        b.goto(&format!("{BASE}/")).await;
        b.wait_text("h1", |t| t == "Log in").await;
    }

    /// At a phone's width the page itself does not scroll sideways (wide tables scroll in their
    /// own box), and the navigation is all there.
    async fn on_a_phone(&self, b: &Browser) {
        b.goto(&format!("{BASE}/login")).await;
        submit_token(b, &self.token).await;
        b.wait_text("h1", |t| t == "Overview").await;
        for page in ["/", "/machines", "/events"] {
            b.goto(&format!("{BASE}{page}")).await;
            b.wait_text("h1", |t| !t.is_empty()).await;
            let overflow = b.run("return document.documentElement.scrollWidth - window.innerWidth;").await;
            assert!(overflow.as_i64().unwrap_or(1) <= 0, "{page} is wider than a phone by {overflow} px");
        }
        b.goto(&format!("{BASE}/machines")).await;
        b.wait_text("h1", |t| t == "Machines").await;
        b.screenshot(&self.shot("phone-machines")).await;
    }
}

/// Types `token` into the login form and sends it.
async fn submit_token(b: &Browser, token: &str) {
    let field = b.client.wait().for_element(Locator::Id("token")).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    b.client.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
}
