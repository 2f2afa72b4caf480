//! An in-memory [`Host`]: links appear when a test (standing in for EC2's attach) adds them, and
//! everything configured is kept in maps, with the same idempotency as the real host.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::EniLink;
use super::EniState;
use super::Host;
use super::HostError;
use super::PodRules;
use super::SnatConfig;

#[derive(Debug, Default)]
struct Inner {
    /// MAC → link name, as the kernel would name attached ENIs.
    links: BTreeMap<String, String>,
    /// MAC → configured ENI.
    enis: BTreeMap<String, EniLink>,
    /// Pod address → table.
    rules: BTreeMap<Ipv4Addr, u32>,
    snat: Option<SnatConfig>,
    /// How many mutating calls changed something (a restart that changes nothing leaves it).
    changes: u64,
}

/// An in-memory host.
#[derive(Debug, Default)]
pub struct MemHost {
    inner: Mutex<Inner>,
    link_added: tokio::sync::Notify,
}

impl MemHost {
    /// A host with no links.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes a link with `mac` appear (what the kernel does when EC2 attaches an ENI).
    pub fn add_link(&self, mac: &str, name: &str) {
        self.lock().links.insert(mac.to_ascii_lowercase(), name.to_owned());
        self.link_added.notify_waiters();
    }

    /// Makes the link with `mac` disappear (a detach), with its configuration.
    pub fn remove_link(&self, mac: &str) {
        let mut inner = self.lock();
        let mac = mac.to_ascii_lowercase();
        inner.links.remove(&mac);
        inner.enis.remove(&mac);
    }

    /// The SNAT configuration in force.
    pub fn snat(&self) -> Option<SnatConfig> {
        self.lock().snat.clone()
    }

    /// How many calls changed the host's configuration so far.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// The configured ENIs, by MAC.
    pub fn enis(&self) -> BTreeMap<String, EniLink> {
        self.lock().enis.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl Host for MemHost {
    async fn wait_for_link(&self, mac: &str, timeout: Duration) -> Result<String, HostError> {
        let mac = mac.to_ascii_lowercase();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.link_added.notified();
            if let Some(name) = self.lock().links.get(&mac) {
                return Ok(name.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(HostError::LinkTimeout { mac, waited: timeout });
            }
        }
    }

    async fn configure_eni(&self, eni: &EniLink) -> Result<(), HostError> {
        let mut inner = self.lock();
        let mac = eni.mac.to_ascii_lowercase();
        if !inner.links.contains_key(&mac) {
            return Err(HostError::Netlink(format!("no link with MAC {mac}")));
        }
        if inner.enis.get(&mac) != Some(eni) {
            inner.enis.insert(mac, eni.clone());
            inner.changes += 1;
        }
        Ok(())
    }

    async fn remove_eni(&self, eni: &EniLink) -> Result<(), HostError> {
        let mut inner = self.lock();
        let table = eni.table();
        let before = inner.rules.len();
        inner.rules.retain(|_, t| *t != table);
        let removed = inner.enis.remove(&eni.mac.to_ascii_lowercase()).is_some();
        if removed || inner.rules.len() != before {
            inner.changes += 1;
        }
        Ok(())
    }

    async fn eni_state(&self, mac: &str) -> Result<Option<EniState>, HostError> {
        let inner = self.lock();
        let mac = mac.to_ascii_lowercase();
        let Some(link) = inner.links.get(&mac) else {
            return Ok(None);
        };
        let eni = inner.enis.get(&mac);
        Ok(Some(EniState {
            link: link.clone(),
            mac,
            up: eni.is_some(),
            table: eni.map(EniLink::table),
            gateway: eni.map(|e| e.gateway),
        }))
    }

    async fn add_pod_rules(&self, rules: &PodRules) -> Result<(), HostError> {
        let mut inner = self.lock();
        if inner.rules.insert(rules.ip, rules.table) != Some(rules.table) {
            inner.changes += 1;
        }
        Ok(())
    }

    async fn del_pod_rules(&self, ip: Ipv4Addr) -> Result<(), HostError> {
        let mut inner = self.lock();
        if inner.rules.remove(&ip).is_some() {
            inner.changes += 1;
        }
        Ok(())
    }

    async fn pod_rules(&self) -> Result<Vec<PodRules>, HostError> {
        Ok(self
            .lock()
            .rules
            .iter()
            .map(|(&ip, &table)| PodRules { ip, table })
            .collect())
    }

    async fn configure_snat(&self, config: &SnatConfig) -> Result<(), HostError> {
        let mut inner = self.lock();
        if inner.snat.as_ref() != Some(config) {
            inner.snat = Some(config.clone());
            inner.changes += 1;
        }
        Ok(())
    }
}
