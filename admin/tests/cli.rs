//! The `locus` binary against the embedded store and a real redis-server:
//! output, `--json` and exit codes.

#[path = "../../tests/tests/common/mod.rs"]
mod common;

use common::redis::RedisServer;
use common::{cmd, locus};
use serde_json::Value;

/// Every command and its exit code, against one store.
fn workflow(m: &str) {
    locus(
        m,
        &[
            "node",
            "add",
            "a",
            "--address",
            "127.0.0.1:7001",
            "--capacity",
            "4T",
        ],
    )
    .ok();
    locus(
        m,
        &[
            "node",
            "add",
            "b",
            "--address",
            "127.0.0.1:7002",
            "--site",
            "dc2",
        ],
    )
    .ok();
    let r = locus(m, &["node", "add", "a", "--address", "127.0.0.1:7001"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(
        locus(m, &["node", "add", "c", "--address", "nowhere"]).code,
        1
    );
    let nodes = locus(m, &["--json", "node", "list"]).ok().json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2));

    // Bad input: clear error, distinct code, nothing created.
    let r = locus(
        m,
        &["image", "create", "x", "--size", "1001", "--location", "a"],
    );
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains("not a multiple of the logical block size"),
        "{}",
        r.stderr
    );
    let r = locus(
        m,
        &[
            "image",
            "create",
            "x",
            "--size",
            "1G",
            "--block-size",
            "3M",
            "--location",
            "a",
        ],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("power of two"), "{}", r.stderr);
    let r = locus(
        m,
        &["image", "create", "x", "--size", "1G", "--location", "a,zz"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("'zz' is not registered"), "{}", r.stderr);
    assert_eq!(
        locus(m, &["--json", "image", "list"]).ok().json(),
        Value::Array(vec![])
    );

    let r = locus(
        m,
        &[
            "image",
            "create",
            "vm1",
            "--size",
            "1G",
            "--location",
            "a",
            "--hypervisor",
            "a",
        ],
    )
    .ok();
    assert!(
        r.stdout
            .contains("created image vm1 (1G, 256 blocks of 4M) on a"),
        "{}",
        r.stdout
    );
    assert_eq!(
        locus(
            m,
            &["image", "create", "vm1", "--size", "1G", "--location", "a"]
        )
        .code,
        3
    );
    locus(m, &["location", "add", "vm1", "b"]).ok();
    let info = locus(m, &["--json", "image", "info", "vm1"]).ok().json();
    assert_eq!(info["blocks"], 256);
    assert_eq!(info["placement"][0]["locations"][1]["node"], "b");
    assert_eq!(info["placement"][0]["locations"][1]["state"], "out-of-sync");

    let r = locus(m, &["location", "remove", "vm1", "a"]);
    assert_eq!(r.code, 3);
    assert!(
        r.stderr.contains("last in-sync copy of blocks 0-255"),
        "{}",
        r.stderr
    );
    let r = locus(
        m,
        &[
            "location", "add", "vm1", "b", "--start", "200", "--end", "256",
        ],
    );
    assert_eq!(r.code, 1, "range past the end");
    assert!(r.stderr.contains("past the end"), "{}", r.stderr);
    // Removing b's copies of blocks 10-19 is fine: a keeps them in sync.
    locus(
        m,
        &[
            "location", "remove", "vm1", "b", "--start", "10", "--end", "19",
        ],
    )
    .ok();
    let human = locus(m, &["image", "info", "vm1"]).ok().stdout;
    assert!(human.contains("10-19   10     a:in-sync\n"), "{human}");
    assert!(
        human.contains("20-255  236    a:in-sync b:out-of-sync"),
        "{human}"
    );

    // Nobody serves vm1 and no cluster secret is given: nobody can copy.
    let r = locus(m, &["image", "sync", "vm1"]);
    assert_eq!(r.code, 6);
    assert!(
        r.stderr.contains("no node holds its write lease")
            && r.stderr.contains("--cluster-secret-file"),
        "{}",
        r.stderr
    );

    let errors = locus(m, &["--json", "errors"]).ok().json();
    assert_eq!(errors[0]["node"], "b");
    assert_eq!(errors[0]["image"], "vm1");
    let stats = locus(m, &["--json", "stats", "vm1"]).ok().json();
    assert_eq!(stats["reads"], 0);
    assert_eq!(locus(m, &["stats", "nope"]).code, 2);

    let status = locus(m, &["--json", "cluster", "status"]).ok().json();
    assert_eq!(status[0]["node"]["id"], "a");
    assert_eq!(status[0]["used"], 1u64 << 30);
    assert_eq!(status[0]["serves"][0], "vm1");
    assert_eq!(status[1]["used"], (256 - 10) * (4u64 << 20));

    let t = "iqn.2026-01.org.locus:vm1";
    locus(m, &["target", "create", t]).ok();
    assert_eq!(locus(m, &["target", "create", t]).code, 3);
    assert_eq!(locus(m, &["target", "create", "not-an-iqn"]).code, 1);
    let r = locus(m, &["--json", "target", "lun", "add", t, "vm1"])
        .ok()
        .json();
    assert_eq!(r["lun"], 0);
    assert_eq!(
        locus(m, &["target", "lun", "add", t, "vm1", "--lun", "0"]).code,
        3
    );
    locus(
        m,
        &["target", "acl", "add", t, "iqn.1994-05.com.redhat:client1"],
    )
    .ok();
    assert_eq!(
        locus(
            m,
            &["target", "chap", "set", t, "--user", "u", "--secret", "short"]
        )
        .code,
        1
    );
    let r = locus(
        m,
        &[
            "--json",
            "target",
            "chap",
            "set",
            t,
            "--user",
            "u",
            "--secret",
            "twelve-chars-ok",
            "--mutual-user",
            "tgt",
            "--mutual-secret",
            "another-secret",
        ],
    )
    .ok();
    assert!(
        !r.stdout.contains("twelve-chars-ok"),
        "secrets are never printed"
    );
    assert_eq!(r.json()["chap"], "mutual");

    let r = locus(m, &["image", "destroy", "vm1"]);
    assert_eq!(r.code, 3);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    locus(m, &["target", "lun", "remove", t, "--lun", "0"]).ok();
    assert_eq!(
        locus(m, &["target", "lun", "remove", t, "--lun", "0"]).code,
        2
    );
    locus(m, &["target", "lun", "add", t, "vm1", "--lun", "3"]).ok();
    assert_eq!(locus(m, &["node", "remove", "a"]).code, 3);
    locus(m, &["image", "destroy", "vm1", "--force"]).ok();
    assert_eq!(locus(m, &["image", "info", "vm1"]).code, 2);
    locus(m, &["node", "remove", "a"]).ok();
    assert_eq!(locus(m, &["node", "remove", "a"]).code, 2);
}

#[test]
fn workflow_embedded() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    workflow(&d.path().display().to_string());
}

#[test]
fn workflow_redis() {
    let srv = RedisServer::start();
    workflow(&srv.url);
}

#[test]
fn default_store_is_locus_data_in_cwd() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_locus"))
        .env_remove("LOCUS_METADATA")
        .current_dir(d.path())
        .args(["node", "add", "a", "--address", "127.0.0.1:1"])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    assert!(d.path().join("locus-data/metadata.redb").is_file());
}

#[test]
fn usage_errors_and_help() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let m = d.path().display().to_string();
    let m = m.as_str();
    let r = locus(m, &["bogus"]);
    assert_eq!(r.code, 1);
    let r = locus(m, &["--help"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("Exit codes:") && r.stdout.contains("3  refused"),
        "{}",
        r.stdout
    );
    // The meaning of an empty ACL is stated where targets are defined.
    let r = locus(m, &["target", "--help"]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .contains("an empty ACL lets every initiator log in"),
        "{}",
        r.stdout
    );
    let r = locus(
        m,
        &["image", "create", "x", "--size", "8X", "--location", "a"],
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("unknown unit"), "{}", r.stderr);
}

#[test]
fn store_unavailable_and_corrupt() {
    let port = {
        let srv = RedisServer::start_with_password("secret-for-test");
        let wrong = format!("redis://:nope@127.0.0.1:{}/0", srv.port);
        let r = locus(&wrong, &["image", "list"]);
        assert_eq!(r.code, 4);
        assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);
        assert!(!r.stderr.contains("nope@"), "password masked: {}", r.stderr);
        srv.port
    };
    let r = locus(&format!("redis://127.0.0.1:{port}/0"), &["image", "list"]);
    assert_eq!(r.code, 4);
    assert!(r.stderr.contains("cannot reach redis"), "{}", r.stderr);

    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = d.path().join("metadata.redb");
    std::fs::write(&file, b"this is not a redb file, it is garbage")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = locus(
        &d.path().display().to_string(),
        &["--json", "image", "list"],
    );
    assert_eq!(r.code, 5);
    assert!(
        r.stderr.contains(&file.display().to_string()),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("\"kind\":\"corrupt\""), "{}", r.stderr);
}

/// Many admin processes racing on one image: every update lands.
fn racing_processes(m: &str) {
    locus(m, &["node", "add", "a", "--address", "127.0.0.1:7001"]).ok();
    const P: usize = 6;
    for i in 0..P {
        locus(
            m,
            &[
                "node",
                "add",
                &format!("n{i}"),
                "--address",
                "127.0.0.1:7002",
            ],
        )
        .ok();
    }
    locus(
        m,
        &[
            "image",
            "create",
            "shared",
            "--size",
            "1G",
            "--location",
            "a",
        ],
    )
    .ok();
    let children: Vec<_> = (0..P)
        .map(|i| {
            let (s, e) = ((i * 10).to_string(), (i * 10 + 9).to_string());
            cmd(
                m,
                &[
                    "location",
                    "add",
                    "shared",
                    &format!("n{i}"),
                    "--start",
                    &s,
                    "--end",
                    &e,
                ],
            )
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let info = locus(m, &["--json", "image", "info", "shared"]).ok().json();
    assert_eq!(info["version"], 1 + P as u64, "every update committed once");
    for i in 0..P {
        let run = &info["placement"][i];
        assert_eq!(run["blocks"]["start"], (i * 10) as u64);
        let nodes: Vec<&str> = run["locations"].as_array().map_or(vec![], |a| {
            a.iter().filter_map(|l| l["node"].as_str()).collect()
        });
        assert_eq!(
            nodes,
            vec!["a".to_string(), format!("n{i}")],
            "run {i}: {run}"
        );
    }
}

#[test]
fn racing_processes_embedded() {
    let d = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    racing_processes(&d.path().display().to_string());
}

#[test]
fn racing_processes_redis() {
    let srv = RedisServer::start();
    racing_processes(&srv.url);
}
