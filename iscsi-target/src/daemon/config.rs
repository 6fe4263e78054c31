//! The `locusd` configuration: the TOML file format, its defaults, and its
//! validation. Owns no runtime state; [`crate::daemon`] builds targets from it.
//!
//! With no file, Locus serves one target, `iqn.2026-11.io.locus:default`, with
//! LUN 0 a 1 GiB thin image in the data dir. A file looks like this:
//!
//! ```toml
//! listen = ["127.0.0.1:3260"]
//! data_dir = "/var/lib/locus"
//!
//! [[target]]
//! name = "iqn.2026-11.io.locus:db"
//! alias = "database disks"
//! acl = ["iqn.1993-08.org.debian:01:db1"]   # omit to allow every initiator
//! chap = { user = "db1", secret = "s3cret-s3cret" }
//!
//! [[target.lun]]
//! id = 0
//! size = "20G"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use drbd_like_sync::storage::{EngineChoice, EngineConfig, Tuning};
use serde::Deserialize;

/// The environment variable that overrides `engine = "auto"`.
pub const ENGINE_ENV: &str = "LOCUS_STORAGE_ENGINE";

/// The default target's IQN.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.io.locus:default";
/// The default portal.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3260";
/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "./locus-data";

/// A configuration problem, naming the field and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown fields.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole daemon configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Portals to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// Where images and state live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// CHAP required for discovery sessions, if any.
    #[serde(default)]
    pub discovery_chap: Option<ChapConfig>,
    /// Storage engine: "auto", "uring" or "pool".
    #[serde(default = "default_engine")]
    pub engine: String,
    /// Send cached READ data straight from the page cache (no data digest
    /// only); `false` copies every read into a buffer first.
    #[serde(default = "default_true")]
    pub zero_copy: bool,
    /// Do small buffered writes inline on the connection's task; `false`
    /// sends every write to the storage engine's threads.
    #[serde(default = "default_true")]
    pub inline_writes: bool,
    /// Commands admitted per session (the CmdSN window).
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Seconds of idle time before a NOP-In keepalive.
    #[serde(default = "default_nop_interval")]
    pub nop_interval_secs: u64,
    /// Seconds a keepalive may go unanswered before the session is dropped.
    #[serde(default = "default_nop_timeout")]
    pub nop_timeout_secs: u64,
    /// Metadata store to serve targets from as well (`redis://...` or a
    /// directory for the embedded store); none = config targets only.
    #[serde(default)]
    pub metadata: Option<String>,
    /// This node's id in the node registry (default: the host name).
    #[serde(default)]
    pub node: Option<String>,
    /// Which roles this node runs: both (default) or the storage role alone.
    #[serde(default)]
    pub role: Role,
    /// Where the storage role listens for peers; default: the address this
    /// node is registered with in the node registry.
    #[serde(default)]
    pub replication_listen: Option<SocketAddr>,
    /// The file holding the cluster secret that replication peers prove.
    #[serde(default)]
    pub cluster_secret_file: Option<PathBuf>,
    /// How long an image's write lease lasts without renewal, in seconds
    /// (default 10). The holder stops acknowledging a fifth of it before
    /// it ends, and renews every 3/10 of it; a new writer may take over
    /// from a holder that does not answer once it has ended.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_secs: u64,
    /// Activity-log extents (4 MiB each) a writer keeps hot (default 1024,
    /// a 4 GiB working set). Writes inside the working set cost no store
    /// round trip; a larger set means more to reconcile after a crash of
    /// the writer.
    #[serde(default = "default_al_extents")]
    pub activity_log_extents: usize,
    /// Targets.
    #[serde(default, rename = "target")]
    pub targets: Vec<TargetConfig>,
}

/// The roles a `locusd` runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The iSCSI portal (target role) and, with a store and a cluster
    /// secret, the storage role.
    #[default]
    Both,
    /// Only the storage role: no iSCSI portal.
    Storage,
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "both" => Ok(Role::Both),
            "storage" => Ok(Role::Storage),
            _ => Err(format!("role {s:?} is not one of both, storage")),
        }
    }
}

/// One target.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The target's IQN.
    pub name: String,
    /// TargetAlias.
    #[serde(default)]
    pub alias: Option<String>,
    /// Initiator IQNs allowed; absent = all.
    #[serde(default)]
    pub acl: Option<Vec<String>>,
    /// CHAP credentials; present = CHAP required.
    #[serde(default)]
    pub chap: Option<ChapConfig>,
    /// LUNs.
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfigFile>,
}

/// CHAP credentials in the config file.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    /// CHAP_N the initiator must send.
    pub user: String,
    /// The secret (RFC 7143 §12.1.3 recommends at least 12 bytes).
    pub secret: String,
    /// For mutual CHAP: the name we answer with.
    #[serde(default)]
    pub mutual_user: Option<String>,
    /// For mutual CHAP: the secret we prove.
    #[serde(default)]
    pub mutual_secret: Option<String>,
}

impl std::fmt::Debug for ChapConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapConfig")
            .field("user", &self.user)
            .field("mutual_user", &self.mutual_user)
            .finish_non_exhaustive()
    }
}

/// One LUN in the config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LunConfigFile {
    /// LUN number (0..=16383).
    pub id: u64,
    /// Size, like "1G", "512M" or a byte count.
    pub size: String,
    /// Backing file; relative paths are inside the data dir.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Logical block size: 512 or 4096.
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Whether the LUN advertises a volatile write cache (WCE).
    #[serde(default = "default_true")]
    pub write_cache: bool,
    /// Read-only LUN.
    #[serde(default)]
    pub read_only: bool,
    /// Physical block size reported to initiators (READ CAPACITY(16)):
    /// a power-of-two multiple of `block_size`, at most 32768 of them; for
    /// example 4096 on a 512-byte LUN ("512e"), so that initiators align
    /// their I/O to 4 KiB. Default: `block_size`.
    #[serde(default)]
    pub physical_block_size: Option<u32>,
    /// Most bytes per second a SANITIZE OVERWRITE writes, like "128M";
    /// "0" for as fast as the disk goes. Default 128M.
    #[serde(default)]
    pub sanitize_rate: Option<String>,
}

impl LunConfigFile {
    /// The SANITIZE OVERWRITE pace in bytes per second (0: unpaced).
    pub fn sanitize_rate(&self) -> Result<u64, String> {
        match &self.sanitize_rate {
            None => Ok(crate::scsi::DEFAULT_SANITIZE_RATE),
            Some(r) => parse_size(r).map_err(|e| format!("sanitize_rate: {e}")),
        }
    }

    /// log2(physical block size / logical block size), or why the
    /// configured physical block size is not valid.
    pub fn physical_block_exponent(&self) -> Result<u8, String> {
        let Some(p) = self.physical_block_size else {
            return Ok(0);
        };
        let ratio = p / self.block_size;
        if p % self.block_size != 0 || !ratio.is_power_of_two() || ratio > 1 << 15 {
            return Err(format!(
                "physical_block_size {p} is not a power-of-two multiple (at most 32768) of block_size {}",
                self.block_size
            ));
        }
        Ok(ratio.trailing_zeros() as u8)
    }
}

fn default_listen() -> Vec<SocketAddr> {
    vec![DEFAULT_LISTEN.parse().expect("constant address parses")]
}
fn default_data_dir() -> PathBuf {
    PathBuf::from(DEFAULT_DATA_DIR)
}
fn default_lease_ttl() -> u64 {
    10
}

fn default_al_extents() -> usize {
    1024
}

fn default_engine() -> String {
    "auto".into()
}
fn default_queue_depth() -> u32 {
    128
}
fn default_nop_interval() -> u64 {
    15
}
fn default_nop_timeout() -> u64 {
    30
}
fn default_block_size() -> u32 {
    512
}
fn default_true() -> bool {
    true
}

impl Default for Config {
    /// The embedded default: one target with a 1 GiB LUN 0.
    fn default() -> Self {
        Config {
            listen: default_listen(),
            data_dir: default_data_dir(),
            discovery_chap: None,
            engine: default_engine(),
            zero_copy: true,
            inline_writes: true,
            queue_depth: default_queue_depth(),
            nop_interval_secs: default_nop_interval(),
            nop_timeout_secs: default_nop_timeout(),
            metadata: None,
            node: None,
            role: Role::Both,
            replication_listen: None,
            cluster_secret_file: None,
            lease_ttl_secs: default_lease_ttl(),
            activity_log_extents: default_al_extents(),
            targets: vec![TargetConfig {
                name: DEFAULT_TARGET.into(),
                alias: Some("Locus default target".into()),
                acl: None,
                chap: None,
                luns: vec![LunConfigFile {
                    id: 0,
                    size: "1G".into(),
                    path: None,
                    block_size: 512,
                    write_cache: true,
                    read_only: false,
                    physical_block_size: None,
                    sanitize_rate: None,
                }],
            }],
        }
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            source,
        })?;
        if cfg.targets.is_empty() {
            cfg.targets = Config::default().targets;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Applies the environment switches that override the file:
    /// `LOCUS_STORAGE_ENGINE` (when `engine` is "auto"), `LOCUS_ZERO_COPY=0`
    /// and `LOCUS_INLINE_WRITES=0`. `lookup` reads one variable; the binary
    /// passes `std::env::var`, tests a closure. Library code reads no
    /// environment of its own.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        if let Some(e) = lookup(ENGINE_ENV) {
            if EngineChoice::parse(&self.engine) == Some(EngineChoice::Auto) {
                self.engine = e;
            }
        }
        if lookup("LOCUS_ZERO_COPY").as_deref() == Some("0") {
            self.zero_copy = false;
        }
        if lookup("LOCUS_INLINE_WRITES").as_deref() == Some("0") {
            self.inline_writes = false;
        }
    }

    /// How storage engines are opened, from `engine`, `zero_copy` and
    /// `inline_writes` (`engine` was checked by [`validate`](Self::validate)).
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            choice: EngineChoice::parse(&self.engine).unwrap_or(EngineChoice::Auto),
            tuning: Tuning {
                zero_copy: self.zero_copy,
                inline_writes: self.inline_writes,
            },
        }
    }

    /// Checks every value; the error names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if EngineChoice::parse(&self.engine).is_none() {
            return bad(format!(
                "engine {:?} is not one of auto, uring, pool (from `engine`, --engine or {ENGINE_ENV})",
                self.engine
            ));
        }
        if self.listen.is_empty() {
            return bad("`listen` must name at least one address".into());
        }
        if !(1..=65_535).contains(&self.queue_depth) {
            return bad(format!(
                "queue_depth {} must be 1..=65535",
                self.queue_depth
            ));
        }
        if self
            .metadata
            .as_deref()
            .is_some_and(|m| m.trim().is_empty())
        {
            return bad("`metadata` must be a redis:// URL or a directory".into());
        }
        if let Some(n) = &self.node {
            blockmap::types::NodeId::new(n.as_str())
                .map_err(|e| ConfigError::Invalid(format!("`node`: {e}")))?;
        }
        let mut names = std::collections::HashSet::new();
        for t in &self.targets {
            if !crate::login::keys::valid_iscsi_name(&t.name) {
                return bad(format!(
                    "target name {:?} is not a valid iqn./eui./naa. name",
                    t.name
                ));
            }
            if !names.insert(t.name.to_ascii_lowercase()) {
                return bad(format!("target {} is declared twice", t.name));
            }
            if let Some(c) = &t.chap {
                if c.mutual_user.is_some() != c.mutual_secret.is_some() {
                    return bad(format!(
                        "target {}: mutual CHAP needs both mutual_user and mutual_secret",
                        t.name
                    ));
                }
            }
            let mut ids = std::collections::HashSet::new();
            for l in &t.luns {
                if l.id > 16_383 {
                    return bad(format!("target {}: LUN {} is above 16383", t.name, l.id));
                }
                if !ids.insert(l.id) {
                    return bad(format!("target {}: LUN {} is declared twice", t.name, l.id));
                }
                if l.block_size != 512 && l.block_size != 4096 {
                    return bad(format!(
                        "target {} LUN {}: block_size must be 512 or 4096, not {}",
                        t.name, l.id, l.block_size
                    ));
                }
                if let Err(e) = l.physical_block_exponent().and(l.sanitize_rate()) {
                    return bad(format!("target {} LUN {}: {e}", t.name, l.id));
                }
                let size = parse_size(&l.size).map_err(|e| {
                    ConfigError::Invalid(format!("target {} LUN {}: size: {e}", t.name, l.id))
                })?;
                if size == 0 || size % u64::from(l.block_size) != 0 {
                    return bad(format!("target {} LUN {}: size {size} is not a positive multiple of the block size {}", t.name, l.id, l.block_size));
                }
            }
        }
        Ok(())
    }
}

/// Parses sizes like `4096`, `512K`, `100M`, `1G`, `2T` (binary units; an
/// optional `iB`/`B` suffix is accepted).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some(c @ ('K' | 'k' | 'M' | 'm' | 'G' | 'g' | 'T' | 't')) => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                _ => 40,
            };
            (&t[..t.len() - 1], 1u64 << shift)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 4096, 512M, 1G)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn example_parses() {
        let cfg = Config::parse(
            r#"
            listen = ["127.0.0.1:3261"]
            [[target]]
            name = "iqn.2026-11.io.locus:db"
            acl = ["iqn.1993-08.org.debian:01:db1"]
            chap = { user = "db1", secret = "s3cret-s3cret" }
            [[target.lun]]
            id = 0
            size = "20G"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.targets.len(), 1);
        assert_eq!(cfg.targets[0].luns[0].block_size, 512);
        assert_eq!(cfg.listen[0].port(), 3261);
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Config::parse("bogus = 1").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = Config::parse(
            "[[target]]\nname = \"iqn.2026-11.io.locus:x\"\n[[target.lun]]\nid = 0\nsize = \"1000\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("multiple of the block size"), "{e}");
        let e = Config::parse("[[target]]\nname = \"not an iqn\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid"), "{e}");
    }

    #[test]
    fn physical_block_size_is_a_power_of_two_multiple_of_the_block_size() {
        let lun = |extra: &str| {
            Config::parse(&format!(
                "[[target]]\nname = \"iqn.2026-11.io.locus:x\"\n[[target.lun]]\nid = 0\nsize = \"1M\"\n{extra}"
            ))
        };
        let exp = |c: Config| c.targets[0].luns[0].physical_block_exponent();
        assert_eq!(exp(lun("").unwrap()), Ok(0));
        assert_eq!(exp(lun("physical_block_size = 4096\n").unwrap()), Ok(3));
        let e = lun("physical_block_size = 1536\n").unwrap_err().to_string();
        assert!(e.contains("physical_block_size 1536"), "{e}");
        let e = lun("block_size = 4096\nphysical_block_size = 512\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("power-of-two multiple"), "{e}");
        let rate = |c: Config| c.targets[0].luns[0].sanitize_rate();
        assert_eq!(rate(lun("").unwrap()), Ok(128 << 20));
        assert_eq!(rate(lun("sanitize_rate = \"0\"\n").unwrap()), Ok(0));
        assert_eq!(rate(lun("sanitize_rate = \"1G\"\n").unwrap()), Ok(1 << 30));
        let e = lun("sanitize_rate = \"fast\"\n").unwrap_err().to_string();
        assert!(e.contains("sanitize_rate"), "{e}");
    }

    #[test]
    fn environment_switches_override_the_file() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let mut cfg = Config::default();
        cfg.apply_env(env(&[]));
        assert_eq!(cfg.engine_config(), EngineConfig::default());
        cfg.apply_env(env(&[
            (ENGINE_ENV, "pool"),
            ("LOCUS_ZERO_COPY", "0"),
            ("LOCUS_INLINE_WRITES", "0"),
        ]));
        let e = cfg.engine_config();
        assert_eq!(e.choice, EngineChoice::Pool);
        assert!(!e.tuning.zero_copy && !e.tuning.inline_writes);
        // An explicit engine in the file wins over the environment.
        let mut cfg = Config::parse("engine = \"uring\"").unwrap();
        cfg.apply_env(env(&[(ENGINE_ENV, "pool"), ("LOCUS_ZERO_COPY", "1")]));
        assert_eq!(cfg.engine_config().choice, EngineChoice::Uring);
        assert!(cfg.engine_config().tuning.zero_copy);
        // A bad value is an error that names where it came from.
        let mut cfg = Config::default();
        cfg.apply_env(env(&[(ENGINE_ENV, "bogus")]));
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains(ENGINE_ENV), "{e}");
    }
}
