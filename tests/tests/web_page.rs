//! The web page through a real `oasis serve` in a namespace, over its HTTPS port (the same
//! certificate the agents pin), with curl as the client: the login page, a wrong token refused
//! and said as an event, the admin token giving a session cookie with its flags, the overview
//! behind it, a registered machine on the machines page as `oasis machines --json` has it,
//! logout refused without the form token and done with it. (The browser tests of
//! issue 18 drive chromium against the same server.)

use oasis_e2e::appliance::{self, Appliance};
use oasis_e2e::Netns;

const MAC: &str = "52:54:00:0e:00:61";

/// One curl through serve's namespace: `(status, headers and body)`.
fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let mut all = vec!["curl", "-sk", "-D", "-", "-w", "\n%{http_code}"];
    all.extend(args);
    let out = ns.exec(&all).unwrap();
    let (text, code) = out.rsplit_once('\n').unwrap_or_default();
    (code.trim().parse().unwrap_or(0), text.to_string())
}

#[test]
fn the_web_page_logs_in_with_the_admin_token_and_out_with_its_form_token() {
    let ns = Netns::create("oasis-web").unwrap();
    ns.add_bridge("br0", Some("10.0.0.1/24")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[profile]\nkernel = \"payload/vmlinuz\"\ninitrd = \"payload/initrd.img\"\n";
    let config = appliance::write_config(dir.path(), "mode = \"off\"", &appliance::boot_root(dir.path()), extra);
    let args = appliance::join_args(&config);
    let app = Appliance::start(&ns, &config, &dir.path().join("serve.log"));
    let token = std::fs::read_to_string(app.data_dir.join("admin-token")).unwrap().trim().to_string();
    let base = format!("https://10.0.0.1:{}", oasis_proto::API_PORT);

    let (code, page) = curl(&ns, &[&format!("{base}/")]);
    assert_eq!(code, 303, "{page}");
    assert!(page.to_ascii_lowercase().contains("location: /login"), "{page}");
    let (code, page) = curl(&ns, &[&format!("{base}/login")]);
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Admin token"), "{page}");
    assert!(page.to_ascii_lowercase().contains("content-security-policy: default-src 'self'"), "{page}");

    let (code, page) = curl(&ns, &["-d", "token=guess", &format!("{base}/login")]);
    assert_eq!(code, 401, "{page}");
    // The store's writer records events a moment after the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !app.cli(&["events"]).contains("web-login-failed") {
        assert!(std::time::Instant::now() < deadline, "{}", app.cli(&["events"]));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let jar = dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let (code, page) = curl(&ns, &["-c", jar, "-d", &format!("token={token}"), &format!("{base}/login")]);
    assert_eq!(code, 303, "{page}");
    let set = page.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie:")).unwrap_or_default();
    for flag in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    let (code, overview) = curl(&ns, &["-b", jar, &format!("{base}/")]);
    assert_eq!(code, 200, "{overview}");
    for words in ["Overview", "This appliance", "10.0.0.1"] {
        assert!(overview.contains(words), "{words} in {overview}");
    }
    assert!(!overview.contains(&token), "the admin token is in no page");

    // A machine registers: the machines page shows it as `oasis machines --json` does.
    let request = appliance::register_request(&args.token, "4c4c4544-0000-0000-0000-0000000e0061", MAC, 3, 1);
    appliance::register(&ns, &args.pin, request).expect("registered");
    let (code, page) = curl(&ns, &["-b", jar, &format!("{base}/machines")]);
    assert_eq!(code, 200, "{page}");
    let listed: serde_json::Value = serde_json::from_str(&app.cli(&["machines", "--json"])).unwrap();
    let entry = listed.as_array().and_then(|all| all.iter().find(|m| m["mac"] == MAC)).expect("in --json");
    let id = entry["registration"]["id"].as_str().expect("registered");
    let row = page.split("<tr data-mac=").find(|r| r.starts_with(&format!("\"{MAC}\""))).expect("a row");
    assert!(row.contains(id), "{row}");
    let state = match entry["registration"]["state"].as_str() {
        Some("pending") => "waiting to be accepted",
        other => other.expect("a state"),
    };
    assert!(row.contains(&format!("data-field=\"state\" data-label=\"State\">{state}<")), "{state} in {row}");

    let (code, page) = curl(&ns, &["-b", jar, "-d", "csrf=forged", &format!("{base}/logout")]);
    assert_eq!(code, 403, "{page}");
    let at = overview.find("name=\"csrf\" value=\"").expect("a form token") + "name=\"csrf\" value=\"".len();
    let csrf = overview[at..].split('"').next().unwrap();
    let (code, page) = curl(&ns, &["-b", jar, "-d", &format!("csrf={csrf}"), &format!("{base}/logout")]);
    assert_eq!(code, 303, "{page}");
    let (code, page) = curl(&ns, &["-b", jar, &format!("{base}/")]);
    assert_eq!(code, 303, "{page}");
    assert!(page.to_ascii_lowercase().contains("location: /login?ended"), "{page}");
}
