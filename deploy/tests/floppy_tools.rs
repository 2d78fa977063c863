//! The floppy read by independent FAT implementations: mtools (`mdir`,
//! `mtype`, `mlabel -s`) and dosfstools' `fsck.vfat -n`, installed by
//! scripts/setup.sh. The image file lives in a temp dir only for the tools
//! to read and is gone when the test ends.

use std::path::Path;
use std::process::Command;

use deploy::image::vfat::{self, Floppy};
use deploy::secret::DeployKey;

/// Whether `tool` runs; without it the test is skipped with a notice, or
/// fails where PORTHOLE_REQUIRE_PEERS says every tool is installed.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        eprintln!("notice: {tool} is not installed (scripts/setup.sh installs it); skipping");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "{tool} is missing and PORTHOLE_REQUIRE_PEERS is set"
        );
    }
    ok
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn image(dir: &Path, key: &DeployKey) -> String {
    let params = vec![
        (
            "ironic_api_url".to_owned(),
            "http://192.0.2.1:6385".to_owned(),
        ),
        (
            "deployment_id".to_owned(),
            "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".to_owned(),
        ),
        (
            "iscsi_target_iqn".to_owned(),
            "iqn-1be26c0b-03f2-4d2e-ae87-c02d7f33c123".to_owned(),
        ),
    ];
    let bytes = vfat::build(&Floppy {
        parameters: &params,
        token: Some(key),
        size_kib: vfat::DEFAULT_SIZE_KIB,
    })
    .unwrap();
    let path = dir.join("floppy.img");
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn mtools_list_and_read_both_files_and_the_label() {
    if !have("mdir") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = DeployKey::generate();
    let img = image(dir.path(), &key);
    // MTOOLS_SKIP_CHECK: the image has no partition table or geometry file.
    let (ok, listing) = run("mdir", &["-i", &img, "::"]);
    assert!(ok, "{listing}");
    assert!(
        listing.contains("Volume in drive : is ir-vfd-dev"),
        "{listing}"
    );
    // Long names (VFAT) beside the 8.3 ones.
    assert!(listing.contains("  parameters.txt\n"), "{listing}");
    assert!(listing.contains("  token\n"), "{listing}");
    let (ok, text) = run("mtype", &["-i", &img, "::parameters.txt"]);
    assert!(ok, "{text}");
    assert_eq!(
        text,
        "ironic_api_url=http://192.0.2.1:6385\ndeployment_id=1be26c0b-03f2-4d2e-ae87-c02d7f33c123\niscsi_target_iqn=iqn-1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
    );
    let (ok, token) = run("mtype", &["-i", &img, "::token"]);
    assert!(ok, "{token}");
    assert_eq!(token, key.expose());
    let (ok, label) = run("mlabel", &["-s", "-i", &img, "::"]);
    assert!(ok, "{label}");
    assert!(label.contains("ir-vfd-dev"), "{label}");
}

#[test]
fn fsck_vfat_finds_nothing_to_repair() {
    if !have("fsck.vfat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), &DeployKey::generate());
    let (ok, report) = run("fsck.vfat", &["-n", "-v", &img]);
    assert!(ok, "fsck.vfat -n failed:\n{report}");
    assert!(
        !report.contains("Free cluster summary wrong")
            && !report.contains("Leaving filesystem unchanged"),
        "{report}"
    );
    // dosfstools' own reader of the label.
    let (ok, label) = run("fatlabel", &[&img]);
    assert!(ok, "{label}");
    assert_eq!(label, "ir-vfd-dev\n");
    assert!(report.contains("2 FATs, 12 bit entries"), "{report}");
    assert!(report.contains(" files, 2/165 clusters"), "{report}");
}

/// blkid (util-linux) is what udev's `/dev/disk/by-label/ir-vfd-dev` comes
/// from, where the deploy ramdisk looks for the floppy.
#[test]
fn blkid_sees_a_vfat_volume_labelled_ir_vfd_dev() {
    if !have("blkid") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), &DeployKey::generate());
    let (ok, probe) = run("blkid", &["-p", "-o", "export", &img]);
    assert!(ok, "{probe}");
    for want in ["LABEL=ir-vfd-dev\n", "TYPE=vfat\n", "VERSION=FAT12\n"] {
        assert!(probe.contains(want), "{want:?} not in {probe}");
    }
}
