//! The rack's web page (issue 18), served on the HTTPS API port beside the API, from HTML the
//! server renders ([`pages`]) and a stylesheet compiled into the binary: nothing is fetched from
//! anywhere else, and the Content-Security-Policy lets the browser load nothing but the
//! appliance's own files. Logging in takes the admin token and gives a session cookie
//! ([`session`]); every change a page asks for carries the session's form token, and goes
//! through the one [`Operator`], so the page can do nothing the CLI cannot.

mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use oasis_core::registry::{secrets_equal, Happening};
use serde::Deserialize;

use crate::operator::{Action, Answer, Operator};
pub use pages::Appliance;
use session::{Refusal, Session, Sessions};

/// What every response of the page carries: the browser loads scripts, styles, images and
/// frames from the appliance only, sends forms only to it, and keeps nothing in its cache.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

/// The page's state: the operator interface, the sessions, what it says of the appliance.
#[derive(Debug, Clone)]
pub struct Web {
    operator: Operator,
    sessions: Arc<Sessions>,
    appliance: Arc<Appliance>,
}

impl Web {
    pub fn new(operator: Operator, appliance: Appliance) -> Web {
        Web { operator, sessions: Arc::default(), appliance: Arc::new(appliance) }
    }

    /// The live session the request's cookie names.
    fn session(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie_session(headers)?;
        self.sessions.get(id).map(|s| (id.to_string(), s))
    }
}

/// The page's routes, with their security headers.
pub fn router(web: Web) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/oasis.css", get(stylesheet))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(web)
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn cookie_session(headers: &HeaderMap) -> Option<&str> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).find_map(session::session_id)
}

/// To the login page; saying the session ended when the request carried one that no longer
/// lives (it expired, or the appliance restarted).
fn to_login(headers: &HeaderMap) -> Response {
    match cookie_session(headers) {
        Some(_) => Redirect::to("/login?ended").into_response(),
        None => Redirect::to("/login").into_response(),
    }
}

async fn overview(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let status = web.operator.cluster.as_ref().map(|c| Arc::clone(&c.status.borrow()));
    let machines = match web.operator.handle(Action::Machines).await {
        Ok(Answer::Machines(machines)) => machines,
        Ok(_) => vec![],
        Err(error) => {
            let words = format!("The machines could not be read: {error}. Try again in a moment.");
            return (StatusCode::SERVICE_UNAVAILABLE, Html(pages::problem("Not now", &words).into_string()))
                .into_response();
        }
    };
    Html(pages::overview(&session.csrf, status.as_deref(), &machines, &web.appliance).into_string()).into_response()
}

async fn login_page(State(web): State<Web>, headers: HeaderMap, uri: axum::http::Uri) -> Response {
    if web.session(&headers).is_some() {
        return Redirect::to("/").into_response();
    }
    let ended = uri.query().is_some_and(|q| q.split('&').any(|p| p == "ended"));
    let notice = ended
        .then_some("Your session ended: you were logged in too long ago, or the appliance restarted. Log in again.");
    Html(pages::login(notice).into_string()).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginForm(..)")
    }
}

async fn login(
    State(web): State<Web>,
    ConnectInfo(from): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    let admin = &web.operator.api.identity.admin_token;
    match web.sessions.login(from.ip(), &form.token, admin) {
        Ok(id) => ([(header::SET_COOKIE, session::cookie(&id))], Redirect::to("/")).into_response(),
        Err(Refusal::WrongToken { tries_left }) => {
            web.operator.api.store.record_untrusted(
                from.ip(),
                Happening {
                    kind: "web-login-failed",
                    mac: None,
                    message: format!("the web page was given a wrong admin token from {}", from.ip()),
                },
            );
            let notice = format!(
                "That is not the admin token. {tries_left} more {} from this address in the next minute.",
                if tries_left == 1 { "try" } else { "tries" }
            );
            (StatusCode::UNAUTHORIZED, Html(pages::login(Some(&notice)).into_string())).into_response()
        }
        Err(Refusal::TooMany { wait }) => {
            let notice = format!(
                "Too many wrong tokens from this address: wait {} s, then log in with the admin token.",
                wait.as_secs().max(1)
            );
            (StatusCode::TOO_MANY_REQUESTS, Html(pages::login(Some(&notice)).into_string())).into_response()
        }
    }
}

/// A change's form: the session's form token.
#[derive(Debug, Deserialize)]
struct ChangeForm {
    #[serde(default)]
    csrf: String,
}

/// Why a change request is not done.
#[derive(Debug)]
enum NotAllowed {
    /// No live session: to the login page.
    NoSession(Response),
    /// Its form token is not the session's: a forgery, or a page from before a login.
    Forged,
}

impl IntoResponse for NotAllowed {
    fn into_response(self) -> Response {
        match self {
            NotAllowed::NoSession(to_login) => to_login,
            NotAllowed::Forged => {
                let words = "This request did not come from a page of this appliance (its form token is missing or \
                             wrong), so nothing was done. Reload the page and try again.";
                (StatusCode::FORBIDDEN, Html(pages::problem("Refused", words).into_string())).into_response()
            }
        }
    }
}

/// The session of a change request, when its form token is the session's.
fn change_session(web: &Web, headers: &HeaderMap, form: &ChangeForm) -> Result<(String, Session), Box<NotAllowed>> {
    let Some((id, session)) = web.session(headers) else {
        return Err(Box::new(NotAllowed::NoSession(to_login(headers))));
    };
    if !secrets_equal(&form.csrf, &session.csrf) {
        return Err(Box::new(NotAllowed::Forged));
    }
    Ok((id, session))
}

async fn logout(State(web): State<Web>, headers: HeaderMap, Form(form): Form<ChangeForm>) -> Response {
    match change_session(&web, &headers, &form) {
        Ok((id, _)) => {
            web.sessions.logout(&id);
            ([(header::SET_COOKIE, session::cookie_cleared())], Redirect::to("/login")).into_response()
        }
        Err(refused) => refused.into_response(),
    }
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLESHEET).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::api::test_api;
    use oasis_core::registry::Policy;

    struct Page {
        status: StatusCode,
        headers: HeaderMap,
        body: String,
    }

    fn web(dir: &std::path::Path) -> Web {
        let api = test_api(dir, Policy::Manual);
        let appliance = Appliance { version: "0.0.0-test", address: [10, 0, 0, 1].into(), fingerprint: "AB:CD".into() };
        Web::new(Operator { api, cluster: None }, appliance)
    }

    async fn send(web: &Web, method: &str, path: &str, cookie: Option<&str>, form: &str) -> Page {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(id) = cookie {
            req = req.header(header::COOKIE, format!("{}={id}", session::COOKIE));
        }
        if method == "POST" {
            req = req.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let mut req = req.body(Body::from(form.to_string())).unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 100], 40000))));
        let res = router(web.clone()).oneshot(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
        Page { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
    }

    fn location(page: &Page) -> &str {
        page.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The session id a login's `Set-Cookie` gives.
    fn session_of(page: &Page) -> String {
        let set = page.headers.get(header::SET_COOKIE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        session::session_id(set.split(';').next().unwrap_or_default()).unwrap_or_default().to_string()
    }

    /// The form token in a page's logout form.
    fn csrf_of(page: &Page) -> String {
        let at = page.body.find("name=\"csrf\" value=\"").expect("a form token") + "name=\"csrf\" value=\"".len();
        page.body[at..].split('"').next().unwrap().to_string()
    }

    #[tokio::test]
    async fn the_admin_token_logs_in_and_the_overview_needs_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let first = send(&web, "GET", "/", None, "").await;
        assert_eq!((first.status, location(&first)), (StatusCode::SEE_OTHER, "/login"));
        let form = send(&web, "GET", "/login", None, "").await;
        assert!(form.body.contains("Admin token") && form.body.contains("type=\"password\""), "{}", form.body);

        let token = web.operator.api.identity.admin_token.clone();
        let login = send(&web, "POST", "/login", None, &format!("token={token}")).await;
        assert_eq!((login.status, location(&login)), (StatusCode::SEE_OTHER, "/"));
        let id = session_of(&login);
        assert_eq!(id.len(), 64);
        let overview = send(&web, "GET", "/", Some(&id), "").await;
        assert_eq!(overview.status, StatusCode::OK);
        for words in ["Overview", "No machine has booted", "0.0.0-test", "10.0.0.1", "AB:CD", "Log out"] {
            assert!(overview.body.contains(words), "{words} in {}", overview.body);
        }
        assert!(!overview.body.contains(&token), "the admin token is never in a page");
    }

    #[tokio::test]
    async fn every_response_keeps_the_browser_to_the_appliance() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        for path in ["/login", "/assets/oasis.css", "/"] {
            let page = send(&web, "GET", path, None, "").await;
            let csp = page.headers.get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
            assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
            assert_eq!(page.headers.get(header::CACHE_CONTROL).unwrap(), "no-store");
        }
        let page = send(&web, "GET", "/login", None, "").await;
        for outside in ["http://", "https://", "//"] {
            let links = page.body.matches(&format!("href=\"{outside}")).count() + page.body.matches("src=").count();
            assert_eq!(links, 0, "nothing loaded from elsewhere: {}", page.body);
        }
    }

    #[tokio::test]
    async fn wrong_tokens_are_refused_said_and_then_held_off() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let wrong = send(&web, "POST", "/login", None, "token=guess").await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.body.contains("That is not the admin token. 4 more tries"), "{}", wrong.body);
        assert!(wrong.headers.get(header::SET_COOKIE).is_none());
        for _ in 0..4 {
            send(&web, "POST", "/login", None, "token=guess").await;
        }
        let token = web.operator.api.identity.admin_token.clone();
        let held = send(&web, "POST", "/login", None, &format!("token={token}")).await;
        assert_eq!(held.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(held.body.contains("Too many wrong tokens from this address"), "{}", held.body);
        web.operator.api.store.flush().await.unwrap();
        let events = web.operator.api.store.events(100).unwrap();
        assert!(events.iter().any(|e| e.kind == "web-login-failed" && e.message.contains("10.0.0.100")), "{events:?}");
    }

    #[tokio::test]
    async fn logout_needs_the_form_token_and_an_ended_session_is_said() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let token = web.operator.api.identity.admin_token.clone();
        let id = session_of(&send(&web, "POST", "/login", None, &format!("token={token}")).await);
        let overview = send(&web, "GET", "/", Some(&id), "").await;
        let csrf = csrf_of(&overview);

        for form in [String::new(), "csrf=forged".to_string()] {
            let forged = send(&web, "POST", "/logout", Some(&id), &form).await;
            assert_eq!(forged.status, StatusCode::FORBIDDEN, "{form}");
            assert!(forged.body.contains("nothing was done"), "{}", forged.body);
        }
        assert_eq!(send(&web, "GET", "/", Some(&id), "").await.status, StatusCode::OK, "still logged in");

        let out = send(&web, "POST", "/logout", Some(&id), &format!("csrf={csrf}")).await;
        assert_eq!((out.status, location(&out)), (StatusCode::SEE_OTHER, "/login"));
        assert!(out.headers.get(header::SET_COOKIE).unwrap().to_str().unwrap().contains("Max-Age=0"));
        let after = send(&web, "GET", "/", Some(&id), "").await;
        assert_eq!(location(&after), "/login?ended", "a session that ended is said, not silently dropped");
        let notice = send(&web, "GET", "/login?ended", None, "").await;
        assert!(notice.body.contains("Your session ended"), "{}", notice.body);
    }
}
