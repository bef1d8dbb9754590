//! The few parts of Redfish documents the driver reads, and the decisions taken from them (which
//! ResetType to send), without I/O so they are unit-tested on real documents.
//!
//! Parsing is lenient about everything it does not read (a BMC's ComputerSystem carries dozens of
//! vendor fields) and strict about what it does: a `PowerState` that is missing or not one of
//! Redfish's values is a protocol error, never a guess. The test documents in `testdata/` are
//! answers of sushy-tools 2.2.0's emulator (fake driver), saved verbatim.

use serde::Deserialize;

use crate::{PowerAction, PowerState};

/// At most this many characters of a BMC's own message go into an error: it is the BMC's text,
/// printed to an operator, so it is bounded and stripped of control characters.
const MESSAGE_CHARS: usize = 300;

/// A resource collection (`/redfish/v1/Systems`): only its members' paths.
#[derive(Debug, Deserialize)]
struct Collection {
    #[serde(rename = "Members")]
    members: Vec<Link>,
}

#[derive(Debug, Deserialize)]
struct Link {
    #[serde(rename = "@odata.id")]
    id: String,
}

/// A ComputerSystem: its power state, boot override and reset action.
#[derive(Debug, Deserialize)]
pub(crate) struct System {
    #[serde(rename = "PowerState")]
    power_state: Option<String>,
    #[serde(rename = "Boot")]
    boot: Option<Boot>,
    #[serde(rename = "Actions")]
    actions: Option<Actions>,
}

#[derive(Debug, Deserialize)]
struct Boot {
    #[serde(rename = "BootSourceOverrideTarget")]
    target: Option<String>,
    #[serde(rename = "BootSourceOverrideEnabled")]
    enabled: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Actions {
    #[serde(rename = "#ComputerSystem.Reset")]
    reset: Option<ResetAction>,
}

#[derive(Debug, Deserialize)]
struct ResetAction {
    target: Option<String>,
    /// Absent on BMCs that describe the action with `@Redfish.ActionInfo` instead: then any
    /// standard value may be tried.
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    allowable: Option<Vec<String>>,
}

/// The paths (`@odata.id`) of a collection's members.
pub(crate) fn members(body: &[u8]) -> Result<Vec<String>, String> {
    let collection: Collection = serde_json::from_slice(body).map_err(|e| format!("not a Redfish collection: {e}"))?;
    Ok(collection.members.into_iter().map(|m| m.id).collect())
}

/// Picks the system to control among `members`: the one named by `wanted` (its Id, the last
/// segment of its path, or its whole path), else the only one. The error says what there is.
pub(crate) fn choose_system(members: &[String], wanted: Option<&str>) -> Result<String, String> {
    let listed = || members.iter().map(|m| last_segment(m)).collect::<Vec<_>>().join(", ");
    match wanted {
        Some(want) => members
            .iter()
            .find(|m| m.trim_end_matches('/') == want.trim_end_matches('/') || last_segment(m) == want)
            .cloned()
            .ok_or_else(|| format!("it has no system {want:?} (it has: {}); name one of those", listed())),
        None => match members {
            [only] => Ok(only.clone()),
            [] => Err("it lists no systems; check that the BMC manages a machine".to_string()),
            _ => Err(format!(
                "it manages {} systems ({}); name the one to control in the config",
                members.len(),
                listed()
            )),
        },
    }
}

fn last_segment(path: &str) -> &str {
    path.trim_end_matches('/').rsplit('/').next().unwrap_or(path)
}

impl System {
    pub(crate) fn parse(body: &[u8]) -> Result<System, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a Redfish ComputerSystem: {e}"))
    }

    /// `PowerState`: `On` and `Off`; `PoweringOn` still counts as off and `PoweringOff` as on
    /// (neither has arrived), `Paused` as on (it is powered).
    pub(crate) fn power_state(&self) -> Result<PowerState, String> {
        match self.power_state.as_deref() {
            Some("On") | Some("PoweringOff") | Some("Paused") => Ok(PowerState::On),
            Some("Off") | Some("PoweringOn") => Ok(PowerState::Off),
            Some(other) => Err(format!("a ComputerSystem whose PowerState is {:?}", bounded(other))),
            None => Err("a ComputerSystem without PowerState".to_string()),
        }
    }

    /// Where the reset action is posted: its `target`, else the standard path under `system`.
    pub(crate) fn reset_target(&self, system: &str) -> String {
        self.actions
            .as_ref()
            .and_then(|a| a.reset.as_ref())
            .and_then(|r| r.target.clone())
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", system.trim_end_matches('/')))
    }

    fn allowable(&self) -> Option<&[String]> {
        self.actions.as_ref()?.reset.as_ref()?.allowable.as_deref()
    }

    /// The boot override as read back, for the operator: `target/enabled`.
    pub(crate) fn boot_override(&self) -> (Option<&str>, Option<&str>) {
        match &self.boot {
            Some(boot) => (boot.target.as_deref(), boot.enabled.as_deref()),
            None => (None, None),
        }
    }

    /// What to send for `action` from `state` (this document's), given the ResetTypes it lists.
    pub(crate) fn plan(&self, action: PowerAction, state: PowerState) -> Plan {
        plan(action, state, self.allowable())
    }
}

/// What a power action comes to on this BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The machine is already as asked: nothing is sent (some BMCs refuse `On` when on).
    Nothing,
    /// POST this `ResetType`.
    Reset(&'static str),
    /// The BMC lists none of the ResetTypes that would do it.
    NotOffered { listed: Vec<String> },
}

/// The ResetType for `action` from `state`. Cycle prefers `PowerCycle` (a real power removal)
/// when the BMC lists it, else `ForceRestart`; a cycle of a machine that is off powers it on
/// (`On`), since "off then on" from off is on, and a hard reset of an off machine is refused or
/// ignored by many BMCs. Without a list every standard value may be tried, so the first is.
pub(crate) fn plan(action: PowerAction, state: PowerState, allowable: Option<&[String]>) -> Plan {
    let candidates: &[&'static str] = match (action, state) {
        (PowerAction::On, PowerState::On) | (PowerAction::Off, PowerState::Off) => return Plan::Nothing,
        (PowerAction::On, PowerState::Off) | (PowerAction::Cycle, PowerState::Off) => &["On", "ForceOn"],
        (PowerAction::Off, PowerState::On) => &["ForceOff"],
        (PowerAction::Cycle, PowerState::On) => &["PowerCycle", "ForceRestart"],
    };
    let Some(listed) = allowable else {
        // Not every BMC lists PowerCycle's absence; ForceRestart is the one every BMC has.
        let preferred = if action == PowerAction::Cycle { "ForceRestart" } else { candidates[0] };
        return Plan::Reset(preferred);
    };
    match candidates.iter().find(|c| listed.iter().any(|l| l == *c)) {
        Some(reset) => Plan::Reset(reset),
        None => Plan::NotOffered { listed: listed.iter().map(|l| bounded(l)).collect() },
    }
}

/// The BMC's own words from a Redfish error body: the `@Message.ExtendedInfo` messages, else
/// `error.message`; `None` when the body has neither (or is not JSON).
pub(crate) fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let extended: Vec<&str> = error
        .get("@Message.ExtendedInfo")
        .and_then(|i| i.as_array())
        .map(|infos| infos.iter().filter_map(|i| i.get("Message")?.as_str()).collect())
        .unwrap_or_default();
    let text = if extended.is_empty() { error.get("message")?.as_str()?.to_string() } else { extended.join("; ") };
    let text = bounded(&text);
    (!text.is_empty()).then_some(text)
}

/// `text` as it may be shown: control characters replaced, trimmed, at most [`MESSAGE_CHARS`].
pub(crate) fn bounded(text: &str) -> String {
    let clean: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    match clean.char_indices().nth(MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}...", &clean[..cut]),
        None => clean.to_string(),
    }
}

/// The start of a body that is not what was expected, for an error message.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(120)]);
    if text.trim().is_empty() {
        "an empty body".to_string()
    } else {
        format!("{:?}", bounded(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYSTEMS: &[u8] = include_bytes!("testdata/systems.json");
    const SYSTEM_OFF: &[u8] = include_bytes!("testdata/system_off.json");
    const SYSTEM_ON_PXE: &[u8] = include_bytes!("testdata/system_on_pxe.json");
    const ERROR_501: &[u8] = include_bytes!("testdata/error_501.json");
    const ERROR_401: &[u8] = include_bytes!("testdata/error_401.json");
    const ERROR_404: &[u8] = include_bytes!("testdata/error_404.json");
    const PATH: &str = "/redfish/v1/Systems/11111111-2222-3333-4444-555555555555";

    #[test]
    fn reads_the_systems_collection_and_takes_its_only_member() {
        let members = members(SYSTEMS).unwrap();
        assert_eq!(members, [PATH]);
        assert_eq!(choose_system(&members, None).unwrap(), PATH);
        assert_eq!(choose_system(&members, Some("11111111-2222-3333-4444-555555555555")).unwrap(), PATH);
        assert_eq!(choose_system(&members, Some(PATH)).unwrap(), PATH);
        let missing = choose_system(&members, Some("System.Embedded.1")).unwrap_err();
        assert!(missing.contains("no system \"System.Embedded.1\"") && missing.contains("11111111"), "{missing}");
    }

    #[test]
    fn several_or_no_systems_need_a_name() {
        let two = vec!["/redfish/v1/Systems/a".to_string(), "/redfish/v1/Systems/b/".to_string()];
        let err = choose_system(&two, None).unwrap_err();
        assert!(err.contains("2 systems (a, b)"), "{err}");
        assert_eq!(choose_system(&two, Some("b")).unwrap(), "/redfish/v1/Systems/b/");
        assert!(choose_system(&[], None).unwrap_err().contains("no systems"));
    }

    #[test]
    fn reads_power_state_boot_override_and_reset_action_of_a_real_system() {
        let off = System::parse(SYSTEM_OFF).unwrap();
        assert_eq!(off.power_state().unwrap(), PowerState::Off);
        assert_eq!(off.boot_override(), (Some("Hdd"), Some("Continuous")));
        assert_eq!(off.reset_target(PATH), format!("{PATH}/Actions/ComputerSystem.Reset"));
        assert_eq!(off.plan(PowerAction::On, off.power_state().unwrap()), Plan::Reset("On"));
        assert_eq!(off.plan(PowerAction::Off, off.power_state().unwrap()), Plan::Nothing);
        assert_eq!(off.plan(PowerAction::Cycle, off.power_state().unwrap()), Plan::Reset("On"));

        let on = System::parse(SYSTEM_ON_PXE).unwrap();
        assert_eq!(on.power_state().unwrap(), PowerState::On);
        // sushy-tools reports every override as Continuous, also one asked as Once.
        assert_eq!(on.boot_override(), (Some("Pxe"), Some("Continuous")));
        assert_eq!(on.plan(PowerAction::Off, on.power_state().unwrap()), Plan::Reset("ForceOff"));
        // sushy lists ForceRestart, not PowerCycle.
        assert_eq!(on.plan(PowerAction::Cycle, on.power_state().unwrap()), Plan::Reset("ForceRestart"));
        assert_eq!(on.plan(PowerAction::On, on.power_state().unwrap()), Plan::Nothing);
    }

    #[test]
    fn a_system_without_a_known_power_state_is_a_protocol_error() {
        let mut doc: serde_json::Value = serde_json::from_slice(SYSTEM_OFF).unwrap();
        doc.as_object_mut().unwrap().remove("PowerState");
        let system = System::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(system.power_state().unwrap_err(), "a ComputerSystem without PowerState");
        doc["PowerState"] = "Sleeping\u{7}".into();
        let system = System::parse(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert!(system.power_state().unwrap_err().contains("\"Sleeping\""));
        doc["PowerState"] = 1.into();
        assert!(System::parse(&serde_json::to_vec(&doc).unwrap())
            .unwrap_err()
            .contains("not a Redfish ComputerSystem"));
        assert!(System::parse(b"<html>").is_err());
        assert!(members(SYSTEM_OFF).unwrap_err().contains("not a Redfish collection"));
    }

    #[test]
    fn reset_types_follow_what_the_bmc_lists() {
        let listed = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let with_cycle = listed(&["On", "ForceOff", "PowerCycle", "ForceRestart"]);
        assert_eq!(plan(PowerAction::Cycle, PowerState::On, Some(&with_cycle)), Plan::Reset("PowerCycle"));
        let force_on = listed(&["ForceOn", "ForceOff"]);
        assert_eq!(plan(PowerAction::On, PowerState::Off, Some(&force_on)), Plan::Reset("ForceOn"));
        assert_eq!(
            plan(PowerAction::Cycle, PowerState::On, Some(&force_on)),
            Plan::NotOffered { listed: listed(&["ForceOn", "ForceOff"]) }
        );
        assert_eq!(plan(PowerAction::Cycle, PowerState::On, None), Plan::Reset("ForceRestart"));
        assert_eq!(plan(PowerAction::Off, PowerState::On, None), Plan::Reset("ForceOff"));
    }

    #[test]
    fn takes_the_bmcs_own_message_from_real_error_bodies() {
        assert_eq!(error_message(ERROR_501).unwrap(), "Power state PowerCycle is not supported");
        assert_eq!(error_message(ERROR_401).unwrap(), "Incorrect username or password");
        assert_eq!(error_message(ERROR_404).unwrap(), "Fake system nope was not found");
        // sushy's errors carry no ExtendedInfo messages; BMCs that follow the Redfish
        // specification's error example (DSP0266, "Error responses") put theirs there.
        let extended = br##"{"error": {"code": "Base.1.8.GeneralError",
            "message": "A general error has occurred. See ExtendedInfo for more information.",
            "@Message.ExtendedInfo": [{"@odata.type": "#Message.v1_0_0.Message",
                "MessageId": "Base.1.8.PropertyValueNotInList", "RelatedProperties": ["#/IndicatorLED"],
                "Message": "The value Red for the property IndicatorLED is not in the list of acceptable values",
                "MessageArgs": ["RED", "IndicatorLED"], "Severity": "Warning",
                "Resolution": "Remove the property from the request body and resubmit the request if the operation failed"}]}}"##;
        assert_eq!(
            error_message(extended).unwrap(),
            "The value Red for the property IndicatorLED is not in the list of acceptable values"
        );
        assert_eq!(error_message(b"not json"), None);
        assert_eq!(error_message(br#"{"error":{}}"#), None);
        let long = format!(r#"{{"error":{{"message":"{}\nnext"}}}}"#, "x".repeat(1000));
        let bounded = error_message(long.as_bytes()).unwrap();
        assert!(bounded.len() < 310 && bounded.ends_with("..."), "{bounded}");
    }

    #[test]
    fn excerpts_are_short_and_printable() {
        assert_eq!(excerpt(b""), "an empty body");
        assert_eq!(excerpt(b"<html>\x1b[31m"), "\"<html> [31m\"");
        assert!(excerpt(&[b'a'; 5000]).len() < 130);
    }
}
