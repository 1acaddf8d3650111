//! The test-only switches that turn durability off
//! (`DAKKIO_GATEWAY_TEST_ACK_BEFORE_COMMIT`, `…_HOLD_BEFORE_MARK`) live
//! behind the `fault-injection` cargo feature. testkit enables it, so this
//! test binary and the gateway binary beside it have them; what must hold is
//! that a normal build (what `cargo build --release`, `cargo deb` and
//! scripts/cross-build.sh do) neither enables the feature nor contains the
//! switch names. scripts/cross-build.sh also scans the shipped binary.

use std::process::Command;

const SWITCHES: [&str; 3] = [
    "DAKKIO_GATEWAY_TEST_ACK_BEFORE_COMMIT",
    "DAKKIO_GATEWAY_TEST_HOLD_BEFORE_MARK",
    "DAKKIO_GATEWAY_TEST_ALERT_CLOCK",
];

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// `cargo tree` of the gateway package with the given edge kinds, one
/// line per package or feature.
fn cargo_tree(edges: &str) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--prefix",
            "none",
            "-p",
            "dakkio-gateway",
        ])
        .args(["-e", edges])
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -e {edges}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn a_normal_build_neither_enables_fault_injection_nor_links_testkit() {
    let normal = cargo_tree("normal,build,features");
    assert!(
        normal.contains(" feature \"default\""),
        "the listing shows features:\n{normal}"
    );
    assert!(
        !normal.contains("dakkio-gateway feature \"fault-injection\""),
        "a normal build enables fault-injection:\n{normal}"
    );
    assert!(
        !normal.lines().any(|l| l.starts_with("testkit ")),
        "testkit is a normal dependency:\n{normal}"
    );
    // Control: the same listing with dev edges shows both, so the checks
    // above can fail.
    let dev = cargo_tree("normal,build,dev,features");
    assert!(dev.contains("dakkio-gateway feature \"fault-injection\""));
    assert!(dev.lines().any(|l| l.starts_with("testkit ")));
}

#[test]
fn a_binary_built_without_fault_injection_has_no_switch() {
    let bin = std::fs::read(crate::support::binary()).expect("read the gateway binary");
    if cfg!(feature = "fault-injection") {
        // Control: the scan finds the switches in a binary that has them.
        for s in SWITCHES {
            assert!(
                contains(&bin, s),
                "{s} not found in a fault-injection build"
            );
        }
        eprintln!(
            "the gateway binary of this test run is built with fault-injection (testkit \
             enables it): checked that the scan finds the switches; the shipped binary is \
             scanned by scripts/cross-build.sh"
        );
    } else {
        for s in SWITCHES {
            assert!(
                !contains(&bin, s),
                "{s} is in a build without fault-injection"
            );
        }
    }
}
