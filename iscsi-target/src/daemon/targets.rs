//! The set of targets a `locusd` serves: their login view (names, aliases,
//! ACLs, CHAP) and their SCSI side (LUNs over storage backends). Implements
//! the lookups that login and sessions use. Built from [`crate::config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::daemon::config::{parse_size, ChapConfig, Config, LunConfigFile, TargetConfig};
use crate::login::{ChapCredentials, DiscoveredTarget, Portal, TargetAuthInfo, TargetDirectory};
use crate::scsi::{LogicalUnit, LunConfig, ScsiTarget};
use crate::session::TargetLookup;
use drbd_like_sync::storage::{self, EngineConfig};

/// The portal group tag of every Locus portal (one portal group per target).
pub const PORTAL_GROUP_TAG: u16 = 1;

/// Building a target failed; the message names the target and LUN.
#[derive(Debug, thiserror::Error)]
pub enum TargetSetupError {
    /// A backing file could not be opened or created.
    #[error("target {target} LUN {lun}: cannot open backing file {path}: {source}")]
    Backend {
        /// Target name.
        target: String,
        /// LUN.
        lun: u64,
        /// Backing file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: storage::StorageError,
    },
    /// The LUN could not be set up (e.g. a corrupt reservation file).
    #[error("target {target} LUN {lun}: {message}")]
    Lun {
        /// Target name.
        target: String,
        /// LUN.
        lun: u64,
        /// What went wrong.
        message: String,
    },
    /// An invalid configuration value.
    #[error("{0}")]
    Config(String),
}

struct Target {
    auth: TargetAuthInfo,
    scsi: Arc<ScsiTarget>,
}

/// Every target of the daemon, looked up by name (case-insensitive, as iSCSI
/// names compare, RFC 3722).
pub struct TargetSet {
    targets: RwLock<BTreeMap<String, Target>>,
    portals: Vec<Portal>,
    discovery_chap: Option<ChapCredentials>,
}

fn chap(c: &ChapConfig) -> ChapCredentials {
    ChapCredentials {
        user: c.user.clone(),
        secret: c.secret.as_bytes().to_vec(),
        mutual: match (&c.mutual_user, &c.mutual_secret) {
            (Some(u), Some(s)) => Some((u.clone(), s.as_bytes().to_vec())),
            _ => None,
        },
    }
}

impl TargetSet {
    /// Builds every configured target, creating sparse backing files as
    /// needed. `portals` are the addresses SendTargets reports.
    pub fn from_config(cfg: &Config, portals: &[SocketAddr]) -> Result<Self, TargetSetupError> {
        if storage::EngineChoice::parse(&cfg.engine).is_none() {
            return Err(TargetSetupError::Config(format!(
                "engine {:?} is not one of auto, uring, pool",
                cfg.engine
            )));
        }
        let engine = cfg.engine_config();
        let set = TargetSet {
            targets: RwLock::new(BTreeMap::new()),
            portals: portals
                .iter()
                .filter(|a| !a.ip().is_unspecified())
                .map(|&addr| Portal {
                    addr,
                    tpgt: PORTAL_GROUP_TAG,
                })
                .collect(),
            discovery_chap: cfg.discovery_chap.as_ref().map(chap),
        };
        for t in &cfg.targets {
            set.add_target(t, &cfg.data_dir, engine)?;
        }
        Ok(set)
    }

    /// Adds (or replaces) one target.
    pub fn add_target(
        &self,
        t: &TargetConfig,
        data_dir: &Path,
        engine: EngineConfig,
    ) -> Result<(), TargetSetupError> {
        let scsi = Arc::new(ScsiTarget::new(&t.name));
        for l in &t.luns {
            let lu = build_lun(&t.name, l, data_dir, engine)?;
            scsi.add_lun(l.id, Arc::new(lu));
        }
        let auth = TargetAuthInfo {
            name: t.name.clone(),
            alias: t.alias.clone(),
            acl: t.acl.clone(),
            chap: t.chap.as_ref().map(chap),
            portal_group_tag: PORTAL_GROUP_TAG,
        };
        self.write()
            .insert(t.name.to_ascii_lowercase(), Target { auth, scsi });
        Ok(())
    }

    /// Installs a target's login view (name, alias, ACL, CHAP), or replaces
    /// the view of an existing one while keeping its LUNs; returns its SCSI
    /// side. Used for live changes from the metadata store: the new view
    /// applies to the next login (RFC 7143 §6.1).
    pub fn upsert_target(&self, auth: TargetAuthInfo) -> Arc<ScsiTarget> {
        let mut map = self.write();
        let key = auth.name.to_ascii_lowercase();
        if let Some(t) = map.get_mut(&key) {
            t.auth = auth;
            return t.scsi.clone();
        }
        let scsi = Arc::new(ScsiTarget::new(&auth.name));
        map.insert(
            key,
            Target {
                auth,
                scsi: scsi.clone(),
            },
        );
        scsi
    }

    /// Removes a target from login and discovery; returns its SCSI side
    /// (sessions already logged in keep their `Arc` until they end).
    pub fn remove_target(&self, name: &str) -> Option<Arc<ScsiTarget>> {
        self.write()
            .remove(&name.to_ascii_lowercase())
            .map(|t| t.scsi)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Target>> {
        // Updates are single inserts; a poisoned lock still holds a valid map.
        self.targets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Target>> {
        self.targets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every SCSI target, for shutdown flushes.
    pub fn scsi_targets(&self) -> Vec<Arc<ScsiTarget>> {
        self.read().values().map(|t| t.scsi.clone()).collect()
    }
}

/// The file name of a LUN's image when the config names none.
fn default_image_path(target: &str, lun: u64, data_dir: &Path) -> PathBuf {
    let short = target.rsplit(':').next().unwrap_or(target);
    let safe: String = short
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    data_dir.join(format!("{safe}-lun{lun}.img"))
}

fn build_lun(
    target: &str,
    l: &LunConfigFile,
    data_dir: &Path,
    engine: EngineConfig,
) -> Result<LogicalUnit, TargetSetupError> {
    let size = parse_size(&l.size).map_err(TargetSetupError::Config)?;
    let path = match &l.path {
        Some(p) if p.is_absolute() => p.clone(),
        Some(p) => data_dir.join(p),
        None => default_image_path(target, l.id, data_dir),
    };
    let backend =
        storage::open_file(&path, size, engine).map_err(|source| TargetSetupError::Backend {
            target: target.into(),
            lun: l.id,
            path: path.clone(),
            source,
        })?;
    let id = format!("{target}/{}", l.id);
    let mut cfg = LunConfig::new(&serial_of(&id));
    cfg.naa_id = crate::scsi::naa_from(&id);
    cfg.logical_block_size = l.block_size;
    // Validated with the config.
    cfg.physical_block_exponent = l.physical_block_exponent().unwrap_or(0);
    cfg.sanitize_rate = l
        .sanitize_rate()
        .unwrap_or(crate::scsi::DEFAULT_SANITIZE_RATE);
    cfg.write_cache = l.write_cache;
    cfg.read_only = l.read_only;
    cfg.thin = true;
    cfg.pr_path = Some(path.with_extension("pr.json"));
    LogicalUnit::new(cfg, backend).map_err(|e| TargetSetupError::Lun {
        target: target.into(),
        lun: l.id,
        message: e.to_string(),
    })
}

/// A stable 16-hex-digit unit serial number derived from target and LUN.
fn serial_of(id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(id.as_bytes());
    hex::encode(&h[..8])
}

impl TargetDirectory for TargetSet {
    fn lookup(&self, target_name: &str) -> Option<TargetAuthInfo> {
        self.read()
            .get(&target_name.to_ascii_lowercase())
            .map(|t| t.auth.clone())
    }

    fn discovery_auth(&self) -> Option<ChapCredentials> {
        self.discovery_chap.clone()
    }

    fn visible_targets(&self, initiator_name: &str) -> Vec<DiscoveredTarget> {
        self.read()
            .values()
            .filter(|t| {
                t.auth
                    .acl
                    .as_ref()
                    .is_none_or(|acl| acl.iter().any(|a| a.eq_ignore_ascii_case(initiator_name)))
            })
            .map(|t| DiscoveredTarget {
                name: t.auth.name.clone(),
                portals: self.portals.clone(),
            })
            .collect()
    }
}

impl TargetLookup for TargetSet {
    fn scsi_target(&self, name: &str) -> Option<Arc<ScsiTarget>> {
        self.read()
            .get(&name.to_ascii_lowercase())
            .map(|t| t.scsi.clone())
    }
}
