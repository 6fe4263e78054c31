//! `locus image import` and `locus image export` end to end: three
//! `locusd` processes and a Redis ([`cluster`]), `locus` taking the lease
//! itself with the cluster secret, and `qemu-img` as the judge.
//!
//! - round trips: a sparse 64 MiB raw file (three data extents, an
//!   allocated run of zeros, large holes) imported onto n1 and n2 lands
//!   byte for byte on both copies, which allocate no more than the source;
//!   exported back it compares equal (`qemu-img compare`) and stays sparse;
//!   the same through qcow2 both ways;
//! - bad input: a file that is not whole logical blocks, an existing name,
//!   an unknown image, an existing output file, a served image, no secret;
//!   each refused with its exit code, changing nothing; and an import whose
//!   only location fills up midway, which says so and how to remove what
//!   it created.

mod cluster;
mod common;

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use cluster::{one_at_a_time, Cluster, Layout, Rng, IMAGE};
use common::Run;

const MIB: u64 = 1 << 20;
/// The source file's size.
const SIZE: u64 = 64 * MIB;
/// Its data extents (offset, length): random bytes, never a 64 KiB run of
/// zeros.
const EXTENTS: [(u64, u64); 3] = [
    (MIB, 3 * MIB),
    (20 * MIB + (64 << 10), MIB / 2),
    (60 * MIB, 4 * MIB),
];
/// An allocated extent of zeros (written, so not a hole in the source):
/// import skips it as a run of zero chunks.
const ZEROS: (u64, u64) = (40 * MIB, MIB);
/// What a copy may allocate beyond the source (file system metadata).
const SLACK: u64 = 256 << 10;

fn data_bytes() -> u64 {
    EXTENTS.iter().map(|(_, l)| l).sum()
}

/// Writes the sparse source file at `path`.
fn make_source(path: &Path) {
    let f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{e}"));
    f.set_len(SIZE).unwrap_or_else(|e| panic!("{e}"));
    let mut rng = Rng::new(0x1e_0e77);
    for (offset, len) in EXTENTS {
        let bytes: Vec<u8> = (0..len / 8)
            .flat_map(|_| rng.next().to_le_bytes())
            .collect();
        f.write_all_at(&bytes, offset)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    f.write_all_at(&vec![0; ZEROS.1 as usize], ZEROS.0)
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Bytes the file system allocated for `path` (st_blocks * 512).
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .blocks()
        * 512
}

fn qemu_img(args: &[&str]) -> Run {
    Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("qemu-img (qemu-utils): {e}"))
        .into()
}

fn s(p: &Path) -> &str {
    p.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", p.display()))
}

/// Node `i`'s copy of image `name`.
fn copy_of(c: &Cluster, i: usize, name: &str) -> PathBuf {
    c.nodes[i].dir.join("images").join(format!("{name}.img"))
}

/// `locus --json ARGS --cluster-secret-file SECRET`.
fn with_secret(c: &Cluster, args: &[&str]) -> Run {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cluster-secret-file", s(c.secret_path())]);
    c.locus(&all)
}

/// Imports `file` as `name` onto n1 and n2; checks the summary, that both
/// copies hold the source's bytes (`raw`) and allocate no more than it,
/// that n3 got nothing, and that every copy is in sync.
fn import_checked(c: &Cluster, name: &str, file: &Path, format: &str, raw: &Path) {
    let r = with_secret(
        c,
        &[
            "image",
            "import",
            name,
            s(file),
            "--format",
            format,
            "--location",
            "n1,n2",
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    let v = r.json();
    eprintln!("import {format}: {v}");
    assert_eq!(v["size_bytes"], SIZE, "{v}");
    assert_eq!(v["data_bytes"], data_bytes(), "{v}");
    assert_eq!(v["hole_bytes"], SIZE - data_bytes(), "{v}");
    assert_eq!(v["failed_copies"], serde_json::json!([]), "{v}");
    let source = std::fs::read(raw).unwrap_or_else(|e| panic!("{e}"));
    for i in 0..2 {
        let p = copy_of(c, i, name);
        let copy = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        if copy != source {
            let first = copy.iter().zip(&source).position(|(a, b)| a != b);
            panic!(
                "n{}'s copy differs from the source (first at byte {first:?})",
                i + 1
            );
        }
        let (got, limit) = (allocated(&p), allocated(raw) + SLACK);
        eprintln!(
            "n{}'s copy allocates {got} bytes, the source {}",
            i + 1,
            allocated(raw)
        );
        assert!(got <= limit, "n{}'s copy allocates {got} > {limit}", i + 1);
        // Below the source by its allocated run of zeros, not written.
        assert!(
            got <= data_bytes() + SLACK,
            "n{}'s copy allocates {got} bytes for {} of data",
            i + 1,
            data_bytes()
        );
    }
    assert!(!copy_of(c, 2, name).exists(), "n3 is not a location");
    let info = c.locus(&["--json", "image", "info", name]).ok().json();
    for run in info["placement"].as_array().cloned().unwrap_or_default() {
        for l in run["locations"].as_array().cloned().unwrap_or_default() {
            assert_eq!(l["dirty_bits"], 0, "{info}");
        }
    }
}

/// Exports `name` to `out` in `format`; checks the summary, that `out`
/// compares equal to `source` (same format) and allocates no more.
fn export_checked(c: &Cluster, name: &str, out: &Path, format: &str, source: &Path) {
    let r = with_secret(c, &["image", "export", name, s(out), "--format", format]);
    assert_eq!(r.code, 0, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    let v = r.json();
    eprintln!("export {format}: {v}");
    assert_eq!(v["data_bytes"], data_bytes(), "{v}");
    let info = qemu_img(&["info", "--output=json", s(out)]).ok().json();
    assert_eq!(info["format"], format, "{info}");
    let cmp = qemu_img(&["compare", "-f", format, "-F", format, s(source), s(out)]);
    assert_eq!(cmp.code, 0, "{}{}", cmp.stdout, cmp.stderr);
    let (got, limit) = (allocated(out), allocated(source) + SLACK);
    assert!(
        got <= limit,
        "the {format} export allocates {got} > {limit} bytes"
    );
}

#[test]
fn import_and_export_keep_the_data_and_the_holes_raw_and_qcow2() {
    let _one = one_at_a_time();
    let c = Cluster::start(&Layout::all_on_one_site(3));
    let dir = c.tmp.path();
    let src = dir.join("source.raw");
    make_source(&src);

    import_checked(&c, "imp", &src, "raw", &src);
    export_checked(&c, "imp", &dir.join("export.raw"), "raw", &src);

    let qsrc = dir.join("source.qcow2");
    qemu_img(&["convert", "-f", "raw", "-O", "qcow2", s(&src), s(&qsrc)]).ok();
    import_checked(&c, "impq", &qsrc, "qcow2", &src);
    export_checked(&c, "impq", &dir.join("export.qcow2"), "qcow2", &qsrc);
}

#[test]
fn bad_imports_and_exports_are_refused_and_change_nothing() {
    let _one = one_at_a_time();
    // n3's disk is a 2 MiB tmpfs: an import onto it alone fails midway.
    let c = Cluster::start(&Layout {
        locations: vec![0, 1],
        small_disk: Some((2, "2M")),
        ..Layout::all_on_one_site(3)
    });
    let dir = c.tmp.path();

    // Not whole logical blocks: exit 1, naming both sizes; no image.
    let odd = dir.join("odd.raw");
    std::fs::write(&odd, vec![7u8; 1000]).unwrap_or_else(|e| panic!("{e}"));
    let r = with_secret(
        &c,
        &["image", "import", "odd", s(&odd), "--location", "n1,n2"],
    );
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("1000") && r.stderr.contains("512"),
        "{}",
        r.stderr
    );
    assert_eq!(c.locus(&["image", "info", "odd"]).code, 2);
    assert!(!copy_of(&c, 0, "odd").exists() && !copy_of(&c, 1, "odd").exists());

    // An existing name: exit 3 before anything is read or written.
    let src = dir.join("source.raw");
    make_source(&src);
    let r = with_secret(&c, &["image", "import", IMAGE, s(&src), "--location", "n1"]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("already exists"), "{}", r.stderr);

    // A write that fails midway (n3's disk fills up): exit 7, naming the
    // cause; the image stays, and the message says how to remove it.
    let r = with_secret(
        &c,
        &["image", "import", "full", s(&src), "--location", "n3"],
    );
    assert_eq!(r.code, 7, "{}\n{}\n{}", r.stdout, r.stderr, c.logs());
    eprintln!("an import that fails midway: {}", r.stderr.trim());
    assert!(
        r.stderr.contains("space") && r.stderr.contains("`locus image destroy full`"),
        "{}",
        r.stderr
    );
    c.locus(&["image", "info", "full"]).ok();
    c.locus(&["image", "destroy", "full"]).ok();

    // An unknown image: exit 2.
    let out = dir.join("out.raw");
    let r = with_secret(&c, &["image", "export", "nosuch", s(&out)]);
    assert_eq!(r.code, 2, "{}\n{}", r.stdout, r.stderr);
    assert!(!out.exists());

    // An existing output file: exit 3 and untouched; replaced with --force.
    c.locus(&[
        "image",
        "create",
        "small",
        "--size",
        "1M",
        "--location",
        "n1,n2",
    ])
    .ok();
    std::fs::write(&out, b"keep me").unwrap_or_else(|e| panic!("{e}"));
    let r = with_secret(&c, &["image", "export", "small", s(&out)]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap_or_default(), b"keep me");
    let r = with_secret(&c, &["image", "export", "small", s(&out), "--force"]);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::read(&out).unwrap_or_default(),
        vec![0u8; MIB as usize]
    );

    // A served image (vm1, by n1): exit 3, saying how to stop serving it.
    let served = dir.join("served.raw");
    let r = with_secret(&c, &["image", "export", IMAGE, s(&served)]);
    assert_eq!(r.code, 3, "{}\n{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("n1") && r.stderr.contains("locus target lun remove"),
        "{}",
        r.stderr
    );
    assert!(!served.exists());

    // No cluster secret: exit 6, naming the option.
    let r: Run = common::cmd(&c.url, &["image", "export", "small", s(&served)])
        .env_remove("LOCUS_CLUSTER_SECRET_FILE")
        .output()
        .unwrap_or_else(|e| panic!("{e}"))
        .into();
    assert_eq!(r.code, 6, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("--cluster-secret-file"), "{}", r.stderr);
    assert!(!served.exists());
    // Nothing of the export attempts is left next to the output.
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".locus-export-")
        })
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}
