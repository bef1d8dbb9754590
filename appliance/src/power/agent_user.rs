//! BMC users made by machines' agents (`[power] agent_creates_user`, issue 17), as the Omni
//! bare-metal provider does: a machine without a `[[power.bmc]]` whose agent reads a BMC with a
//! LAN address from its system interface is asked, when it is accepted, to make an `oasis` user
//! there with a random password ([`oasis_proto::RegisterResponse::bmc_user`]). The agent reports
//! it in a heartbeat ([`oasis_proto::Heartbeat::bmc_account`]), over the pinned HTTPS channel
//! inside its management link; the appliance keeps it in the store's secrets and powers the
//! machine through that BMC from then on, across restarts. The config's BMC, when there is one,
//! always wins: a machine with one is never asked.

use std::net::Ipv4Addr;

use oasis_core::registry::Happening;
use oasis_power::ipmi::DEFAULT_PORT;
use oasis_proto::{BmcAccount, LocalBmc, MacAddr};
use serde::{Deserialize, Serialize};

use super::{ipmi_driver, Bmc, Origin, PowerControl};
use crate::store::{Store, StoreError};

/// The user an agent makes on its machine's BMC.
pub const AGENT_USER: &str = "oasis";
/// Where the store keeps the user an agent made, by the machine's boot MAC.
pub(super) const AGENT_ACCOUNT: &str = "bmc-account/";
/// The longest user name and password IPMI 2.0 carries.
const MOST_USER: usize = 16;
const MOST_PASSWORD: usize = 20;

/// A user an agent made, as the store keeps it.
#[derive(Serialize, Deserialize)]
pub(super) struct AgentAccount {
    address: Ipv4Addr,
    user: String,
    password: String,
}

impl PowerControl {
    /// The user the agent of machine `mac`, just accepted, is to make on its BMC (`own`, as it
    /// read it): only when the config allows it, the machine has no BMC oasis can use yet, and
    /// its BMC has a LAN channel with an address.
    pub fn user_for_agent(&self, mac: MacAddr, own: Option<&LocalBmc>) -> Option<String> {
        let reachable = own.is_some_and(|b| b.lan_channel.is_some() && b.address.is_some());
        (self.agent_creates_user && reachable && !self.has(mac)).then(|| AGENT_USER.to_string())
    }

    /// Takes what machine `mac`'s agent reports of the user it made: kept in the store (before
    /// the heartbeat is answered: an error here fails the heartbeat, and the agent sends it
    /// again) and used from then on. A user that was not made, or that oasis will not use, is
    /// an event saying why. Whether it is used.
    pub async fn adopt(&self, store: &Store, mac: MacAddr, id: &str, report: BmcAccount) -> Result<bool, StoreError> {
        let account = match self.checked(mac, &report) {
            Ok(account) => account,
            Err(why) => {
                store.record_event(Happening {
                    kind: "bmc-user-failed",
                    mac: Some(mac),
                    message: format!(
                        "{id}'s agent made no usable user {:?} on its BMC: {why}; to power {id} through its BMC, give \
                         it a [[power.bmc]] in the config",
                        report.user
                    ),
                });
                return Ok(false);
            }
        };
        let bytes = serde_json::to_vec(&account).expect("an account serializes");
        let (kept, name) = (store.clone(), format!("{AGENT_ACCOUNT}{mac}"));
        tokio::task::spawn_blocking(move || kept.replace_secret(&name, &bytes))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        self.install(mac, &account);
        store.record_event(Happening {
            kind: "bmc-user-made",
            mac: Some(mac),
            message: format!(
                "{id}'s agent made user {:?} on its BMC at {}: oasis powers {id} through it",
                account.user, account.address
            ),
        });
        Ok(true)
    }

    /// The account in `report`, or why oasis does not use it.
    fn checked(&self, mac: MacAddr, report: &BmcAccount) -> Result<AgentAccount, String> {
        if let Some(error) = &report.error {
            return Err(error.clone());
        }
        if !self.agent_creates_user {
            return Err("the config does not ask for it ([power] agent_creates_user)".into());
        }
        match self.bmc(mac).map(|b| b.origin) {
            Some(Origin::Config) => return Err("the config's [[power.bmc]] for it is used".into()),
            Some(Origin::Scan) => return Err("the BMC a [[power.scan]] found for it is used".into()),
            Some(Origin::Agent) | None => {}
        }
        let address = report.address.ok_or("its BMC has no LAN address")?;
        let password = report.password.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        if report.user.is_empty() || report.user.len() > MOST_USER {
            return Err(format!("a user name of {} bytes (IPMI allows 1 to {MOST_USER})", report.user.len()));
        }
        if password.is_empty() || password.len() > MOST_PASSWORD {
            return Err(format!("a password of {} bytes (IPMI allows 1 to {MOST_PASSWORD})", password.len()));
        }
        Ok(AgentAccount { address, user: report.user.clone(), password })
    }

    /// Uses `account` for machine `mac` (in place of a user its agent made before); never in
    /// place of the config's BMC.
    pub(super) fn install(&self, mac: MacAddr, account: &AgentAccount) {
        // The BMC's LAN address is what its agent read; RMCP+ answers on its usual port there.
        let endpoint = format!("{}:{DEFAULT_PORT}", account.address);
        let driver = ipmi_driver(&endpoint, &account.user, &account.password);
        let mut bmcs = self.bmcs.write().unwrap_or_else(|e| e.into_inner());
        if bmcs.iter().any(|b| b.machine == mac && b.origin != Origin::Agent) {
            return;
        }
        bmcs.retain(|b| b.machine != mac);
        bmcs.push(Bmc::new(mac, format!("ipmi {endpoint}"), Some(account.address), driver, Origin::Agent));
    }
}

#[cfg(test)]
mod tests {
    use oasis_core::config::power::PowerSettings;
    use oasis_proto::BmcPassword;

    use super::*;

    const PASSWORD: &str = "pw-0123456789abc";

    fn own(address: [u8; 4]) -> LocalBmc {
        LocalBmc { lan_channel: Some(1), address: Some(address.into()), ..Default::default() }
    }

    fn made(address: [u8; 4]) -> BmcAccount {
        BmcAccount {
            user: AGENT_USER.into(),
            address: Some(address.into()),
            password: Some(BmcPassword(PASSWORD.into())),
            error: None,
        }
    }

    /// Asked only when allowed and needed; the user made is kept in the store, used, linked,
    /// and used again by the next start; the password is in no event.
    #[tokio::test]
    async fn a_user_an_agent_made_is_kept_and_used_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mac: MacAddr = "52:54:00:0b:00:03".parse().unwrap();
        let off = PowerControl::new(&PowerSettings::default());
        assert_eq!(off.user_for_agent(mac, Some(&own([10, 0, 2, 4]))), None, "not unless the config asks");
        let power = PowerControl::new(&PowerSettings { agent_creates_user: true, ..Default::default() });
        assert_eq!(power.user_for_agent(mac, None), None, "no BMC seen");
        let no_address = LocalBmc { lan_channel: Some(1), ..Default::default() };
        assert_eq!(power.user_for_agent(mac, Some(&no_address)), None, "a BMC without an address");
        assert_eq!(power.user_for_agent(mac, Some(&own([10, 0, 2, 4]))).as_deref(), Some(AGENT_USER));

        assert!(power.adopt(&store, mac, "m3", made([10, 0, 2, 4])).await.unwrap());
        assert!(power.has(mac));
        assert_eq!(power.user_for_agent(mac, Some(&own([10, 0, 2, 4]))), None, "asked no more");
        assert_eq!(power.link(mac, None).as_deref(), Some("ipmi 10.0.2.4:623 (user made by its agent)"));
        let restarted = PowerControl::new(&PowerSettings { agent_creates_user: true, ..Default::default() });
        restarted.recall(&store);
        assert_eq!(restarted.machines(), [mac], "kept across a restart");
        store.flush().await.unwrap();
        let events = store.events(100).unwrap();
        assert!(events.iter().any(|e| e.kind == "bmc-user-made" && e.message.contains("10.0.2.4")), "{events:?}");
        assert!(!events.iter().any(|e| e.message.contains(PASSWORD)));
    }

    /// What oasis does not use is an event saying why, and changes nothing.
    #[tokio::test]
    async fn a_user_not_made_or_not_usable_is_said_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mac: MacAddr = "52:54:00:0b:00:03".parse().unwrap();
        let power = PowerControl::new(&PowerSettings { agent_creates_user: true, ..Default::default() });
        let failed =
            BmcAccount { password: None, error: Some("Set User Access: code 0xd4".into()), ..made([10, 0, 2, 4]) };
        let long = BmcAccount { password: Some(BmcPassword("x".repeat(21))), ..made([10, 0, 2, 4]) };
        let nowhere = BmcAccount { address: None, ..made([10, 0, 2, 4]) };
        for (report, why) in
            [(failed, "Set User Access: code 0xd4"), (long, "a password of 21 bytes"), (nowhere, "no LAN address")]
        {
            assert!(!power.adopt(&store, mac, "m3", report).await.unwrap());
            store.flush().await.unwrap();
            let events = store.events(100).unwrap();
            assert!(events.iter().any(|e| e.kind == "bmc-user-failed" && e.message.contains(why)), "{why}: {events:?}");
        }
        assert!(!power.has(mac));
        assert!(store.secrets_under(AGENT_ACCOUNT).unwrap().is_empty());
        let off = PowerControl::new(&PowerSettings::default());
        assert!(!off.adopt(&store, mac, "m3", made([10, 0, 2, 4])).await.unwrap(), "the config does not ask for it");
    }
}
