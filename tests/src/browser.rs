//! A real browser for the web page's tests: Debian's `chromium`, driven through Debian's
//! `chromedriver` (WebDriver) with `fantoccini`, inside a test's network namespace so that it
//! reaches `oasis serve` at 10.0.0.1 and nothing else. Nothing is downloaded: the browser and
//! its driver are the packages `scripts/test` installs.
//!
//! [`Browser::open`] runs on a thread inside the namespace ([`crate::Netns::run_inside`]): the
//! driver listens on the namespace's loopback. Each browser has a fresh profile, and keeps the
//! network log of its pages ([`Browser::requested`]) so a test can say where they sent requests.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::Netns;

/// Where chromedriver listens, on the namespace's loopback.
const DRIVER_PORT: u16 = 9515;

/// The narrowest window chromium makes: narrower screens (a phone's) are emulated.
const MIN_WINDOW_WIDTH: u32 = 500;

/// chromedriver, started in a namespace (stopped with it).
#[derive(Debug)]
pub struct Driver {
    profile: tempfile::TempDir,
}

impl Driver {
    /// Starts `chromedriver` in `ns`; its log goes to `log`.
    pub fn start(ns: &Netns, log: &Path) -> Driver {
        let out = std::fs::File::create(log).unwrap();
        let mut cmd = ns.command("chromedriver");
        cmd.args([&format!("--port={DRIVER_PORT}"), "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        ns.spawn(cmd).unwrap_or_else(|e| panic!("chromedriver (apt-get install chromium-driver): {e}"));
        Driver { profile: tempfile::tempdir().unwrap() }
    }

    /// A fresh profile directory for one browser.
    fn profile(&self, name: &str) -> PathBuf {
        let dir = self.profile.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

/// One chromium window, driven.
pub struct Browser {
    pub client: Client,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Browser")
    }
}

impl Browser {
    /// Opens a headless chromium `width` × `height` through `driver` (call inside its namespace).
    /// It takes the appliance's self-signed certificate as a visitor who checked its fingerprint
    /// would, and records its pages' network log.
    pub async fn open(driver: &Driver, name: &str, width: u32, height: u32) -> Browser {
        let profile = driver.profile(name);
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            format!("--user-data-dir={}", profile.display()),
            format!("--window-size={width},{height}"),
        ];
        let mut options = json!({ "binary": "/usr/bin/chromium", "args": args });
        if width < MIN_WINDOW_WIDTH {
            // Narrower than a window can be: a phone's screen, emulated.
            options["mobileEmulation"] =
                json!({ "deviceMetrics": { "width": width, "height": height, "pixelRatio": 1.0 } });
        }
        let capabilities = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": options,
            "goog:loggingPrefs": { "performance": "ALL", "browser": "ALL" },
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let url = format!("http://127.0.0.1:{DRIVER_PORT}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(capabilities.clone()).connect(&url).await {
                Ok(client) => return Browser { client },
                // chromedriver is still starting.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(300)).await,
                Err(e) => panic!("no browser through chromedriver at {url}: {e}"),
            }
        }
    }

    /// Every URL the browser's pages asked for since the last call (chromedriver's performance
    /// log: `Network.requestWillBeSent`, which also lists requests that never got an answer).
    pub async fn requested(&self) -> Vec<String> {
        let log = self.client.issue_cmd(DriverLog("performance")).await.expect("the browser's performance log");
        let mut urls = vec![];
        for entry in log.as_array().into_iter().flatten() {
            let Some(message) = entry["message"].as_str() else { continue };
            let Ok(message) = serde_json::from_str::<Value>(message) else { continue };
            let message = &message["message"];
            let url = match message["method"].as_str() {
                Some("Network.requestWillBeSent") => &message["params"]["request"]["url"],
                Some("Network.webSocketCreated") => &message["params"]["url"],
                _ => continue,
            };
            if let Some(url) = url.as_str() {
                urls.push(url.to_string());
            }
        }
        urls
    }

    /// The browser console's messages since the last call (script errors, CSP refusals).
    pub async fn console(&self) -> Vec<String> {
        let log = self.client.issue_cmd(DriverLog("browser")).await.expect("the browser's console log");
        log.as_array().into_iter().flatten().filter_map(|e| e["message"].as_str().map(str::to_string)).collect()
    }

    /// Waits until the first element `css` selects has text satisfying `want`, and returns it.
    pub async fn wait_text(&self, css: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(element) = self.client.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if want(&text) {
                        return text;
                    }
                    last = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Chromium's own error page (its `errorCode`) says why a page never came.
        let source = self.client.source().await.unwrap_or_default();
        let error = source.split("\"errorCode\":\"").nth(1).and_then(|rest| rest.split('"').next());
        panic!(
            "{css} never showed what was awaited; it showed {last:?} on {}{}",
            self.url().await,
            error.map(|code| format!(" (chromium's error page: {code})")).unwrap_or_default()
        )
    }

    /// Goes to `url`. Chromium may show its own error page for a first visit when the
    /// namespace's interfaces changed as it started (`ERR_NETWORK_CHANGED`: serve making its
    /// WireGuard device): that visit is made again, a few times at most.
    pub async fn goto(&self, url: &str) {
        for _ in 0..5 {
            self.client.goto(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
            let source = self.client.source().await.unwrap_or_default();
            if !source.contains("\"errorCode\":\"ERR_NETWORK_CHANGED\"") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("chromium could not visit {url}: the network kept changing");
    }

    /// Moves the focus with the Tab key, as a keyboard-only visitor does, until it is on the
    /// link or button whose text is `text`; then Enter follows or presses it.
    pub async fn tab_to_and_enter(&self, text: &str) {
        const TAB: &str = "\u{E004}";
        const ENTER: &str = "\u{E007}";
        let mut passed = vec![];
        for _ in 0..40 {
            let focused = self.client.active_element().await.expect("a focused element");
            let words = focused.text().await.unwrap_or_default();
            if words.trim() == text {
                focused.send_keys(ENTER).await.unwrap();
                return;
            }
            passed.push(words);
            focused.send_keys(TAB).await.unwrap();
        }
        panic!("Tab never reached {text:?} on {}; it passed {passed:?}", self.url().await)
    }

    /// The page's address now.
    pub async fn url(&self) -> String {
        self.client.current_url().await.map(|u| u.to_string()).unwrap_or_default()
    }

    /// A screenshot of the window, written as PNG to `path`.
    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }

    /// Runs `script` in the page (its last statement's `return` is the value).
    pub async fn run(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Runs `script` asynchronously in the page: it ends by calling `arguments[0](value)`.
    pub async fn run_async(&self, script: &str) -> Value {
        self.client.execute_async(script, vec![]).await.unwrap_or_else(|e| panic!("{script}: {e}"))
    }
}

/// chromedriver's own command for a log of the session (`performance` or `browser`).
#[derive(Debug)]
struct DriverLog(&'static str);

impl WebDriverCompatibleCommand for DriverLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": self.0 }).to_string()))
    }
}

/// Whether chromium and chromedriver are installed (a clear message when not).
pub fn check_installed() {
    for program in ["chromium", "chromedriver"] {
        let found = Command::new(program).arg("--version").output().is_ok_and(|o| o.status.success());
        assert!(found, "{program} is not installed: apt-get install chromium chromium-driver (scripts/test does)");
    }
}
