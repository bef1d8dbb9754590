//! The rack's web page (issue 18), served on the HTTPS API port beside the API, from HTML the
//! server renders ([`pages`]), a stylesheet and one script compiled into the binary: nothing is
//! fetched from anywhere else, and the Content-Security-Policy lets the browser load nothing but
//! the appliance's own files. An open page follows the appliance on `/live` ([`live`]) and
//! fetches itself again when told something changed. Logging in takes the admin token and
//! gives a session cookie ([`session`]); every change a page asks for carries the session's form
//! token, and goes through the one [`Operator`], so the page can do nothing the CLI cannot.

mod live;
mod pages;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use oasis_core::assembly::status::ClusterStatus;
use oasis_core::registry::{secrets_equal, Happening};
use serde::Deserialize;

use crate::admin::MachineEntry;
use crate::operator::{Action, Answer, Decision, Operator};
use crate::power::PowerOp;
pub use pages::{Appliance, MachineRow};
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

    /// The cluster as the controller last published it, where this appliance manages one.
    fn cluster_status(&self) -> Option<Arc<ClusterStatus>> {
        self.operator.cluster.as_ref().map(|c| Arc::clone(&c.status.borrow()))
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
        .route("/machines", get(machines))
        .route("/cluster", get(cluster))
        .route("/events", get(events))
        .route("/updates", get(updates))
        .route("/updates/confirm/{command}", get(confirm_rollout))
        .route("/updates/command", post(rollout_command))
        // The bundle is streamed to the verifier, bounded by its own limit (`upload`).
        .route("/updates/upload", post(upload_bundle).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/downloads", get(downloads))
        .route("/downloads/{file}", get(download))
        .route("/machines/{name}", get(machine))
        .route("/machines/{name}/confirm/{action}", get(confirm))
        .route("/machines/{name}/act", post(act))
        .route("/live", get(live))
        .route("/assets/oasis.css", get(stylesheet))
        .route("/assets/live.js", get(script))
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
    match machine_entries(&web).await {
        Ok((machines, status)) => {
            Html(pages::overview(&session.csrf, status.as_deref(), &machines, &web.appliance).into_string())
                .into_response()
        }
        Err(page) => page,
    }
}

/// Every machine with the cluster's view of it, or the page that says they could not be read.
async fn machine_entries(web: &Web) -> Result<(Vec<MachineEntry>, Option<Arc<ClusterStatus>>), Response> {
    let status = web.cluster_status();
    match web.operator.handle(Action::Machines).await {
        Ok(Answer::Machines(machines)) => Ok((machines, status)),
        Ok(_) => Ok((vec![], status)),
        Err(error) => {
            let words = format!("The machines could not be read: {error}. Try again in a moment.");
            Err(problem(StatusCode::SERVICE_UNAVAILABLE, "Not now", &words))
        }
    }
}

async fn machines(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let (entries, status) = match machine_entries(&web).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let now = crate::store::now();
    let rows: Vec<MachineRow> = entries.iter().map(|e| MachineRow::of(e, status.as_deref(), now)).collect();
    Html(pages::machines(&session.csrf, &rows).into_string()).into_response()
}

async fn cluster(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let status = web.cluster_status();
    Html(pages::cluster(&session.csrf, status.as_deref()).into_string()).into_response()
}

/// How many of the newest events the events page looks through.
const EVENTS_SHOWN: usize = 500;

async fn events(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let filter = query.get("q").map(|q| q.trim().to_string()).unwrap_or_default();
    let wanted = filter.to_lowercase();
    let all = match web.operator.handle(Action::Events { limit: EVENTS_SHOWN }).await {
        Ok(Answer::Events(events)) => events,
        Ok(_) => vec![],
        Err(error) => {
            let words = format!("The events could not be read: {error}. Try again in a moment.");
            return problem(StatusCode::SERVICE_UNAVAILABLE, "Not now", &words);
        }
    };
    let shown: Vec<_> = all
        .into_iter()
        .rev()
        .filter(|e| wanted.is_empty() || e.kind.contains(&wanted) || e.message.to_lowercase().contains(&wanted))
        .collect();
    Html(pages::events(&session.csrf, &shown, &filter, crate::store::now()).into_string()).into_response()
}

/// The updates page, with `notice` above it.
async fn updates_page(web: &Web, csrf: &str, notice: Option<&str>) -> Response {
    match web.operator.handle(Action::UpdateStatus).await {
        Ok(Answer::Update(update)) => {
            Html(pages::updates(csrf, &update, notice, crate::store::now()).into_string()).into_response()
        }
        Ok(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Err(error) => {
            let words = format!("The updates could not be read: {error}. Try again in a moment.");
            problem(StatusCode::SERVICE_UNAVAILABLE, "Not now", &words)
        }
    }
}

async fn updates(
    State(web): State<Web>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let notice = query.get("done").and_then(|command| match command.as_str() {
        "pause" => Some("Paused: the machine being moved finishes, no other starts."),
        "resume" => Some("Resumed: the machines move again, one at a time."),
        "cancel" => Some("Cancelled: the machines already moved go back, one at a time."),
        _ => None,
    });
    updates_page(&web, &session.csrf, notice).await
}

async fn confirm_rollout(State(web): State<Web>, headers: HeaderMap, Path(command): Path<String>) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let Some((command, words, what)) = pages::ROLLOUT_COMMANDS.iter().find(|(c, _, _)| *c == command) else {
        let words = format!("There is no upgrade command {command:?}.");
        return problem(StatusCode::NOT_FOUND, "No such command", &words);
    };
    let confirmation = pages::Confirmation {
        question: format!("{words} the upgrade?"),
        what,
        words,
        post_to: "/updates/command".into(),
        field: ("command", command),
        back: "/updates".into(),
    };
    Html(pages::confirm(&session.csrf, &confirmation).into_string()).into_response()
}

/// A rollout command's form.
#[derive(Debug, Deserialize)]
struct CommandForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    command: String,
}

async fn rollout_command(State(web): State<Web>, headers: HeaderMap, Form(form): Form<CommandForm>) -> Response {
    let (_, session) = match change_session(&web, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let action = match crate::operator::rollout(&form.command) {
        Ok(action) => action,
        Err(error) => {
            let words = format!("{error}; nothing was done.");
            return problem(StatusCode::NOT_FOUND, "No such command", &words);
        }
    };
    match web.operator.handle(action).await {
        Ok(_) => Redirect::to(&format!("/updates?done={}", form.command)).into_response(),
        Err(error) => refused(updates_page(&web, &session.csrf, Some(&format!("Not done: {error}"))).await),
    }
}

/// `POST /updates/upload`: a bundle from the updates page's form (its form token first, then
/// the file), streamed into the same verifier and installer as the API's upload; the page then
/// says what was installed, or why nothing was.
async fn upload_bundle(State(web): State<Web>, headers: HeaderMap, mut form: axum::extract::Multipart) -> Response {
    let csrf = match form.next_field().await {
        Ok(Some(field)) if field.name() == Some("csrf") => field.text().await.unwrap_or_default(),
        _ => String::new(),
    };
    let (_, session) = match change_session(&web, &headers, &csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let bundle = match form.next_field().await {
        Ok(Some(field)) if field.name() == Some("bundle") => field,
        Ok(_) => {
            return refused(updates_page(&web, &session.csrf, Some("Not done: choose a bundle file first.")).await)
        }
        Err(error) => {
            let words = format!("Not done: the upload broke off ({error}). Nothing was installed; try again.");
            return refused(updates_page(&web, &session.csrf, Some(&words)).await);
        }
    };
    match crate::upload::apply_stream(&web.operator.api.generations, bundle).await {
        Ok(applied) => {
            let words = format!(
                "Installed as generation {}: {}. The machines move to it one at a time.",
                applied.generation.sequence, applied.summary
            );
            updates_page(&web, &session.csrf, Some(&words)).await
        }
        Err(error) => {
            let words = format!("Not installed: {error}. Nothing was changed.");
            answered_with(StatusCode::UNPROCESSABLE_ENTITY, updates_page(&web, &session.csrf, Some(&words)).await)
        }
    }
}

/// The kubeconfig, when the cluster has one.
fn kubeconfig(web: &Web) -> Option<String> {
    web.operator.cluster.as_ref().and_then(|c| c.kubeconfig.borrow().clone())
}

async fn downloads(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let page = pages::downloads(&session.csrf, kubeconfig(&web).is_some(), web.cluster_status().is_some());
    Html(page.into_string()).into_response()
}

/// `GET /downloads/{file}`: one of [`pages::DOWNLOADS`], made now.
async fn download(State(web): State<Web>, headers: HeaderMap, Path(file): Path<String>) -> Response {
    if web.session(&headers).is_none() {
        return to_login(&headers);
    }
    let contents = match file.as_str() {
        "inventory.txt" => match machine_entries(&web).await {
            Ok((machines, status)) => Some(crate::inventory::text(&machines, status.as_deref())),
            Err(page) => return page,
        },
        "cluster-status.txt" => web.cluster_status().map(|s| s.render()),
        "kubeconfig" => kubeconfig(&web),
        _ => None,
    };
    let Some(contents) = contents else {
        let words = format!("There is no {file:?} to download now; the downloads page lists what there is.");
        return problem(StatusCode::NOT_FOUND, "Not here", &words);
    };
    let disposition = format!("attachment; filename=\"{file}\"");
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string()), (header::CONTENT_DISPOSITION, disposition)],
        contents,
    )
        .into_response()
}

/// A page for an error the visitor can do something about, with its status.
fn problem(status: StatusCode, title: &str, words: &str) -> Response {
    (status, Html(pages::problem(title, words).into_string())).into_response()
}

/// A page that says why an action was not done: 409 (unless the page itself failed).
fn refused(page: Response) -> Response {
    answered_with(StatusCode::CONFLICT, page)
}

/// `page` with `status`, unless the page itself failed (its own status says why).
fn answered_with(status: StatusCode, mut page: Response) -> Response {
    if page.status() == StatusCode::OK {
        *page.status_mut() = status;
    }
    page
}

/// The words said after an action was done (`?done=ACTION`): fixed, never taken from the URL.
fn done_words(action: &str) -> Option<&'static str> {
    Some(match action {
        "accept" => "Accepted: it joins the rack.",
        "reject" => "Rejected: it stays out of the rack.",
        "reprovision" => "Reprovisioning: it leaves the cluster, then its data disk is wiped and it boots afresh.",
        "power-on" => "Powered on.",
        "power-off" => "Powered off.",
        "power-cycle" => "Power cycled.",
        _ => return None,
    })
}

/// The page of the machine named `name`, with `notice` (or the `?done=` words) above it.
async fn machine_page(web: &Web, csrf: &str, name: &str, notice: Option<&str>) -> Response {
    let (entries, status) = match machine_entries(web).await {
        Ok(found) => found,
        Err(page) => return page,
    };
    let now = crate::store::now();
    let Some(row) =
        entries.iter().map(|e| MachineRow::of(e, status.as_deref(), now)).find(|r| r.name == name || r.mac == name)
    else {
        let words =
            format!("No machine is called {name:?}: it may have been forgotten. The machines page lists them all.");
        return problem(StatusCode::NOT_FOUND, "No such machine", &words);
    };
    // Newest first, this machine's only.
    let events: Vec<_> = web.operator.api.store.events(2000).unwrap_or_default();
    let events: Vec<_> =
        events.into_iter().rev().filter(|e| e.mac.is_some_and(|m| m.to_string() == row.mac)).take(30).collect();
    Html(pages::machine(csrf, &row, &events, notice, now).into_string()).into_response()
}

async fn machine(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let notice = query.get("done").and_then(|a| done_words(a));
    machine_page(&web, &session.csrf, &name, notice).await
}

async fn confirm(State(web): State<Web>, headers: HeaderMap, Path((name, action)): Path<(String, String)>) -> Response {
    let Some((_, session)) = web.session(&headers) else { return to_login(&headers) };
    let Some((action, words, what)) = pages::MACHINE_ACTIONS.iter().find(|(a, _, _)| *a == action) else {
        let words = format!("There is no action {action:?} for a machine.");
        return problem(StatusCode::NOT_FOUND, "No such action", &words);
    };
    let confirmation = pages::Confirmation {
        question: format!("{words} {name}?"),
        what,
        words,
        post_to: format!("/machines/{name}/act"),
        field: ("action", action),
        back: format!("/machines/{name}"),
    };
    Html(pages::confirm(&session.csrf, &confirmation).into_string()).into_response()
}

/// A machine action's form: the session's form token and the action.
#[derive(Debug, Deserialize)]
struct ActForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    action: String,
}

/// The operator's action for a page's action word.
fn machine_action(name: &str, action: &str) -> Option<Action> {
    let machine = name.to_string();
    let decide = |decision| Some(Action::Decide { machine: machine.clone(), decision });
    match action {
        "accept" => decide(Decision::Accept),
        "reject" => decide(Decision::Reject),
        "reprovision" => decide(Decision::Reprovision),
        "remove" => Some(Action::Remove { machine }),
        power => Some(Action::Power { machine, op: PowerOp::parse(power.strip_prefix("power-")?)? }),
    }
}

async fn act(
    State(web): State<Web>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<ActForm>,
) -> Response {
    let (_, session) = match change_session(&web, &headers, &form.csrf) {
        Ok(found) => found,
        Err(refused) => return refused.into_response(),
    };
    let Some(action) = machine_action(&name, &form.action) else {
        let words = format!("There is no action {:?} for a machine; nothing was done.", form.action);
        return problem(StatusCode::NOT_FOUND, "No such action", &words);
    };
    let failed = match web.operator.handle(action).await {
        Ok(Answer::Power(reports)) => reports.into_iter().find_map(|r| r.error),
        Ok(_) => None,
        Err(error) => Some(error.to_string()),
    };
    match failed {
        None if form.action == "remove" => Redirect::to("/machines").into_response(),
        None => Redirect::to(&format!("/machines/{}?done={}", crate::operator::query_value(&name), form.action))
            .into_response(),
        Some(error) => refused(machine_page(&web, &session.csrf, &name, Some(&format!("Not done: {error}"))).await),
    }
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
                problem(StatusCode::FORBIDDEN, "Refused", words)
            }
        }
    }
}

/// The session of a change request, when its form token is the session's.
fn change_session(web: &Web, headers: &HeaderMap, csrf: &str) -> Result<(String, Session), Box<NotAllowed>> {
    let Some((id, session)) = web.session(headers) else {
        return Err(Box::new(NotAllowed::NoSession(to_login(headers))));
    };
    if !secrets_equal(csrf, &session.csrf) {
        return Err(Box::new(NotAllowed::Forged));
    }
    Ok((id, session))
}

async fn logout(State(web): State<Web>, headers: HeaderMap, Form(form): Form<ChangeForm>) -> Response {
    match change_session(&web, &headers, &form.csrf) {
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

async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], pages::LIVE_SCRIPT).into_response()
}

/// `GET /live`: server-sent events for an open page, a `change` each time the store commits or
/// the cluster's picture changes, at most every [`live::AT_MOST_EVERY`]; the stream ends when
/// the session does. Without a session: 401 (the page's script then reloads into the login).
async fn live(State(web): State<Web>, headers: HeaderMap) -> Response {
    let Some((id, _)) = web.session(&headers) else {
        return problem(StatusCode::UNAUTHORIZED, "Log in", "Your session ended: log in again.");
    };
    let changes = live::Changes::new(&web, id);
    let stream = futures::stream::unfold(changes, |mut changes| async move {
        let seen = changes.next().await?;
        let event = axum::response::sse::Event::default().event("change").data(seen.to_string());
        Some((Ok::<_, std::convert::Infallible>(event), changes))
    });
    axum::response::sse::Sse::new(stream).keep_alive(axum::response::sse::KeepAlive::default()).into_response()
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

    /// A machine registers through the API (pending: the test API's policy is manual); its id.
    async fn register(web: &Web) -> String {
        let req = oasis_proto::RegisterRequest {
            token: web.operator.api.identity.join_token.clone(),
            nonce: format!("nonce-{:016}", 1),
            boot_mac: "52:54:00:00:00:07".into(),
            wireguard_key: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [7u8; 32]),
            agent_version: "0.1.0".into(),
            inventory: oasis_proto::Inventory { cpus: 2, memory_bytes: 2 << 30, ..Default::default() },
        };
        let mut req = Request::builder()
            .method("POST")
            .uri(oasis_proto::REGISTER_PATH)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&req).unwrap()))
            .unwrap();
        req.extensions_mut().insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 100], 40000))));
        let res = crate::api::router(web.operator.api.clone()).oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        web.operator.api.registry.lock().await.records().next().unwrap().id.clone()
    }

    async fn state_of(web: &Web) -> oasis_proto::MachineState {
        web.operator.api.registry.lock().await.records().next().unwrap().state
    }

    /// The machines page lists a pending machine; its page's accept is confirmed on a page of its
    /// own, refused without the form token, done with it (the operator's accept), and said.
    #[tokio::test]
    async fn a_machine_is_accepted_from_its_page_after_a_confirmation() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let id = register(&web).await;
        let token = web.operator.api.identity.admin_token.clone();
        let session = session_of(&send(&web, "POST", "/login", None, &format!("token={token}")).await);

        let list = send(&web, "GET", "/machines", Some(&session), "").await;
        assert_eq!(list.status, StatusCode::OK);
        for words in [id.as_str(), "52:54:00:00:00:07", "waiting to be accepted", "2 CPUs, 2.0 GiB, 0 disks"] {
            assert!(list.body.contains(words), "{words} in {}", list.body);
        }
        let page = send(&web, "GET", &format!("/machines/{id}"), Some(&session), "").await;
        assert!(page.body.contains(&format!("/machines/{id}/confirm/accept")), "{}", page.body);
        let confirm = send(&web, "GET", &format!("/machines/{id}/confirm/accept"), Some(&session), "").await;
        assert!(confirm.body.contains(&format!("Accept {id}?")) && confirm.body.contains("Yes, accept"));
        let csrf = csrf_of(&confirm);

        let act = format!("/machines/{id}/act");
        let forged = send(&web, "POST", &act, Some(&session), "action=accept&csrf=forged").await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        assert_eq!(state_of(&web).await, oasis_proto::MachineState::Pending, "nothing done");

        let done = send(&web, "POST", &act, Some(&session), &format!("action=accept&csrf={csrf}")).await;
        assert_eq!(
            (done.status, location(&done)),
            (StatusCode::SEE_OTHER, format!("/machines/{id}?done=accept").as_str())
        );
        assert_eq!(state_of(&web).await, oasis_proto::MachineState::Accepted);
        web.operator.api.store.flush().await.unwrap();
        let page = send(&web, "GET", location(&done), Some(&session), "").await;
        assert!(
            page.body.contains("Accepted: it joins the rack.") && page.body.contains(">accepted<"),
            "{}",
            page.body
        );

        // What cannot be done is said on the machine's page; what does not exist is a 404.
        let off = send(&web, "POST", &act, Some(&session), &format!("action=power-off&csrf={csrf}")).await;
        assert_eq!(off.status, StatusCode::CONFLICT, "{}", off.body);
        assert!(off.body.contains("Not done:"), "{}", off.body);
        let nothing = send(&web, "POST", &act, Some(&session), &format!("action=explode&csrf={csrf}")).await;
        assert_eq!(nothing.status, StatusCode::NOT_FOUND);
        let nobody = send(&web, "GET", "/machines/nobody", Some(&session), "").await;
        assert_eq!(nobody.status, StatusCode::NOT_FOUND);
        assert!(nobody.body.contains("No machine is called"), "{}", nobody.body);
        let hostile = send(&web, "GET", "/machines/%3Cscript%3E", Some(&session), "").await;
        assert!(!hostile.body.contains("<script>"), "names are escaped: {}", hostile.body);
    }

    /// The cluster page: members in plain words and the mesh as a matrix of ages.
    #[test]
    fn the_cluster_page_shows_members_and_the_mesh_matrix() {
        use oasis_core::assembly::status::{MemberView, MeshPair};
        let member = |id: &str, machine: &str, leader: bool, learner: bool| MemberView {
            id: id.into(),
            machine: Some(machine.into()),
            learner,
            healthy: true,
            leader,
            db_size: None,
            revision: None,
            raft_index: None,
            version: Some("3.5.16".into()),
        };
        let pair = |from: &str, to: &str, age: Option<u64>| MeshPair {
            from: from.into(),
            to: to.into(),
            handshake_age_secs: age,
        };
        let status = ClusterStatus {
            health: oasis_core::assembly::status::Health::Degraded,
            members: vec![member("8e9e05c52164694d", "m1", true, false), member("91bc3c398fb3c146", "m2", false, true)],
            mesh: vec![pair("m1", "m2", Some(12)), pair("m2", "m1", None)],
            ..Default::default()
        };
        let page = pages::cluster("t", Some(&status)).into_string();
        for words in
            ["one more failure could stop it", "8e9e05c52164694d", "not yet (catching up)", "3.5.16", "12 s", "never"]
        {
            assert!(page.contains(words), "{words} in {page}");
        }
        assert!(pages::cluster("t", None).into_string().contains("not managed by this appliance"));
    }

    /// The events page: newest first, filtered by kind or words.
    #[tokio::test]
    async fn the_events_page_filters_by_kind_or_words() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let store = &web.operator.api.store;
        for (kind, message) in
            [("power-on", "m1 power on"), ("machine-accepted", "m2 accepted"), ("power-off", "m3 <b>off</b>")]
        {
            store.record_event(Happening { kind, mac: None, message: message.into() });
        }
        store.flush().await.unwrap();
        let token = web.operator.api.identity.admin_token.clone();
        let session = session_of(&send(&web, "POST", "/login", None, &format!("token={token}")).await);
        let all = send(&web, "GET", "/events", Some(&session), "").await;
        let (first, last) = (all.body.find("m3 &lt;b&gt;off").unwrap(), all.body.find("m1 power on").unwrap());
        assert!(first < last, "newest first, escaped: {}", all.body);
        let power = send(&web, "GET", "/events?q=POWER", Some(&session), "").await;
        assert!(power.body.contains("m1 power on") && !power.body.contains("m2 accepted"), "{}", power.body);
        let none = send(&web, "GET", "/events?q=nothing-like-it", Some(&session), "").await;
        assert!(none.body.contains("No event matches"), "{}", none.body);
        assert_eq!(send(&web, "GET", "/cluster", None, "").await.status, StatusCode::SEE_OTHER, "behind the login");
    }

    /// A bundle from the updates page needs the form token before the file; one that fails its
    /// checks is said and changes nothing. The downloads are made from the store, behind the login.
    #[tokio::test]
    async fn a_bundle_upload_needs_its_form_token_and_the_downloads_need_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let id = register(&web).await;
        let token = web.operator.api.identity.admin_token.clone();
        let login = send(&web, "POST", "/login", None, &format!("token={token}")).await;
        let session = session_of(&login);
        let csrf = csrf_of(&send(&web, "GET", "/updates", Some(&session), "").await);
        let upload = |fields: Vec<(&'static str, String)>| {
            let web = web.clone();
            let session = session.clone();
            async move {
                let mut body = String::new();
                for (name, value) in fields {
                    body += &format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"");
                    if name == "bundle" {
                        body += "; filename=\"n.bundle\"\r\nContent-Type: application/octet-stream";
                    }
                    body += &format!("\r\n\r\n{value}\r\n");
                }
                body += "--XyZ--\r\n";
                let req = Request::post("/updates/upload")
                    .header(header::COOKIE, format!("{}={session}", session::COOKIE))
                    .header(header::CONTENT_TYPE, "multipart/form-data; boundary=XyZ")
                    .body(Body::from(body))
                    .unwrap();
                let res = router(web).oneshot(req).await.unwrap();
                let status = res.status();
                let bytes = axum::body::to_bytes(res.into_body(), 1 << 20).await.unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        let (status, _) = upload(vec![("bundle", "OASISBDL".into()), ("csrf", csrf.clone())]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "the file before the form token");
        let (status, page) = upload(vec![("csrf", csrf.clone()), ("bundle", "not a bundle".into())]).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{page}");
        assert!(page.contains("Not installed:") && page.contains("Nothing was changed"), "{page}");
        let (status, page) = upload(vec![("csrf", csrf)]).await;
        assert_eq!(status, StatusCode::CONFLICT, "{page}");
        assert!(page.contains("choose a bundle file"), "{page}");

        assert_eq!(send(&web, "GET", "/downloads/inventory.txt", None, "").await.status, StatusCode::SEE_OTHER);
        let inventory = send(&web, "GET", "/downloads/inventory.txt", Some(&session), "").await;
        assert_eq!(inventory.status, StatusCode::OK);
        assert!(inventory.body.starts_with("ID ") && inventory.body.contains(&id), "{}", inventory.body);
        let disposition = inventory.headers[header::CONTENT_DISPOSITION].to_str().unwrap();
        assert_eq!(disposition, "attachment; filename=\"inventory.txt\"");
        for missing in ["kubeconfig", "cluster-status.txt", "..%2Fadmin-token"] {
            let page = send(&web, "GET", &format!("/downloads/{missing}"), Some(&session), "").await;
            assert_eq!(page.status, StatusCode::NOT_FOUND, "{missing}");
        }
        let page = send(&web, "GET", "/downloads", Some(&session), "").await;
        assert!(page.body.contains("kubeconfig</strong>: not here yet"), "{}", page.body);
    }

    /// `/live` tells an open page when the store commits, and only while its session lives.
    #[tokio::test]
    async fn an_open_page_is_told_of_each_commit_while_its_session_lives() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        assert_eq!(send(&web, "GET", "/live", None, "").await.status, StatusCode::UNAUTHORIZED);
        let token = web.operator.api.identity.admin_token.clone();
        let session = session_of(&send(&web, "POST", "/login", None, &format!("token={token}")).await);
        let req = Request::get("/live")
            .header(header::COOKIE, format!("{}={session}", session::COOKIE))
            .body(Body::empty())
            .unwrap();
        let res = router(web.clone()).oneshot(req).await.unwrap();
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut frames = res.into_body().into_data_stream();
        let store = &web.operator.api.store;
        store.record_event(Happening { kind: "test", mac: None, message: "a change".into() });
        store.flush().await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), frames.next()).await;
        let frame = next.expect("told within 10 s").expect("a frame").unwrap();
        assert_eq!(String::from_utf8_lossy(&frame), "event: change\ndata: 1\n\n");
        // Logged out: the next change ends the stream instead of telling it.
        web.sessions.logout(&session);
        store.record_event(Happening { kind: "test", mac: None, message: "another".into() });
        store.flush().await.unwrap();
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), frames.next()).await;
        assert!(next.expect("ended within 10 s").is_none(), "the stream ends with the session");
    }

    /// The updates page: the generations and no rollout; a command is confirmed first, refused
    /// without the form token, and one the rollout cannot take is said, not ignored.
    #[tokio::test]
    async fn the_updates_page_confirms_commands_and_says_why_one_is_not_done() {
        let dir = tempfile::tempdir().unwrap();
        let web = web(dir.path());
        let token = web.operator.api.identity.admin_token.clone();
        let session = session_of(&send(&web, "POST", "/login", None, &format!("token={token}")).await);
        let page = send(&web, "GET", "/updates", Some(&session), "").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.body.contains("No upgrade has run") && page.body.contains("(current)"), "{}", page.body);
        let confirm = send(&web, "GET", "/updates/confirm/pause", Some(&session), "").await;
        assert!(confirm.body.contains("Pause the upgrade?"), "{}", confirm.body);
        let csrf = csrf_of(&confirm);
        let forged = send(&web, "POST", "/updates/command", Some(&session), "command=pause&csrf=x").await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
        let pause = send(&web, "POST", "/updates/command", Some(&session), &format!("command=pause&csrf={csrf}")).await;
        assert_eq!(pause.status, StatusCode::CONFLICT, "{}", pause.body);
        assert!(pause.body.contains("Not done: no rollout is running to pause"), "{}", pause.body);
        let odd = send(&web, "POST", "/updates/command", Some(&session), &format!("command=explode&csrf={csrf}")).await;
        assert_eq!(odd.status, StatusCode::NOT_FOUND);
        assert_eq!(
            send(&web, "GET", "/updates/confirm/explode", Some(&session), "").await.status,
            StatusCode::NOT_FOUND
        );
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
