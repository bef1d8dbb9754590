//! Who is logged in to the web page: a session per login with the admin token, kept in memory
//! (an appliance restart ends every session, and the page says so), each with its own token
//! against cross-site forgery. Wrong tokens are counted per source address: past
//! [`MOST_FAILURES`] within [`FAILURE_WINDOW`], that address is refused until the window passes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use oasis_core::registry::secrets_equal;

use crate::identity::random_token;

/// How long a session lasts from its login: a working day.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The most sessions kept at once; a new login past it ends the oldest.
const MOST_SESSIONS: usize = 64;
/// Wrong tokens from one address within [`FAILURE_WINDOW`] before it is refused.
pub const MOST_FAILURES: usize = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// The cookie that names a session.
pub const COOKIE: &str = "oasis_session";

/// The sessions of the web page and the failed logins.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

/// One login.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every form of this session carries (checked on each change).
    pub csrf: String,
    started: Instant,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not the admin token; how many more tries this address has in the window.
    WrongToken { tries_left: usize },
    /// Too many wrong tokens from this address lately: wait this long.
    TooMany { wait: Duration },
}

impl Sessions {
    /// A new session when `token` is the admin token (`admin`): its id (the cookie's value).
    pub fn login(&self, from: IpAddr, token: &str, admin: &str) -> Result<String, Refusal> {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let recent = failures.entry(from).or_default();
        recent.retain(|at| now.duration_since(*at) < FAILURE_WINDOW);
        if recent.len() >= MOST_FAILURES {
            let wait = FAILURE_WINDOW.saturating_sub(now.duration_since(recent[0]));
            return Err(Refusal::TooMany { wait });
        }
        if !secrets_equal(token.trim(), admin) {
            recent.push(now);
            return Err(Refusal::WrongToken { tries_left: MOST_FAILURES - recent.len() });
        }
        failures.remove(&from);
        drop(failures);
        let id = format!("{}{}", random_token(), random_token());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, s| now.duration_since(s.started) < SESSION_LIFETIME);
        if open.len() >= MOST_SESSIONS {
            if let Some(oldest) = open.iter().min_by_key(|(_, s)| s.started).map(|(id, _)| id.clone()) {
                open.remove(&oldest);
            }
        }
        open.insert(id.clone(), Session { csrf: random_token(), started: now });
        Ok(id)
    }

    /// The live session `id` names, if any.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.get(id) {
            Some(s) if s.started.elapsed() < SESSION_LIFETIME => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn logout(&self, id: &str) {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The `Set-Cookie` of a new session: sent only over HTTPS, never to scripts, never with a
/// request another site starts.
pub fn cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_LIFETIME.as_secs())
}

/// The `Set-Cookie` that ends it in the browser.
pub fn cookie_cleared() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session id in a `Cookie` header, if any.
pub fn session_id(cookie_header: &str) -> Option<&str> {
    cookie_header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_admin_token_opens_a_session_and_logout_ends_it() {
        let sessions = Sessions::default();
        let from: IpAddr = "10.0.0.9".parse().unwrap();
        let id = sessions.login(from, &format!(" {ADMIN}\n"), ADMIN).unwrap();
        let session = sessions.get(&id).expect("live");
        assert_eq!(session.csrf.len(), 32);
        assert_ne!(session.csrf, id);
        let other = sessions.login(from, ADMIN, ADMIN).unwrap();
        assert_ne!(other, id, "each login its own session");
        sessions.logout(&id);
        assert!(sessions.get(&id).is_none());
        assert!(sessions.get(&other).is_some());
        assert!(sessions.get("guess").is_none());
    }

    #[test]
    fn wrong_tokens_are_counted_per_address_and_then_refused() {
        let sessions = Sessions::default();
        let (from, elsewhere): (IpAddr, IpAddr) = ("10.0.0.9".parse().unwrap(), "10.0.0.10".parse().unwrap());
        for left in (0..MOST_FAILURES).rev() {
            assert_eq!(sessions.login(from, "guess", ADMIN), Err(Refusal::WrongToken { tries_left: left }));
        }
        assert!(matches!(sessions.login(from, ADMIN, ADMIN), Err(Refusal::TooMany { .. })), "even the right one");
        assert!(sessions.login(elsewhere, ADMIN, ADMIN).is_ok(), "another address is not held");
    }

    #[test]
    fn the_cookie_is_secure_http_only_and_strict() {
        let set = cookie("abc");
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
            assert!(set.contains(flag), "{flag} in {set}");
        }
        assert!(cookie_cleared().contains("Max-Age=0"));
        assert_eq!(session_id("theme=dark; oasis_session=abc; x=y"), Some("abc"));
        assert_eq!(session_id("oasis_sessionx=abc"), None);
    }
}
