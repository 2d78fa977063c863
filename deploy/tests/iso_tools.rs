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

    let report = xorriso(&[
        "-indev",
        img.to_str().unwrap(),
        "-report_el_torito",
        "plain",
    ]);
    let entries: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .collect();
    assert_eq!(entries.len(), 2, "{report}");
    assert!(
        entries[0].contains("BIOS") && entries[0].contains(" y "),
        "{report}"
    );
    assert!(
        entries[1].contains("UEFI") && entries[1].contains(" y "),
        "{report}"
    );
    let paths: Vec<&str> = report
        .lines()
        .filter_map(|l| l.strip_prefix("El Torito img path :"))
        .map(str::trim)
        .collect();
    assert_eq!(
        paths
            .iter()
            .map(|p| p.split_whitespace().nth(1).unwrap())
            .collect::<Vec<_>>(),
        ["/isolinux/isolinux.bin", "/efiboot.img"],
        "{report}"
    );
    assert!(
        report.contains("El Torito img opts :   1  boot-info-table"),
        "{report}"
    );
    assert!(
        report.contains("Volume id    : 'PORTHOLE_BOOT'"),
        "{report}"
    );

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
        .args([
            "-n",
            "-i",
            esp_path.to_str().unwrap(),
            "::EFI/BOOT/BOOTX64.EFI",
            "-",
        ])
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
    let report = xorriso(&[
        "-indev",
        img.to_str().unwrap(),
        "-report_el_torito",
        "plain",
    ]);
    let n = report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img :"))
        .count();
    assert_eq!(n, 1, "{report}");
    assert!(!report.contains("UEFI"), "{report}");
}
/// A real BIOS boot: QEMU's SeaBIOS boots the ISO from CD, Debian's
/// ISOLINUX reads our isolinux.cfg and loads /vmlinuz and /initrd from it
/// (the "kernel" here is not one, so it stops there). SeaBIOS' serial
/// console (`etc/sercon-port`) puts the screen text on the serial port.
#[test]
fn seabios_boots_it_and_isolinux_loads_our_kernel_and_ramdisk() {
    const ISOLINUX: &str = "/usr/lib/ISOLINUX/isolinux.bin";
    const LDLINUX: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
    if !have("qemu-system-x86_64") {
        return;
    }
    let (Ok(loader), Ok(ldlinux)) = (std::fs::read(ISOLINUX), std::fs::read(LDLINUX)) else {
        eprintln!("notice: {ISOLINUX} or {LDLINUX} missing (isolinux, syslinux-common); skipping");
        assert!(std::env::var_os("PORTHOLE_REQUIRE_PEERS").is_none());
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bytes = iso::build(&BootIso {
        kernel: b"not a kernel",
        ramdisk: b"not a ramdisk",
        kernel_params: "console=ttyS0",
        bios: Some(Isolinux {
            loader: &loader,
            ldlinux: Some(&ldlinux),
        }),
        uefi_loader: None,
        volume: "PORTHOLE_BOOT",
    })
    .unwrap();
    let img = dir.path().join("boot.iso");
    std::fs::write(&img, bytes).unwrap();
    let port = dir.path().join("sercon-port");
    std::fs::write(&port, 0x3f8u16.to_le_bytes()).unwrap();
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "accel=tcg",
            "-m",
            "128",
            "-nodefaults",
            "-vga",
            "none",
        ])
        .args([
            "-display",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-boot",
            "d",
        ])
        .arg("-cdrom")
        .arg(&img)
        .arg("-fw_cfg")
        .arg(format!("name=etc/sercon-port,file={}", port.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = qemu.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if tx
                .send(String::from_utf8_lossy(&seen).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    let mut screen = String::new();
    // Until the ramdisk is loaded, or ISOLINUX gave up (its "boot:" prompt).
    while !screen.contains("Loading /initrd...ok") && !screen.contains("boot: ") {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) => screen = s,
            Err(_) => break,
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    // SeaBIOS and ISOLINUX redraw with terminal escapes, which can land in
    // the middle of a line ("/vmlinu\x1b[05;15H\x1b[05;16Hz"): compare the
    // text without them.
    let screen = without_escapes(&screen);
    for want in [
        "Booting from DVD/CD",
        "ISOLINUX",
        "Loading /vmlinuz... ok",
        "Loading /initrd...ok",
    ] {
        assert!(
            screen.contains(want),
            "{want:?} not on the serial console:\n{screen}"
        );
    }
}

/// `s` without ANSI escape sequences (CSI `ESC [ params final` and
/// two-byte `ESC x`), as a terminal would not print them.
fn without_escapes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // `ESC [`: parameters and intermediates up to the final byte
        // (@..~); any other `ESC x` is two bytes, both dropped.
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[test]
fn escapes_are_dropped_from_the_screen() {
    let raw = "Loading /vmlinu\x1b[05;15H\x1b[05;16Hz... ok\x1bc\x1b[?7l";
    assert_eq!(without_escapes(raw), "Loading /vmlinuz... ok");
}
