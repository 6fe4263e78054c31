//! Test harness: a real `locusd` (the library's `daemon::run`) on an ephemeral
//! loopback port with a temp data dir, and a minimal wire-level initiator
//! built on the PDU codec, for tests that must send exactly the bytes they
//! choose (malformed PDUs, bad sequence numbers, dropped connections).
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iscsi_target::daemon::config::Config;
use iscsi_target::pdu::{
    decode_frame, Bhs, Digests, FrameLimits, Itt, LoginFlags, LoginRequest, NopOut, Pdu,
    ScsiCommand, SeqNum, TaskAttr, Ttt,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const TARGET: &str = "iqn.2026-11.io.locus:default";
pub const INITIATOR: &str = "iqn.2026-11.io.locus.test:initiator";

/// A daemon running inside the test process. Stops (gracefully) on drop.
pub struct TestDaemon {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestDaemon {
    /// Starts with the default target, or with `toml` (targets only; listen
    /// and data_dir are set by the harness).
    pub async fn start(toml: Option<&str>) -> TestDaemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = match toml {
            Some(t) => Config::parse(t).expect("test config parses"),
            None => Config::default(),
        };
        for t in &mut cfg.targets {
            for l in &mut t.luns {
                if l.size == "1G" {
                    l.size = "64M".into();
                }
            }
        }
        cfg.data_dir = dir.path().to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        cfg.listen = vec![addr];
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            iscsi_target::daemon::run(cfg, vec![listener], rx)
                .await
                .expect("daemon starts");
        });
        TestDaemon {
            addr,
            dir,
            shutdown: tx,
            task: Some(task),
        }
    }

    /// Graceful shutdown; returns when the daemon has flushed.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.await.expect("daemon task");
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A minimal initiator speaking raw PDUs.
pub struct Wire {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub limits: FrameLimits,
    pub digests: Digests,
    pub cmd_sn: SeqNum,
    pub exp_stat_sn: SeqNum,
    pub itt: u32,
    pub isid: [u8; 6],
}

pub fn text(pairs: &[(&str, &str)]) -> Bytes {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    Bytes::from(v)
}

pub fn parse_text(b: &[u8]) -> Vec<(String, String)> {
    b.split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Each connection gets its own ISID, so that two test connections are two
/// sessions (the same ISID would reinstate, RFC 7143 §6.3.5).
fn fresh_isid() -> [u8; 6] {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    [0x80, 0x12, 0x34, 0x56, n[0], n[1]]
}

impl Wire {
    pub async fn connect(addr: SocketAddr) -> Wire {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        Wire {
            stream,
            buf: BytesMut::new(),
            limits: FrameLimits {
                max_recv_data_segment: 1 << 24,
                header_digest: false,
                data_digest: false,
            },
            digests: Digests::default(),
            cmd_sn: SeqNum(1),
            exp_stat_sn: SeqNum(0),
            itt: 0x100,
            isid: fresh_isid(),
        }
    }

    pub fn next_itt(&mut self) -> Itt {
        self.itt += 1;
        Itt(self.itt)
    }

    pub async fn send(&mut self, pdu: &Pdu) {
        let bytes = pdu.to_vec(self.digests);
        self.stream.write_all(&bytes).await.expect("send");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send raw");
    }

    /// Next PDU, or `None` if the target closed the connection. Panics after
    /// 20 s without a PDU (a hung target is a test failure, not a hang).
    pub async fn recv(&mut self) -> Option<Pdu> {
        tokio::time::timeout(Duration::from_secs(20), self.recv_inner())
            .await
            .expect("target answered within 20 s")
    }

    async fn recv_inner(&mut self) -> Option<Pdu> {
        loop {
            if let Some(raw) =
                decode_frame(&mut self.buf, &self.limits).expect("target frames are valid")
            {
                let pdu = Pdu::decode(&raw).expect("target PDUs decode");
                if let Some(sn) = stat_sn_of(&pdu.bhs) {
                    self.exp_stat_sn = sn.next();
                }
                return Some(pdu);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// One login request; returns the response PDU.
    pub async fn login_step(&mut self, flags: LoginFlags, keys: &[(&str, &str)]) -> Pdu {
        let itt = Itt(1);
        let pdu = Pdu::new(
            Bhs::LoginRequest(LoginRequest {
                flags,
                version_max: 0,
                version_min: 0,
                isid: self.isid,
                tsih: 0,
                itt,
                cid: 0,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            text(keys),
        );
        self.send(&pdu).await;
        self.recv().await.expect("login response")
    }

    /// A full login without authentication straight to full-feature phase.
    /// Returns the final login response's text keys.
    pub async fn login(&mut self, target: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut keys = vec![
            ("InitiatorName", INITIATOR),
            ("TargetName", target),
            ("SessionType", "Normal"),
            ("AuthMethod", "None"),
        ];
        let r = self
            .login_step(
                LoginFlags {
                    transit: true,
                    cont: false,
                    csg: 0,
                    nsg: 1,
                },
                &keys,
            )
            .await;
        assert_login_ok(&r);
        keys.clear();
        keys.extend_from_slice(&[
            ("HeaderDigest", "None"),
            ("DataDigest", "None"),
            ("InitialR2T", "No"),
            ("ImmediateData", "Yes"),
            ("MaxRecvDataSegmentLength", "262144"),
            ("MaxBurstLength", "1048576"),
            ("FirstBurstLength", "262144"),
        ]);
        // Extra keys replace defaults of the same name (a key twice is an error).
        keys.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        keys.extend_from_slice(extra);
        let r = self
            .login_step(
                LoginFlags {
                    transit: true,
                    cont: false,
                    csg: 1,
                    nsg: 3,
                },
                &keys,
            )
            .await;
        assert_login_ok(&r);
        let Bhs::LoginResponse(lr) = &r.bhs else {
            unreachable!()
        };
        assert!(
            lr.flags.transit && lr.flags.nsg == 3,
            "reached full feature: {lr:?}"
        );
        let pairs = parse_text(&r.data);
        if pairs
            .iter()
            .any(|(k, v)| k == "HeaderDigest" && v == "CRC32C")
        {
            self.digests.header = true;
            self.limits.header_digest = true;
        }
        if pairs
            .iter()
            .any(|(k, v)| k == "DataDigest" && v == "CRC32C")
        {
            self.digests.data = true;
            self.limits.data_digest = true;
        }
        pairs
    }

    pub fn scsi_command(
        &mut self,
        cdb: &[u8],
        expected_len: u32,
        read: bool,
        write: bool,
        data: Bytes,
    ) -> Pdu {
        let mut c = [0u8; 16];
        c[..cdb.len()].copy_from_slice(cdb);
        let itt = self.next_itt();
        let pdu = Pdu::new(
            Bhs::ScsiCommand(ScsiCommand {
                immediate: false,
                final_: true,
                read,
                write,
                attr: TaskAttr::Simple,
                lun: 0,
                itt,
                expected_len,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
                cdb: c,
            }),
            data,
        );
        self.cmd_sn = self.cmd_sn.next();
        pdu
    }

    pub fn nop_out(&mut self, data: Bytes) -> Pdu {
        let itt = self.next_itt();
        Pdu::new(
            Bhs::NopOut(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: Ttt::RESERVED,
                cmd_sn: self.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            }),
            data,
        )
    }

    /// Sends TEST UNIT READY on LUN 0 and returns its status and sense.
    pub async fn test_unit_ready(&mut self) -> (u8, Option<(u8, u8, u8)>) {
        let tur = self.scsi_command(&[0u8; 6], 0, false, false, Bytes::new());
        self.send(&tur).await;
        loop {
            let r = self.recv().await.expect("TEST UNIT READY response");
            if matches!(r.bhs, Bhs::ScsiResponse(_)) {
                return scsi_status(&r);
            }
        }
    }

    /// What an initiator does after login: the first command to LUN 0
    /// reports the new I_T nexus's POWER ON, RESET, OR BUS DEVICE RESET
    /// OCCURRED unit attention (SPC-4 5.14), once; the next one is GOOD.
    pub async fn expect_power_on_ua(&mut self) {
        assert_eq!(
            self.test_unit_ready().await,
            (2, Some((6, 0x29, 0x00))),
            "a new I_T nexus starts with the POWER ON unit attention"
        );
        assert_eq!(self.test_unit_ready().await, (0, None), "reported once");
    }

    /// Sends a ping and waits for its NOP-In: proves the session still works.
    pub async fn ping(&mut self) {
        let nop = self.nop_out(Bytes::from_static(b"ping"));
        let Bhs::NopOut(n) = &nop.bhs else {
            unreachable!()
        };
        let itt = n.itt;
        self.send(&nop).await;
        loop {
            let r = self.recv().await.expect("NOP-In");
            if let Bhs::NopIn(ni) = &r.bhs {
                if ni.itt == itt {
                    assert_eq!(&r.data[..], b"ping");
                    return;
                }
            }
        }
    }
}

pub fn stat_sn_of(b: &Bhs) -> Option<SeqNum> {
    match b {
        Bhs::ScsiResponse(r) => Some(r.stat_sn),
        Bhs::DataIn(d) if d.status.is_some() => Some(d.stat_sn),
        Bhs::LoginResponse(r) => Some(r.stat_sn),
        Bhs::TextResponse(r) => Some(r.stat_sn),
        Bhs::LogoutResponse(r) => Some(r.stat_sn),
        Bhs::TaskMgmtResponse(r) => Some(r.stat_sn),
        Bhs::NopIn(r) if r.itt != Itt::RESERVED => Some(r.stat_sn),
        Bhs::Reject(r) => Some(r.stat_sn),
        _ => None,
    }
}

pub fn assert_login_ok(r: &Pdu) {
    let Bhs::LoginResponse(lr) = &r.bhs else {
        panic!("expected a Login Response, got {:?}", r.bhs)
    };
    assert_eq!(
        (lr.status_class, lr.status_detail),
        (0, 0),
        "login refused: {:?}",
        parse_text(&r.data)
    );
}

/// Status and sense (key, asc, ascq) of a SCSI Response PDU.
pub fn scsi_status(r: &Pdu) -> (u8, Option<(u8, u8, u8)>) {
    match &r.bhs {
        Bhs::ScsiResponse(s) => {
            let sense = (r.data.len() >= 2 + 14).then(|| {
                let s = &r.data[2..];
                (s[2] & 0x0f, s[12], s[13])
            });
            (s.status, sense)
        }
        Bhs::DataIn(d) => (d.status.expect("status in Data-In"), None),
        other => panic!("expected a SCSI Response, got {other:?}"),
    }
}
