//! Reservations: PERSISTENT RESERVE IN/OUT (SPC-4 5.13, 6.15, 6.16) with
//! all six reservation types, the access rules that give RESERVATION
//! CONFLICT (SPC-4 5.13.1 table 42), persistence to a file (write temp +
//! fsync + rename), and RESERVE/RELEASE(6)/(10) (SPC-2 7.21/7.23).
//!
//! An I_T nexus is identified across sessions by its initiator port name
//! and relative target port; registrations survive nexus loss.

use std::io::Write as _;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::cdb::{be16, be32, be64, u8_at};
use super::lu::{truncate, CmdResult, Ctx, Fail, LogicalUnit, LuState};
use super::opcodes::{code::*, OpInfo, PrClass};
use super::sense::{self, Sense};
use super::Nexus;

/// Persistent reservation types (SPC-4 6.16.2 table 172).
pub(crate) mod ty {
    pub const WE: u8 = 1;
    pub const EA: u8 = 3;
    pub const WE_RO: u8 = 5;
    pub const EA_RO: u8 = 6;
    pub const WE_AR: u8 = 7;
    pub const EA_AR: u8 = 8;
}

fn valid_type(t: u8) -> bool {
    matches!(
        t,
        ty::WE | ty::EA | ty::WE_RO | ty::EA_RO | ty::WE_AR | ty::EA_AR
    )
}

fn all_registrants(t: u8) -> bool {
    t == ty::WE_AR || t == ty::EA_AR
}

/// One registration (an I_T nexus and its key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Registration {
    pub key: u64,
    pub initiator_port: String,
    pub relative_port: u16,
    pub transport_id: Vec<u8>,
}

impl Registration {
    fn is(&self, n: &Nexus) -> bool {
        self.initiator_port == n.initiator_port && self.relative_port == n.relative_port
    }
}

/// The reservation, if any.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub rtype: u8,
    /// Holder (initiator port, relative port); `None` for all-registrants types.
    pub holder: Option<(String, u16)>,
}

/// Persistent reservation state of one LU.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    pub aptpl: bool,
}

impl PrState {
    /// Load from `path`; a missing file is an empty state.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
            Err(e) => Err(e),
        }
    }

    /// Write atomically: temp file, fsync, rename, fsync the directory.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    fn find(&self, n: &Nexus) -> Option<usize> {
        self.regs.iter().position(|r| r.is(n))
    }

    fn is_holder(&self, n: &Nexus) -> bool {
        match &self.res {
            None => false,
            Some(r) if all_registrants(r.rtype) => self.find(n).is_some(),
            Some(Reservation {
                holder: Some((p, rp)),
                ..
            }) => *p == n.initiator_port && *rp == n.relative_port,
            Some(_) => false,
        }
    }

    /// Key reported for the reservation (0 for all-registrants types).
    fn res_key(&self) -> u64 {
        match &self.res {
            Some(Reservation {
                holder: Some((p, rp)),
                ..
            }) => self
                .regs
                .iter()
                .find(|r| r.initiator_port == *p && r.relative_port == *rp)
                .map_or(0, |r| r.key),
            _ => 0,
        }
    }
}

/// Reservation checks before a command runs (SPC-4 5.13.1, SPC-2 5.5.1).
pub(crate) fn check_access(st: &LuState, n: &Nexus, info: &OpInfo) -> Result<(), Fail> {
    if let Some(holder) = st.legacy {
        if holder != n.id && !info.legacy_ok {
            return Err(Fail::Conflict);
        }
        return Ok(());
    }
    let Some(res) = &st.pr.res else {
        return Ok(());
    };
    if info.pr == PrClass::Allowed || info.pr == PrClass::Own || st.pr.is_holder(n) {
        return Ok(());
    }
    let registered = st.pr.find(n).is_some();
    let ok = match res.rtype {
        ty::WE => info.pr == PrClass::Read,
        ty::EA => false,
        ty::WE_RO | ty::WE_AR => registered || info.pr == PrClass::Read,
        _ => registered,
    };
    if ok {
        Ok(())
    } else {
        Err(Fail::Conflict)
    }
}

/// RESERVE(6)/(10) and RELEASE(6)/(10).
pub(crate) fn legacy(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let mut st = lu.lock();
    let me = ctx.nexus.id;
    let reserve = matches!(ctx.info.opcode, RESERVE_6 | RESERVE_10);
    if st.pr.res.is_some() || !st.pr.regs.is_empty() {
        return if reserve {
            Err(Fail::Conflict)
        } else {
            Ok(Bytes::new())
        };
    }
    if reserve {
        match st.legacy {
            Some(h) if h != me => return Err(Fail::Conflict),
            _ => st.legacy = Some(me),
        }
    } else if st.legacy == Some(me) {
        st.legacy = None;
    }
    Ok(Bytes::new())
}

/// PERSISTENT RESERVE IN (SPC-4 6.15).
pub(crate) fn pr_in(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let alloc = u32::from(be16(cdb, 7));
    let st = lu.lock();
    let pr = &st.pr;
    let mut out = Vec::new();
    match ctx.info.sa {
        Some(0) => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            out.extend_from_slice(&((pr.regs.len() * 8) as u32).to_be_bytes());
            for r in &pr.regs {
                out.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        Some(1) => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            match &pr.res {
                Some(r) => {
                    out.extend_from_slice(&16u32.to_be_bytes());
                    out.extend_from_slice(&pr.res_key().to_be_bytes());
                    out.extend_from_slice(&[0, 0, 0, 0, 0, r.rtype & 0x0f, 0, 0]);
                }
                None => out.extend_from_slice(&0u32.to_be_bytes()),
            }
        }
        Some(2) => {
            out = vec![0u8; 8];
            out[1] = 8;
            out[2] = 0x01; // PTPL_C
            out[3] = 0x80 | (1 << 4); // TMV, ALLOW COMMANDS 001b
            if pr.aptpl {
                out[3] |= 0x01; // PTPL_A
            }
            out[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02; // WR_EX_AR EX_AC_RO WR_EX_RO EX_AC WR_EX
            out[5] = 0x01; // EX_AC_AR
        }
        _ => {
            out.extend_from_slice(&pr.generation.to_be_bytes());
            out.extend_from_slice(&[0; 4]);
            for r in &pr.regs {
                let holder = match &pr.res {
                    Some(res) if all_registrants(res.rtype) => true,
                    Some(Reservation {
                        holder: Some((p, rp)),
                        ..
                    }) => *p == r.initiator_port && *rp == r.relative_port,
                    _ => false,
                };
                out.extend_from_slice(&r.key.to_be_bytes());
                out.extend_from_slice(&[0; 4]);
                out.push(u8::from(holder));
                out.push(if holder {
                    pr.res.as_ref().map_or(0, |x| x.rtype)
                } else {
                    0
                });
                out.extend_from_slice(&[0; 4]);
                out.extend_from_slice(&r.relative_port.to_be_bytes());
                out.extend_from_slice(&(r.transport_id.len() as u32).to_be_bytes());
                out.extend_from_slice(&r.transport_id);
            }
            let len = (out.len() - 8) as u32;
            out[4..8].copy_from_slice(&len.to_be_bytes());
        }
    }
    Ok(truncate(out.into(), alloc))
}

/// PERSISTENT RESERVE OUT (SPC-4 6.16, 5.13.5-5.13.11).
pub(crate) fn pr_out(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let sa = ctx.info.sa.unwrap_or(0);
    let scope = u8_at(cdb, 2) >> 4;
    let rtype = u8_at(cdb, 2) & 0x0f;
    let plen = be32(cdb, 5) as usize;
    if plen != 24 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = super::rw::data_out(ctx, 24)?;
    let key = be64(&p, 0);
    let sa_key = be64(&p, 8);
    let flags = u8_at(&p, 20);
    if flags & 0x08 != 0 {
        return Err(Sense::invalid_param_field(20, Some(3)).into()); // SPEC_I_PT
    }
    if flags & 0x04 != 0 {
        return Err(Sense::invalid_param_field(20, Some(2)).into()); // ALL_TG_PT
    }
    let aptpl = flags & 0x01 != 0;
    let needs_type = matches!(sa, 1 | 2 | 4 | 5);
    if needs_type && scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(4)).into());
    }
    if matches!(sa, 1 | 2) && !valid_type(rtype) {
        return Err(Sense::invalid_cdb_field(2, Some(0)).into());
    }
    let n = ctx.nexus;
    let mut st = lu.lock();
    let before = st.pr.clone();
    let me = st.pr.find(n);
    let result = match sa {
        0 | 6 => {
            match me {
                None => {
                    if sa == 0 && key != 0 {
                        return Err(Fail::Conflict);
                    }
                    if sa_key != 0 {
                        st.pr.regs.push(Registration {
                            key: sa_key,
                            initiator_port: n.initiator_port.clone(),
                            relative_port: n.relative_port,
                            transport_id: n.transport_id.to_vec(),
                        });
                        st.pr.aptpl = aptpl;
                    }
                }
                Some(i) => {
                    if sa == 0 && key != st.pr.regs[i].key {
                        return Err(Fail::Conflict);
                    }
                    if sa_key == 0 {
                        unregister(&mut st, i);
                    } else {
                        st.pr.regs[i].key = sa_key;
                    }
                    st.pr.aptpl = aptpl;
                }
            }
            st.pr.generation = st.pr.generation.wrapping_add(1);
            Ok(())
        }
        _ => {
            let Some(i) = me else {
                return Err(Fail::Conflict);
            };
            if st.pr.regs[i].key != key {
                return Err(Fail::Conflict);
            }
            match sa {
                1 => reserve(&mut st, n, rtype),
                2 => release(&mut st, n, rtype),
                3 => {
                    let others = regs_except(&st, n);
                    st.pr.regs.clear();
                    st.pr.res = None;
                    st.pr.generation = st.pr.generation.wrapping_add(1);
                    push_ua_to(&mut st, &others, sense::UA_RESERVATIONS_PREEMPTED);
                    Ok(())
                }
                _ => preempt(&mut st, n, rtype, sa_key),
            }
        }
    };
    result?;
    if st.pr != before {
        if let Some(path) = &lu.cfg.pr_path {
            if let Err(e) = st.pr.save(path) {
                tracing::error!(error = %e, path = %path.display(), "persisting reservations failed");
                st.pr = before;
                return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x55, 0x04).into());
            }
        }
    }
    Ok(Bytes::new())
}

fn regs_except(st: &LuState, n: &Nexus) -> Vec<(String, u16)> {
    st.pr
        .regs
        .iter()
        .filter(|r| !r.is(n))
        .map(|r| (r.initiator_port.clone(), r.relative_port))
        .collect()
}

/// Queue a UA for every live nexus whose port matches one of `ports`.
/// Registrations are keyed by port; live nexuses are known by id, so the
/// UA goes to the nexuses of this LU that are not the caller's.
fn push_ua_to(st: &mut LuState, ports: &[(String, u16)], ua: (u8, u8)) {
    if ports.is_empty() {
        return;
    }
    let ids: Vec<u64> = st.known.iter().copied().collect();
    for id in ids {
        if st.port_of.get(&id).is_some_and(|p| ports.contains(p)) {
            st.push_ua(id, ua);
        }
    }
}

fn unregister(st: &mut LuState, i: usize) {
    let r = st.pr.regs.remove(i);
    let held = match &st.pr.res {
        Some(res) if all_registrants(res.rtype) => st.pr.regs.is_empty(),
        Some(Reservation {
            holder: Some((p, rp)),
            ..
        }) => *p == r.initiator_port && *rp == r.relative_port,
        _ => false,
    };
    if held {
        let t = st.pr.res.as_ref().map_or(0, |x| x.rtype);
        st.pr.res = None;
        if matches!(t, ty::WE_RO | ty::EA_RO) {
            let others: Vec<_> = st
                .pr
                .regs
                .iter()
                .map(|r| (r.initiator_port.clone(), r.relative_port))
                .collect();
            push_ua_to(st, &others, sense::UA_RESERVATIONS_RELEASED);
        }
    }
}

fn reserve(st: &mut LuState, n: &Nexus, rtype: u8) -> Result<(), Fail> {
    match &st.pr.res {
        Some(r) => {
            if st.pr.is_holder(n) && r.rtype == rtype {
                Ok(())
            } else {
                Err(Fail::Conflict)
            }
        }
        None => {
            st.pr.res = Some(Reservation {
                rtype,
                holder: if all_registrants(rtype) {
                    None
                } else {
                    Some((n.initiator_port.clone(), n.relative_port))
                },
            });
            Ok(())
        }
    }
}

fn release(st: &mut LuState, n: &Nexus, rtype: u8) -> Result<(), Fail> {
    let Some(r) = &st.pr.res else {
        return Ok(());
    };
    if !st.pr.is_holder(n) {
        return Ok(());
    }
    if r.rtype != rtype {
        return Err(sense::INVALID_RELEASE_OF_PR.into());
    }
    let t = r.rtype;
    st.pr.res = None;
    if t != ty::WE && t != ty::EA {
        let others = regs_except(st, n);
        push_ua_to(st, &others, sense::UA_RESERVATIONS_RELEASED);
    }
    Ok(())
}

fn preempt(st: &mut LuState, n: &Nexus, rtype: u8, sa_key: u64) -> Result<(), Fail> {
    let removed_matching = |st: &mut LuState, all_others: bool| -> Vec<(String, u16)> {
        let mut gone = Vec::new();
        st.pr.regs.retain(|r| {
            let hit = !r.is(n) && (all_others || r.key == sa_key);
            if hit {
                gone.push((r.initiator_port.clone(), r.relative_port));
            }
            !hit
        });
        gone
    };
    let res = st.pr.res.clone();
    match res {
        None => {
            if sa_key == 0 {
                return Err(Sense::invalid_param_field(8, None).into());
            }
            if !st.pr.regs.iter().any(|r| r.key == sa_key) {
                return Err(Fail::Conflict);
            }
            let gone = removed_matching(st, false);
            push_ua_to(st, &gone, sense::UA_REGISTRATIONS_PREEMPTED);
        }
        Some(r) if all_registrants(r.rtype) => {
            if sa_key == 0 {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(0)).into());
                }
                let gone = removed_matching(st, true);
                st.pr.res = Some(Reservation {
                    rtype,
                    holder: if all_registrants(rtype) {
                        None
                    } else {
                        Some((n.initiator_port.clone(), n.relative_port))
                    },
                });
                push_ua_to(st, &gone, sense::UA_REGISTRATIONS_PREEMPTED);
            } else {
                if !st.pr.regs.iter().any(|r| r.key == sa_key) {
                    return Err(Fail::Conflict);
                }
                let gone = removed_matching(st, false);
                push_ua_to(st, &gone, sense::UA_REGISTRATIONS_PREEMPTED);
            }
        }
        Some(_) => {
            let holder_key = st.pr.res_key();
            if sa_key == holder_key {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(0)).into());
                }
                let gone = removed_matching(st, false);
                st.pr.res = Some(Reservation {
                    rtype,
                    holder: if all_registrants(rtype) {
                        None
                    } else {
                        Some((n.initiator_port.clone(), n.relative_port))
                    },
                });
                push_ua_to(st, &gone, sense::UA_REGISTRATIONS_PREEMPTED);
            } else {
                if sa_key == 0 {
                    return Err(Sense::invalid_param_field(8, None).into());
                }
                if !st.pr.regs.iter().any(|r| r.key == sa_key) {
                    return Err(Fail::Conflict);
                }
                let gone = removed_matching(st, false);
                push_ua_to(st, &gone, sense::UA_REGISTRATIONS_PREEMPTED);
            }
        }
    }
    st.pr.generation = st.pr.generation.wrapping_add(1);
    Ok(())
}
