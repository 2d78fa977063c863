//! Boot ISOs read by an independent ISO 9660 / El Torito implementation:
//! xorriso (libisofs), installed by scripts/setup.sh. `-report_el_torito`
//! lists the boot catalog's entries; `-osirrox` extracts files to compare.

use std::path::Path;
use std::process::Command;

use deploy::image::iso::{self, BootIso, Isolinux};

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("-version").output().is_ok();
    if !ok {
        eprintln!("notice: {tool} is not installed (scripts/setup.sh installs it); skipping");
        assert!(
            std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none(),
            "{tool} is missing and PORTHOLE_REQUIRE_PEERS is set"
        );
    }
    ok
}

fn xorriso(args: &[&str]) -> String {
    let out = Command::new("xorriso").args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "xorriso {args:?}:\n{text}");
    text
}

fn extract(img: &Path, path: &str, dir: &Path) -> Vec<u8> {
    let to = dir.join(path.trim_start_matches('/').replace('/', "_"));
    xorriso(&[
        "-osirrox",
        "on",
        "-indev",
        img.to_str().unwrap(),
        "-extract",
        path,
        to.to_str().unwrap(),
    ]);
    std::fs::read(to).unwrap()
}

fn pattern(tag: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(13) ^ tag).collect()
}

#[test]
fn bios_and_uefi_entries_and_the_files_as_xorriso_reads_them() {
    if !have("xorriso") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (kernel, ramdisk) = (pattern(1, 300_000), pattern(2, 700_001));
    let (loader, ldlinux, efi) = (pattern(3, 24_576), pattern(4, 4096), pattern(5, 100_000));
    let bytes = iso::build(&BootIso {
        kernel: &kernel,
        ramdisk: &ramdisk,
        kernel_params: "root=UUID=1234 console=ttyS0",
        bios: Some(Isolinux {
            loader: &loader,
            ldlinux: Some(&ldlinux),
        }),
        uefi_loader: Some(&efi),
        volume: "PORTHOLE_BOOT",
    })
    .unwrap();
    let img = dir.path().join("boot.iso");
    std::fs::write(&img, &bytes).unwrap();

    let report = xorriso(&["-indev", img.to_str().unwrap(), "-report_el_torito", "plain"]);
    let entries: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .collect();
    assert_eq!(entries.len(), 2, "{report}");
    assert!(entries[0].contains("BIOS") && entries[0].contains(" y "), "{report}");
    assert!(entries[1].contains("UEFI") && entries[1].contains(" y "), "{report}");
    let paths: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("El Torito img path :"))
        .map(str::trim)
        .collect();
    assert_eq!(
        paths.iter().map(|p| p.split_whitespace().nth(1).unwrap()).collect::<Vec<_>>(),
        ["/isolinux/isolinux.bin", "/efiboot.img"],
        "{report}"
    );
    assert!(report.contains("El Torito img opts :   1  boot-info-table"), "{report}");
    assert!(report.contains("Volume id    : 'PORTHOLE_BOOT'"), "{report}");

    assert_eq!(extract(&img, "/vmlinuz", dir.path()), kernel);
    assert_eq!(extract(&img, "/initrd", dir.path()), ramdisk);
    assert_eq!(extract(&img, "/isolinux/ldlinux.c32", dir.path()), ldlinux);
    assert_eq!(
        String::from_utf8(extract(&img, "/isolinux/isolinux.cfg", dir.path())).unwrap(),
        iso::isolinux_cfg("root=UUID=1234 console=ttyS0")
    );
    // The loader as xorriso reads it: the boot info table (bytes 8..64)
    // patched in, the rest as given.
    let got = extract(&img, "/isolinux/isolinux.bin", dir.path());
    assert_eq!(got.len(), loader.len());
    assert_eq!(got[..8], loader[..8]);
    assert_eq!(got[64..], loader[64..]);

    // The ESP: a FAT image whose loader and grub.cfg mtools reads.
    let esp = extract(&img, "/efiboot.img", dir.path());
    let esp_path = dir.path().join("esp.img");
    std::fs::write(&esp_path, esp).unwrap();
    let out = Command::new("mtype")
        .args(["-i", esp_path.to_str().unwrap(), "::EFI/BOOT/grub.cfg"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        iso::grub_cfg("root=UUID=1234 console=ttyS0")
    );
    let out = Command::new("mcopy")
        .args(["-n", "-i", esp_path.to_str().unwrap(), "::EFI/BOOT/BOOTX64.EFI", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, efi);
}

#[test]
fn bios_only_has_one_entry() {
    if !have("xorriso") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bytes = iso::build(&BootIso {
        kernel: b"kernel",
        ramdisk: b"ramdisk",
        kernel_params: "",
        bios: Some(Isolinux {
            loader: &pattern(9, 2048),
            ldlinux: None,
        }),
        uefi_loader: None,
        volume: "B",
    })
    .unwrap();
    let img = dir.path().join("b.iso");
    std::fs::write(&img, &bytes).unwrap();
    let report = xorriso(&["-indev", img.to_str().unwrap(), "-report_el_torito", "plain"]);
    let n = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .count();
    assert_eq!(n, 1, "{report}");
    assert!(!report.contains("UEFI"), "{report}");
}
