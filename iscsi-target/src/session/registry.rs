//! The session registry: assigns TSIHs and enforces session reinstatement
//! (RFC 7143 §6.3.5): a new login with the same initiator name, ISID and
//! target as a live session closes the old session before the new one starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Identifies a session for reinstatement: the I_T nexus (RFC 7143 §4.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// InitiatorName.
    pub initiator: String,
    /// ISID.
    pub isid: [u8; 6],
    /// TargetName.
    pub target: String,
}

struct Entry {
    tsih: u16,
    kill: Arc<Notify>,
    done: watch::Receiver<()>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<SessionKey, Entry>,
    next_tsih: u16,
}

/// The live sessions of a daemon.
#[derive(Default)]
pub struct SessionRegistry {
    inner: Mutex<Inner>,
}

/// A registered session. Dropping it removes the session from the registry
/// and tells a waiting reinstatement that this session is gone.
pub struct Registration {
    registry: Arc<SessionRegistry>,
    key: SessionKey,
    /// The TSIH assigned to the session.
    pub tsih: u16,
    /// Notified when a reinstating login wants this session closed.
    pub kill: Arc<Notify>,
    _done: watch::Sender<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if inner
            .sessions
            .get(&self.key)
            .is_some_and(|e| e.tsih == self.tsih)
        {
            inner.sessions.remove(&self.key);
        }
    }
}

/// How long a reinstating login waits for the old session to finish its
/// running commands.
const REINSTATE_WAIT: Duration = Duration::from_secs(30);

impl SessionRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single insert or remove), so poison is ignored.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a session with this TSIH is live.
    pub fn has_tsih(&self, tsih: u16) -> bool {
        self.lock().sessions.values().any(|e| e.tsih == tsih)
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a new session, first closing a live session with the same
    /// key (reinstatement) and waiting until it has drained.
    pub async fn register(self: &Arc<Self>, key: SessionKey) -> Registration {
        loop {
            let old = {
                let inner = self.lock();
                inner
                    .sessions
                    .get(&key)
                    .map(|e| (e.kill.clone(), e.done.clone()))
            };
            let Some((kill, mut done)) = old else { break };
            tracing::info!(initiator = %key.initiator, target = %key.target,
                "session reinstatement: closing the old session");
            kill.notify_one();
            // The sender is dropped with the old Registration.
            let _ = tokio::time::timeout(REINSTATE_WAIT, done.changed()).await;
            let mut inner = self.lock();
            if inner
                .sessions
                .get(&key)
                .is_some_and(|e| e.done.has_changed().is_err())
            {
                inner.sessions.remove(&key);
            }
        }
        let (done_tx, done_rx) = watch::channel(());
        let kill = Arc::new(Notify::new());
        let mut inner = self.lock();
        let tsih = loop {
            inner.next_tsih = inner.next_tsih.wrapping_add(1);
            let t = inner.next_tsih;
            if t != 0 && !inner.sessions.values().any(|e| e.tsih == t) {
                break t;
            }
        };
        inner.sessions.insert(
            key.clone(),
            Entry {
                tsih,
                kill: kill.clone(),
                done: done_rx,
            },
        );
        Registration {
            registry: self.clone(),
            key,
            tsih,
            kill,
            _done: done_tx,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(isid: u8) -> SessionKey {
        SessionKey {
            initiator: "iqn.test:i".into(),
            isid: [isid; 6],
            target: "iqn.test:t".into(),
        }
    }

    #[tokio::test]
    async fn reinstatement_closes_the_old_session_first() {
        let reg = Arc::new(SessionRegistry::default());
        let old = reg.register(key(1)).await;
        let other = reg.register(key(2)).await;
        assert_ne!(old.tsih, other.tsih);
        let kill = old.kill.clone();
        let old_tsih = old.tsih;
        // The old session ends when it is told to.
        let closer = tokio::spawn(async move {
            kill.notified().await;
            drop(old);
        });
        let new = reg.register(key(1)).await;
        closer.await.unwrap();
        assert_ne!(new.tsih, old_tsih);
        assert!(reg.has_tsih(new.tsih));
        assert!(!reg.has_tsih(old_tsih));
        assert_eq!(reg.len(), 2);
        drop(new);
        drop(other);
        assert!(reg.is_empty());
    }
}
