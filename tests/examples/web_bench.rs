//! The web page's figures, for `scripts/bench-web`: a real `oasis serve` in a namespace with
//! COUNT registered machines (simulated registrations, accepted), and Debian's chromium through
//! chromedriver:
//!
//! 1. the overview and the machines page, each loaded afresh 5 times: first contentful paint,
//!    time to interactive (painted, and the load event passed: the page's one script is deferred
//!    and runs before it), and the page's weight (HTML, stylesheet and script as sent);
//! 2. the server's CPU while a new machine registers every half second (a store commit and an
//!    event each) for SECONDS, first with no page open, then with 10 browsers (10 people) on the
//!    machines page following the changes live: the difference is what the open pages cost.
//!
//! ```text
//! web_bench [COUNT] [SECONDS]        (default 500 machines, 30 s per CPU run)
//! ```

use std::time::{Duration, Instant};

use fantoccini::Locator;
use oasis_e2e::appliance::{self, Appliance};
use oasis_e2e::browser::{Browser, Driver};
use oasis_e2e::Netns;
use serde_json::Value;

const BASE: &str = "https://10.0.0.1:9443";
const PAGES_FOLLOWING: usize = 10;

fn main() {
    let args: Vec<u32> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let count = args.first().copied().unwrap_or(500);
    let seconds = args.get(1).copied().unwrap_or(30);
    assert_eq!(BASE, format!("https://10.0.0.1:{}", oasis_proto::API_PORT));
    let ns = Netns::create("oasis-bench-web").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let profile = "[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\n";
    let config = appliance::write_config(dir.path(), "mode = \"off\"", &appliance::boot_root(dir.path()), profile);
    let args = appliance::join_args(&config);
    let app = Appliance::start_logging(&ns, &config, &dir.path().join("serve.log"), "info");
    let pid = app.pid().expect("serve runs");
    let token = std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap().trim().to_string();
    let driver = Driver::start(&ns, &dir.path().join("chromedriver.log"));
    ns.run_inside(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let started = Instant::now();
            let registrar = Registrar { pin: args.pin, token: args.token };
            registrar.register_all(0..count).await;
            println!("== {count} machines registered in {:.1} s", started.elapsed().as_secs_f64());
            let browser = Browser::open(&driver, "bench", 1280, 860).await;
            log_in(&browser, &token).await;
            println!("== 1. a page loaded afresh, 5 times (median): first paint, interactive, weight");
            for page in ["/", "/machines"] {
                load_figures(&browser, page).await;
            }
            println!("== 2. serve's CPU over {seconds} s, a machine registering every 0.5 s");
            let alone = cpu_while_registering(&registrar, pid, count, seconds).await;
            println!("   no page open:            {alone:.2} s of CPU");
            browser.client.close().await.unwrap();
            let followers = open_following(&driver, &token).await;
            let before = refreshed(&followers).await;
            let open = cpu_while_registering(&registrar, pid, count + 1000, seconds).await;
            let after = refreshed(&followers).await;
            for follower in followers {
                follower.client.close().await.unwrap();
            }
            let kept_up = before.iter().zip(&after).filter(|(b, a)| a > b).count();
            println!("   {PAGES_FOLLOWING} machines pages open: {open:.2} s of CPU ({kept_up} of them refreshed live)");
            println!(
                "   the open pages cost {:.1} % of one core ({:.2} % per page)",
                (open - alone) / f64::from(seconds) * 100.0,
                (open - alone) / f64::from(seconds) * 100.0 / PAGES_FOLLOWING as f64
            );
        });
    });
    drop(app);
}

/// Registers simulated machines with the appliance's join token.
struct Registrar {
    pin: String,
    token: String,
}

impl Registrar {
    async fn register_all(&self, machines: std::ops::Range<u32>) {
        let client = std::sync::Arc::new(oasis_agent::client::ApiClient::new(BASE, &self.pin).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for i in machines {
            let (client, request) = (client.clone(), appliance::simulated_request(&self.token, i, 0));
            tasks.spawn(async move { client.register(&request).await.map(|_| ()) });
            // A few dozen in flight: the API's per-source cap is 32 connections.
            while tasks.len() >= 24 {
                tasks.join_next().await.unwrap().unwrap().expect("registered");
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().expect("registered");
        }
    }
}

async fn log_in(b: &Browser, token: &str) {
    b.goto(&format!("{BASE}/login")).await;
    let field = b.client.wait().for_element(Locator::Id("token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    b.client.find(Locator::Css("form.login button")).await.unwrap().click().await.unwrap();
    b.wait_text("h1", |t| t == "Overview").await;
}

/// Loads `page` 5 times and prints the medians of its first paint, its time to interactive and
/// its weight.
async fn load_figures(b: &Browser, page: &str) {
    let mut paint = vec![];
    let mut interactive = vec![];
    let mut weight = 0.0;
    for _ in 0..5 {
        b.goto(&format!("{BASE}{page}")).await;
        b.wait_text("h1", |t| !t.is_empty()).await;
        let figures: Value = b
            .run_async(
                "const done = arguments[0]; const look = () => { \
                 const nav = performance.getEntriesByType('navigation')[0]; \
                 const fcp = performance.getEntriesByName('first-contentful-paint')[0]; \
                 if (!nav || nav.loadEventEnd === 0 || !fcp) { return setTimeout(look, 50); } \
                 const bytes = [nav].concat(performance.getEntriesByType('resource')) \
                   .reduce((sum, e) => sum + e.encodedBodySize, 0); \
                 done({ paint: fcp.startTime, interactive: nav.loadEventEnd, bytes }); }; look();",
            )
            .await;
        let first_paint = figures["paint"].as_f64().unwrap();
        paint.push(first_paint);
        // Usable once it is painted and its script has run (the load event comes after it).
        interactive.push(figures["interactive"].as_f64().unwrap().max(first_paint));
        weight = figures["bytes"].as_f64().unwrap();
    }
    println!(
        "   {page:<10} first paint {:.0} ms, interactive {:.0} ms, {:.1} KiB (HTML, stylesheet, script)",
        median(&mut paint),
        median(&mut interactive),
        weight / 1024.0
    );
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds of CPU `pid` used (user and system) so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // After the command name in parentheses: fields 14 and 15 (utime, stime) of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / per_second
}

/// serve's CPU while a new machine (numbered from `first`) registers every half second.
async fn cpu_while_registering(registrar: &Registrar, pid: u32, first: u32, seconds: u32) -> f64 {
    let before = cpu_seconds(pid);
    let end = Instant::now() + Duration::from_secs(u64::from(seconds));
    let mut i = first;
    while Instant::now() < end {
        registrar.register_all(i..i + 1).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cpu_seconds(pid) - before
}

/// [`PAGES_FOLLOWING`] browsers (as many people), each logged in and on the machines page,
/// following the changes live.
async fn open_following(driver: &Driver, token: &str) -> Vec<Browser> {
    let mut browsers = vec![];
    for i in 0..PAGES_FOLLOWING {
        let b = Browser::open(driver, &format!("follower-{i}"), 1280, 860).await;
        log_in(&b, token).await;
        b.goto(&format!("{BASE}/machines")).await;
        b.wait_text("h1", |t| t == "Machines").await;
        browsers.push(b);
    }
    browsers
}

/// When each browser's page last refreshed itself (`live.js` marks the body).
async fn refreshed(browsers: &[Browser]) -> Vec<i64> {
    let mut at = vec![];
    for b in browsers {
        let mark = b.run("return Number(document.body.dataset.refreshed || 0);").await;
        at.push(mark.as_i64().unwrap_or(0));
    }
    at
}
