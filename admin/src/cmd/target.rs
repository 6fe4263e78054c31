//! `locus target …`: iSCSI targets, LUNs, ACLs and CHAP (RFC 7143 §12.1.3).

use crate::exit::CliResult;
use crate::output::{list, Out, Table};
use crate::parse;
use blockmap::ops;
use blockmap::store::MetadataStore;
use blockmap::target::{Chap, ChapCredential, Target};
use blockmap::types::{ImageName, Iqn};
use clap::Subcommand;
use serde::Serialize;

/// Target commands.
#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Create a target.
    Create {
        /// Target IQN, e.g. iqn.2026-01.org.locus:disk1.
        iqn: String,
    },
    /// List targets.
    List,
    /// LUNs of a target.
    #[command(subcommand)]
    Lun(LunCmd),
    /// Initiator ACL of a target (empty: every initiator may log in).
    #[command(subcommand)]
    Acl(AclCmd),
    /// CHAP of a target.
    #[command(subcommand)]
    Chap(ChapCmd),
}

/// LUN commands.
#[derive(Debug, Subcommand)]
pub enum LunCmd {
    /// Map an image as a LUN.
    Add {
        /// Target IQN.
        iqn: String,
        /// Image name.
        image: String,
        /// LUN number (default: lowest free).
        #[arg(long)]
        lun: Option<u64>,
    },
    /// Unmap a LUN.
    Remove {
        /// Target IQN.
        iqn: String,
        /// LUN number.
        #[arg(long)]
        lun: u64,
    },
}

/// ACL commands.
#[derive(Debug, Subcommand)]
pub enum AclCmd {
    /// Allow an initiator to log in; from the first entry on, only the
    /// listed initiators may.
    Add {
        /// Target IQN.
        iqn: String,
        /// Initiator IQN.
        initiator: String,
    },
}

/// CHAP commands.
#[derive(Debug, Subcommand)]
pub enum ChapCmd {
    /// Require CHAP (one-way, or mutual with --mutual-user/--mutual-secret).
    Set {
        /// Target IQN.
        iqn: String,
        /// User name the initiator presents.
        #[arg(long)]
        user: String,
        /// Secret (12 to 255 bytes); prefer the LOCUS_CHAP_SECRET environment variable.
        #[arg(long, env = "LOCUS_CHAP_SECRET", hide_env_values = true)]
        secret: String,
        /// User name the target presents, for mutual CHAP.
        #[arg(long, requires = "mutual_secret")]
        mutual_user: Option<String>,
        /// Secret the target proves, for mutual CHAP.
        #[arg(
            long,
            env = "LOCUS_CHAP_MUTUAL_SECRET",
            hide_env_values = true,
            requires = "mutual_user"
        )]
        mutual_secret: Option<String>,
    },
}

/// A target as printed: secrets never leave the store through the CLI.
#[derive(Debug, Serialize)]
pub struct TargetView {
    iqn: Iqn,
    luns: std::collections::BTreeMap<u64, ImageName>,
    acl: Vec<Iqn>,
    chap: &'static str,
    chap_user: Option<String>,
    mutual_user: Option<String>,
}

impl From<&Target> for TargetView {
    fn from(t: &Target) -> Self {
        Self {
            iqn: t.iqn.clone(),
            luns: t.luns.clone(),
            acl: t.acl.iter().cloned().collect(),
            chap: match &t.chap {
                None => "none",
                Some(c) if c.mutual.is_some() => "mutual",
                Some(_) => "one-way",
            },
            chap_user: t.chap.as_ref().map(|c| c.initiator.user.clone()),
            mutual_user: t
                .chap
                .as_ref()
                .and_then(|c| c.mutual.as_ref().map(|m| m.user.clone())),
        }
    }
}

/// Runs a target command.
pub async fn run(s: &dyn MetadataStore, out: Out, cmd: TargetCmd) -> CliResult {
    match cmd {
        TargetCmd::Create { iqn } => {
            let t = ops::create_target(s, &parse(&iqn)?).await?;
            out.emit(&TargetView::from(&t), || {
                println!("created target {}", t.iqn)
            });
        }
        TargetCmd::List => {
            let ts = ops::list_targets(s).await?;
            let views: Vec<TargetView> = ts.iter().map(TargetView::from).collect();
            out.emit(&views, || {
                let mut t = Table::new(&["TARGET", "LUNS", "ACL", "CHAP"]);
                for v in &views {
                    t.row(vec![
                        v.iqn.to_string(),
                        list(v.luns.iter().map(|(l, i)| format!("{l}={i}"))),
                        list(&v.acl),
                        v.chap.to_string(),
                    ]);
                }
                t.print("no targets");
            });
        }
        TargetCmd::Lun(LunCmd::Add { iqn, image, lun }) => {
            let iqn: Iqn = parse(&iqn)?;
            let image: ImageName = parse(&image)?;
            let lun = ops::add_lun(s, &iqn, &image, lun).await?;
            out.emit(
                &serde_json::json!({"target": iqn, "lun": lun, "image": image}),
                || println!("target {iqn} LUN {lun} is image {image}"),
            );
        }
        TargetCmd::Lun(LunCmd::Remove { iqn, lun }) => {
            let iqn: Iqn = parse(&iqn)?;
            let image = ops::remove_lun(s, &iqn, lun).await?;
            out.emit(
                &serde_json::json!({"target": iqn, "lun": lun, "removed": image}),
                || println!("target {iqn} LUN {lun} (image {image}) removed"),
            );
        }
        TargetCmd::Acl(AclCmd::Add { iqn, initiator }) => {
            let iqn: Iqn = parse(&iqn)?;
            let initiator: Iqn = parse(&initiator)?;
            let t = ops::add_acl(s, &iqn, &initiator).await?;
            out.emit(&TargetView::from(&t), || {
                println!("target {iqn} allows initiator {initiator}")
            });
        }
        TargetCmd::Chap(ChapCmd::Set {
            iqn,
            user,
            secret,
            mutual_user,
            mutual_secret,
        }) => {
            let iqn: Iqn = parse(&iqn)?;
            let mutual = match (mutual_user, mutual_secret) {
                (Some(u), Some(p)) => Some(ChapCredential::new(&u, &p)?),
                _ => None,
            };
            let chap = Chap {
                initiator: ChapCredential::new(&user, &secret)?,
                mutual,
            };
            let t = ops::set_chap(s, &iqn, Some(chap)).await?;
            let v = TargetView::from(&t);
            out.emit(&v, || {
                println!("target {iqn} requires {} CHAP as user {user}", v.chap)
            });
        }
    }
    Ok(())
}
