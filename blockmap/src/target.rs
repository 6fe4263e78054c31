//! iSCSI target definitions as the metadata store keeps them: IQN, LUNs
//! mapped to images, the initiator ACL and CHAP credentials (RFC 7143 §12.1.3).
//! The target daemon reads these; it does not own them.

use crate::error::{Error, Result};
use crate::types::{ImageName, Iqn};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Largest LUN number we hand out (SAM-5 flat space addressing: 14 bits).
pub const MAX_LUN: u64 = 16383;

/// One CHAP identity: user name and secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChapCredential {
    /// CHAP_N.
    pub user: String,
    /// The shared secret.
    pub secret: String,
}

impl ChapCredential {
    /// Validates a credential: non-empty user, secret of 12 to 255 bytes
    /// (RFC 7143 §12.1.3 asks for at least 96 bits; initiators such as
    /// open-iscsi reject shorter ones).
    pub fn new(user: &str, secret: &str) -> Result<Self> {
        if user.is_empty() || user.len() > 255 {
            return Err(Error::invalid("CHAP user", "must be 1 to 255 bytes"));
        }
        if secret.len() < 12 || secret.len() > 255 {
            return Err(Error::invalid(
                "CHAP secret",
                "must be 12 to 255 bytes (RFC 7143 12.1.3)",
            ));
        }
        Ok(Self {
            user: user.into(),
            secret: secret.into(),
        })
    }
}

/// CHAP settings of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chap {
    /// What the initiator must prove.
    pub initiator: ChapCredential,
    /// What the target proves back, for mutual CHAP.
    pub mutual: Option<ChapCredential>,
}

/// An iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its name.
    pub iqn: Iqn,
    /// LUN number to image.
    pub luns: BTreeMap<u64, ImageName>,
    /// Initiators allowed to log in. Empty (a new target's ACL) means no
    /// ACL: every initiator may log in (CHAP, when set, still applies);
    /// once it lists one initiator, only the listed ones may.
    pub acl: BTreeSet<Iqn>,
    /// CHAP, if required.
    pub chap: Option<Chap>,
}

impl Target {
    /// A target with no LUNs, an empty ACL (every initiator may log in) and
    /// no CHAP.
    pub fn new(iqn: Iqn) -> Self {
        Self {
            iqn,
            luns: BTreeMap::new(),
            acl: BTreeSet::new(),
            chap: None,
        }
    }

    /// Maps `image` at `lun`, or at the lowest free LUN; returns the LUN.
    pub fn add_lun(&mut self, image: ImageName, lun: Option<u64>) -> Result<u64> {
        let lun = match lun {
            Some(l) if l > MAX_LUN => {
                return Err(Error::invalid("LUN", format!("{l} is above {MAX_LUN}")))
            }
            Some(l) => l,
            None => (0..=MAX_LUN)
                .find(|l| !self.luns.contains_key(l))
                .ok_or_else(|| Error::invalid("LUN", "no free LUN left"))?,
        };
        if self.luns.contains_key(&lun) {
            return Err(Error::LunInUse {
                target: self.iqn.to_string(),
                lun,
            });
        }
        self.luns.insert(lun, image);
        Ok(lun)
    }
}
