//! Reservations: PERSISTENT RESERVE IN/OUT (SPC-4 5.13, 6.15, 6.16) with
//! all six reservation types and every service action but SPEC_I_PT and
//! ALL_TG_PT (PREEMPT AND ABORT aborts the preempted nexuses' tasks,
//! REGISTER AND MOVE hands the reservation to another nexus), the access
//! rules that give RESERVATION CONFLICT (SPC-4 5.13.1 table 42),
//! persistence to a file (write temp + fsync + rename, on a blocking thread
//! while other commands run, see [`pr_out`]), and RESERVE/RELEASE(6)/(10)
//! (SPC-2 7.21/7.23).
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

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2 table 169).
mod sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
    pub const REGISTER_AND_MOVE: u8 = 7;
}

/// An I_T nexus's port as registrations name it: (initiator port, relative target port).
pub(crate) type Port = (String, u16);

/// Unit attentions to queue: for the live nexuses of these ports, this (ASC, ASCQ).
pub(crate) type PortUas = Vec<(Vec<Port>, (u8, u8))>;

/// The effect of one PERSISTENT RESERVE OUT, worked out on a copy of the
/// reservation state. It is persisted first and applied to the LU after,
/// so a failed save changes nothing and no lock is held while it runs.
struct Change {
    /// The reservation state after the command.
    pr: PrState,
    /// Unit attentions for the live nexuses of these ports.
    uas: PortUas,
    /// Ports whose tasks PREEMPT AND ABORT aborts (SPC-4 5.13.11.2.4).
    aborted: Vec<(String, u16)>,
}

impl Change {
    fn ua(&mut self, ports: Vec<(String, u16)>, ua: (u8, u8)) {
        if !ports.is_empty() {
            self.uas.push((ports, ua));
        }
    }

    fn bump(&mut self) {
        self.pr.generation = self.pr.generation.wrapping_add(1);
    }
}

/// PERSISTENT RESERVE OUT (SPC-4 6.16, 5.13.5-5.13.11).
///
/// Reservation commands run one at a time per LU (`LogicalUnit::pr_turn`),
/// while every other command keeps running: the new state is computed
/// under the LU lock, saved (temp file, fsync, rename) on a blocking
/// thread with no lock held, and only then made visible, with its unit
/// attentions and aborts. A command racing with it sees the state before
/// or after, as it would had it arrived a moment earlier or later.
pub(crate) async fn pr_out(lu: &LogicalUnit, ctx: &Ctx<'_>) -> CmdResult {
    let cdb = ctx.cdb();
    let sa = ctx.info.sa.unwrap_or(0);
    let scope = u8_at(cdb, 2) >> 4;
    let rtype = u8_at(cdb, 2) & 0x0f;
    let plen = be32(cdb, 5) as usize;
    let move_to = if sa == sa::REGISTER_AND_MOVE {
        Some(move_params(ctx, plen)?)
    } else {
        if plen != 24 {
            return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
        }
        None
    };
    let p = super::rw::data_out(ctx, 24)?;
    let key = be64(&p, 0);
    let sa_key = be64(&p, 8);
    let flags = u8_at(&p, 20);
    let aptpl = match &move_to {
        Some(m) => m.aptpl,
        None => {
            if flags & 0x08 != 0 {
                return Err(Sense::invalid_param_field(20, Some(3)).into()); // SPEC_I_PT
            }
            if flags & 0x04 != 0 {
                return Err(Sense::invalid_param_field(20, Some(2)).into()); // ALL_TG_PT
            }
            flags & 0x01 != 0
        }
    };
    let needs_type = matches!(
        sa,
        sa::RESERVE | sa::RELEASE | sa::PREEMPT | sa::PREEMPT_AND_ABORT
    );
    if needs_type && scope != 0 {
        return Err(Sense::invalid_cdb_field(2, Some(4)).into());
    }
    if matches!(sa, sa::RESERVE | sa::RELEASE) && !valid_type(rtype) {
        return Err(Sense::invalid_cdb_field(2, Some(0)).into());
    }
    let n = ctx.nexus;
    let _turn = lu.pr_turn.lock().await;
    let change = {
        let st = lu.lock();
        let mut c = Change {
            pr: st.pr.clone(),
            uas: Vec::new(),
            aborted: Vec::new(),
        };
        plan(&mut c, n, sa, rtype, key, sa_key, aptpl, move_to)?;
        if c.pr == st.pr {
            return Ok(Bytes::new());
        }
        c
    };
    if let Some(path) = &lu.cfg.pr_path {
        if let Err(e) = persist(&change.pr, path).await {
            tracing::error!(error = %e, path = %path.display(), "persisting reservations failed");
            return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x55, 0x04).into());
        }
    }
    lu.apply_pr(change.pr, change.uas, &change.aborted);
    Ok(Bytes::new())
}

/// Saves `pr` to `path` on a blocking thread (inline when no tokio
/// runtime runs this future, as in the `cdb_parse` fuzz target).
async fn persist(pr: &PrState, path: &Path) -> std::io::Result<()> {
    if tokio::runtime::Handle::try_current().is_err() {
        return pr.save(path);
    }
    let (pr, path) = (pr.clone(), path.to_path_buf());
    tokio::task::spawn_blocking(move || pr.save(&path))
        .await
        .map_err(std::io::Error::other)?
}

/// Works out the effect of one service action on `c`. Every failure
/// leaves the LU as it was (the caller drops `c`).
#[allow(clippy::too_many_arguments)]
fn plan(
    c: &mut Change,
    n: &Nexus,
    sa: u8,
    rtype: u8,
    key: u64,
    sa_key: u64,
    aptpl: bool,
    move_to: Option<MoveTo>,
) -> Result<(), Fail> {
    let me = c.pr.find(n);
    if matches!(sa, sa::REGISTER | sa::REGISTER_AND_IGNORE) {
        match me {
            None => {
                if sa == sa::REGISTER && key != 0 {
                    return Err(Fail::Conflict);
                }
                if sa_key != 0 {
                    c.pr.regs.push(Registration {
                        key: sa_key,
                        initiator_port: n.initiator_port.clone(),
                        relative_port: n.relative_port,
                        transport_id: n.transport_id.to_vec(),
                    });
                    c.pr.aptpl = aptpl;
                }
            }
            Some(i) => {
                if sa == sa::REGISTER && key != c.pr.regs[i].key {
                    return Err(Fail::Conflict);
                }
                if sa_key == 0 {
                    unregister(c, i);
                } else {
                    c.pr.regs[i].key = sa_key;
                }
                c.pr.aptpl = aptpl;
            }
        }
        c.bump();
        return Ok(());
    }
    let Some(i) = me else {
        return Err(Fail::Conflict);
    };
    if c.pr.regs[i].key != key {
        return Err(Fail::Conflict);
    }
    match sa {
        sa::RESERVE => reserve(c, n, rtype),
        sa::RELEASE => release(c, n, rtype),
        sa::CLEAR => {
            let others = regs_except(&c.pr, n);
            c.pr.regs.clear();
            c.pr.res = None;
            c.bump();
            c.ua(others, sense::UA_RESERVATIONS_PREEMPTED);
            Ok(())
        }
        sa::REGISTER_AND_MOVE => match move_to {
            Some(m) => register_and_move(c, n, sa_key, m),
            None => Err(Sense::invalid_cdb_field(1, Some(4)).into()),
        },
        _ => {
            let gone = preempt(c, n, rtype, sa_key)?;
            if sa == sa::PREEMPT_AND_ABORT {
                c.aborted = gone;
            }
            Ok(())
        }
    }
}

/// The parameter list of REGISTER AND MOVE (SPC-4 6.16.4 table 176): the
/// usual keys, UNREG and APTPL, and the destination I_T nexus as a
/// relative target port and an iSCSI TransportID (SPC-4 7.6.4.6).
#[derive(Debug)]
struct MoveTo {
    unreg: bool,
    aptpl: bool,
    relative_port: u16,
    initiator_port: String,
    transport_id: Vec<u8>,
}

fn move_params(ctx: &Ctx<'_>, plen: usize) -> Result<MoveTo, Fail> {
    if plen < 24 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let p = super::rw::data_out(ctx, plen)?;
    let tid_len = be32(&p, 20) as usize;
    if plen != 24 + tid_len {
        return Err(sense::PARAM_LIST_LENGTH_ERROR.into());
    }
    let tid = &p[24..];
    let bad_tid = || Fail::from(Sense::invalid_param_field(24, None));
    // iSCSI (protocol identifier 5), format 01b: name and ISID.
    if tid.len() < 4 || tid[0] != 0x45 {
        return Err(bad_tid());
    }
    let len = 4 + usize::from(be16(tid, 2));
    if len > tid.len() {
        return Err(bad_tid());
    }
    let text = &tid[4..len];
    let text = &text[..text.iter().position(|&b| b == 0).unwrap_or(text.len())];
    let text = std::str::from_utf8(text).map_err(|_| bad_tid())?;
    let (name, isid) = text
        .split_once(",i,0x")
        .or_else(|| text.split_once(",I,0X"))
        .ok_or_else(bad_tid)?;
    if name.is_empty() || isid.len() != 12 || !isid.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_tid());
    }
    Ok(MoveTo {
        unreg: u8_at(&p, 17) & 0x02 != 0,
        aptpl: u8_at(&p, 17) & 0x01 != 0,
        relative_port: be16(&p, 18),
        initiator_port: format!("{name},i,0x{}", isid.to_ascii_lowercase()),
        transport_id: tid[..len].to_vec(),
    })
}

/// REGISTER AND MOVE (SPC-4 5.13.8): the reservation holder hands its
/// reservation, type unchanged, to another I_T nexus, registering that
/// nexus with the service action key when it is not registered yet, and
/// stays registered unless UNREG is set.
fn register_and_move(c: &mut Change, n: &Nexus, sa_key: u64, m: MoveTo) -> Result<(), Fail> {
    let Some(res) = &c.pr.res else {
        return Err(Fail::Conflict);
    };
    // An all-registrants reservation has no single holder to move.
    if all_registrants(res.rtype) || !c.pr.is_holder(n) {
        return Err(Fail::Conflict);
    }
    if sa_key == 0 {
        return Err(Sense::invalid_param_field(8, None).into());
    }
    // Locus has one target port, relative port 1 (SPC-4 7.8.6.7).
    if m.relative_port != n.relative_port {
        return Err(Sense::invalid_param_field(18, None).into());
    }
    if m.initiator_port == n.initiator_port {
        return Err(Sense::invalid_param_field(24, None).into());
    }
    let dest = (m.initiator_port.clone(), m.relative_port);
    if !c
        .pr
        .regs
        .iter()
        .any(|r| r.initiator_port == dest.0 && r.relative_port == dest.1)
    {
        c.pr.regs.push(Registration {
            key: sa_key,
            initiator_port: m.initiator_port,
            relative_port: m.relative_port,
            transport_id: m.transport_id,
        });
    }
    if let Some(r) = c.pr.res.as_mut() {
        r.holder = Some(dest);
    }
    if m.unreg {
        c.pr.regs.retain(|r| !r.is(n));
    }
    c.pr.aptpl = m.aptpl;
    c.bump();
    Ok(())
}

fn regs_except(pr: &PrState, n: &Nexus) -> Vec<(String, u16)> {
    pr.regs
        .iter()
        .filter(|r| !r.is(n))
        .map(|r| (r.initiator_port.clone(), r.relative_port))
        .collect()
}

/// Queue a UA for every live nexus whose port matches one of `ports`.
/// Registrations are keyed by port; live nexuses are known by id, so the
/// UA goes to the nexuses of this LU that are not the caller's.
pub(crate) fn push_ua_to(st: &mut LuState, ports: &[(String, u16)], ua: (u8, u8)) {
    for id in nexuses_of(st, ports) {
        st.push_ua(id, ua);
    }
}

/// The live nexuses of this LU whose port is one of `ports`.
pub(crate) fn nexuses_of(st: &LuState, ports: &[(String, u16)]) -> Vec<u64> {
    if ports.is_empty() {
        return Vec::new();
    }
    st.known
        .iter()
        .copied()
        .filter(|id| st.port_of.get(id).is_some_and(|p| ports.contains(p)))
        .collect()
}

fn unregister(c: &mut Change, i: usize) {
    let r = c.pr.regs.remove(i);
    let held = match &c.pr.res {
        Some(res) if all_registrants(res.rtype) => c.pr.regs.is_empty(),
        Some(Reservation {
            holder: Some((p, rp)),
            ..
        }) => *p == r.initiator_port && *rp == r.relative_port,
        _ => false,
    };
    if held {
        let t = c.pr.res.as_ref().map_or(0, |x| x.rtype);
        c.pr.res = None;
        if matches!(t, ty::WE_RO | ty::EA_RO) {
            let others: Vec<_> =
                c.pr.regs
                    .iter()
                    .map(|r| (r.initiator_port.clone(), r.relative_port))
                    .collect();
            c.ua(others, sense::UA_RESERVATIONS_RELEASED);
        }
    }
}

fn reserve(c: &mut Change, n: &Nexus, rtype: u8) -> Result<(), Fail> {
    match &c.pr.res {
        Some(r) => {
            if c.pr.is_holder(n) && r.rtype == rtype {
                Ok(())
            } else {
                Err(Fail::Conflict)
            }
        }
        None => {
            c.pr.res = Some(Reservation {
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

fn release(c: &mut Change, n: &Nexus, rtype: u8) -> Result<(), Fail> {
    let Some(r) = &c.pr.res else {
        return Ok(());
    };
    if !c.pr.is_holder(n) {
        return Ok(());
    }
    if r.rtype != rtype {
        return Err(sense::INVALID_RELEASE_OF_PR.into());
    }
    let t = r.rtype;
    c.pr.res = None;
    if t != ty::WE && t != ty::EA {
        let others = regs_except(&c.pr, n);
        c.ua(others, sense::UA_RESERVATIONS_RELEASED);
    }
    Ok(())
}

/// PREEMPT (SPC-4 5.13.11.2): returns the ports whose registrations it
/// removed, whose tasks PREEMPT AND ABORT also aborts.
fn preempt(c: &mut Change, n: &Nexus, rtype: u8, sa_key: u64) -> Result<Vec<(String, u16)>, Fail> {
    let removed_matching = |c: &mut Change, all_others: bool| -> Vec<(String, u16)> {
        let mut gone = Vec::new();
        c.pr.regs.retain(|r| {
            let hit = !r.is(n) && (all_others || r.key == sa_key);
            if hit {
                gone.push((r.initiator_port.clone(), r.relative_port));
            }
            !hit
        });
        gone
    };
    let new_reservation = |rtype: u8| Reservation {
        rtype,
        holder: if all_registrants(rtype) {
            None
        } else {
            Some((n.initiator_port.clone(), n.relative_port))
        },
    };
    let res = c.pr.res.clone();
    let gone = match res {
        None => {
            if sa_key == 0 {
                return Err(Sense::invalid_param_field(8, None).into());
            }
            if !c.pr.regs.iter().any(|r| r.key == sa_key) {
                return Err(Fail::Conflict);
            }
            removed_matching(c, false)
        }
        Some(r) if all_registrants(r.rtype) => {
            if sa_key == 0 {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(0)).into());
                }
                let gone = removed_matching(c, true);
                c.pr.res = Some(new_reservation(rtype));
                gone
            } else {
                if !c.pr.regs.iter().any(|r| r.key == sa_key) {
                    return Err(Fail::Conflict);
                }
                removed_matching(c, false)
            }
        }
        Some(_) => {
            let holder_key = c.pr.res_key();
            if sa_key == holder_key {
                if !valid_type(rtype) {
                    return Err(Sense::invalid_cdb_field(2, Some(0)).into());
                }
                let gone = removed_matching(c, false);
                c.pr.res = Some(new_reservation(rtype));
                gone
            } else {
                if sa_key == 0 {
                    return Err(Sense::invalid_param_field(8, None).into());
                }
                if !c.pr.regs.iter().any(|r| r.key == sa_key) {
                    return Err(Fail::Conflict);
                }
                removed_matching(c, false)
            }
        }
    };
    c.ua(gone.clone(), sense::UA_REGISTRATIONS_PREEMPTED);
    c.bump();
    Ok(gone)
}
