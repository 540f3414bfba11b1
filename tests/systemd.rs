//! The shipped systemd unit parses cleanly: `systemd-analyze verify` exits 0 and warns about
//! nothing (it only warns on unknown keys). Skipped where systemd-analyze is absent.
#![allow(clippy::unwrap_used)]

#[test]
fn systemd_unit_verifies_without_warnings() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/scopegate.service"
    ))
    .unwrap();
    for needed in [
        "LoadCredential=",
        "SCOPEGATE_PASSPHRASE_FILE=%d/",
        "StateDirectory=scopegate",
        "NoNewPrivileges=yes",
        "LimitCORE=0",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    assert!(probe.status.success());
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("scopegate.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/scopegate", env!("CARGO_BIN_EXE_scopegate")),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
