//! Bootable ISO images from a kernel and a ramdisk, as Ironic's
//! `create_boot_iso` lays them out: `/vmlinuz`, `/initrd`, and for BIOS
//! `/isolinux/isolinux.bin` (+ `ldlinux.c32`) with an `isolinux.cfg` that
//! boots the kernel with the given parameters; for UEFI an El Torito EFI
//! entry pointing at `/efiboot.img`, a FAT ESP built here (fatfs) holding
//! the given loader as `EFI/BOOT/BOOTX64.EFI` and a `grub.cfg`. Written in
//! memory with hadris-iso (Rock Ridge and Joliet names): no loop mount, no
//! `mkisofs`, no root. The boot loaders are inputs (syslinux's and GRUB's
//! binaries from the operator's files), never built here.
//!
//! Callers: the deploy's boot ISO step (issue 14) and tests.

use std::io::{Cursor, Write};
use std::num::NonZeroU16;
use std::sync::Arc;

use fatfs::{FileSystem, FormatVolumeOptions, FsOptions};
use hadris_iso::boot::options::{BootEntryOptions, BootOptions, BootSectionOptions};
use hadris_iso::boot::{EmulationType, PlatformId};
use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File, InputFiles, IsoImageWriter};

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("boot ISO: {0}")]
    Invalid(&'static str),
    #[error("boot ISO: writing the image: {0}")]
    Write(String),
    #[error("boot ISO: the EFI system partition: {0}")]
    Esp(#[from] std::io::Error),
}

/// syslinux's BIOS loader for CDs.
#[derive(Clone, Copy, Debug)]
pub struct Isolinux<'a> {
    /// `isolinux.bin`.
    pub loader: &'a [u8],
    /// `ldlinux.c32` (syslinux 5+ loads it next to isolinux.bin).
    pub ldlinux: Option<&'a [u8]>,
}

/// What goes into a boot ISO.
#[derive(Clone, Copy, Debug)]
pub struct BootIso<'a> {
    pub kernel: &'a [u8],
    pub ramdisk: &'a [u8],
    /// Appended to the kernel command line (e.g. `root=UUID=...`).
    pub kernel_params: &'a str,
    /// BIOS boot entry; `None`: none.
    pub bios: Option<Isolinux<'a>>,
    /// UEFI boot entry: the EFI loader (`BOOTX64.EFI`); `None`: none.
    pub uefi_loader: Option<&'a [u8]>,
    /// ISO volume name (ISO 9660 d-characters).
    pub volume: &'a str,
}

/// `isolinux.cfg`, as Ironic's template writes it.
pub fn isolinux_cfg(kernel_params: &str) -> String {
    format!(
        "default boot\n\nlabel boot\nkernel /vmlinuz\nappend initrd=/initrd text {kernel_params} --\n"
    )
}

/// `grub.cfg` on the ESP, as Ironic's template writes it.
pub fn grub_cfg(kernel_params: &str) -> String {
    format!(
        "set default=0\nset timeout=5\nset hidden_timeout_quiet=false\n\nmenuentry \"boot_partition\" {{\nlinux /vmlinuz {kernel_params} --\ninitrd /initrd\n}}\n"
    )
}

/// The image's bytes.
pub fn build(iso: &BootIso<'_>) -> Result<Vec<u8>, IsoError> {
    if iso.bios.is_none() && iso.uefi_loader.is_none() {
        return Err(IsoError::Invalid(
            "needs a BIOS loader, a UEFI loader or both",
        ));
    }
    if iso.kernel_params.contains(['\n', '\r']) {
        return Err(IsoError::Invalid("kernel parameters must be one line"));
    }
    let file = |name: &str, contents: &[u8]| File::File {
        name: Arc::new(name.to_owned()),
        contents: contents.to_vec(),
    };
    let mut files = vec![file("vmlinuz", iso.kernel), file("initrd", iso.ramdisk)];
    let mut entries: Vec<(Option<PlatformId>, BootEntryOptions)> = Vec::new();
    if let Some(bios) = iso.bios {
        let mut dir = vec![
            file("isolinux.bin", bios.loader),
            file("isolinux.cfg", isolinux_cfg(iso.kernel_params).as_bytes()),
        ];
        if let Some(ld) = bios.ldlinux {
            dir.push(file("ldlinux.c32", ld));
        }
        files.push(File::Directory {
            name: Arc::new("isolinux".into()),
            children: dir,
        });
        entries.push((
            None,
            BootEntryOptions {
                boot_image_path: "isolinux/isolinux.bin".into(),
                // isolinux: 4 sectors loaded, the boot info table patched in.
                load_size: NonZeroU16::new(4),
                boot_info_table: true,
                grub2_boot_info: false,
                emulation: EmulationType::NoEmulation,
            },
        ));
    }
    if let Some(loader) = iso.uefi_loader {
        let esp = esp_image(loader, &grub_cfg(iso.kernel_params))?;
        let sectors = u16::try_from(esp.len() / 512).unwrap_or(u16::MAX);
        files.push(file("efiboot.img", &esp));
        entries.push((
            Some(PlatformId::UEFI),
            BootEntryOptions {
                boot_image_path: "efiboot.img".into(),
                load_size: NonZeroU16::new(sectors),
                boot_info_table: false,
                grub2_boot_info: false,
                emulation: EmulationType::NoEmulation,
            },
        ));
    }
    let mut entries = entries.into_iter();
    let (_, default) = entries.next().expect("one entry at least");
    let boot = BootOptions {
        write_boot_catalog: true,
        default,
        entries: entries
            .map(|(p, e)| {
                (
                    BootSectionOptions {
                        platform: p.unwrap_or(PlatformId::X80X86),
                    },
                    e,
                )
            })
            .collect(),
    };
    let options = IsoFormatOptions {
        volume_name: iso.volume.to_owned(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: Some("PORTHOLE DEPLOY".into()),
        application_id: None,
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures {
            el_torito: Some(boot),
            ..CreationFeatures::extensions()
        },
        strict_charset: false,
    };
    let mut out = Cursor::new(Vec::new());
    IsoImageWriter::create(
        &mut out,
        InputFiles {
            path_separator: PathSeparator::ForwardSlash,
            files,
        },
        options,
    )
    .map_err(|e| IsoError::Write(e.to_string()))?;
    Ok(out.into_inner())
}

/// A FAT EFI system partition image with `EFI/BOOT/BOOTX64.EFI` and
/// `EFI/BOOT/grub.cfg`, sized to fit with 1 MiB to spare.
fn esp_image(loader: &[u8], grub_cfg: &str) -> Result<Vec<u8>, std::io::Error> {
    let size = (loader.len() + grub_cfg.len()).div_ceil(1 << 20) * (1 << 20) + (1 << 20);
    let mut disk = Cursor::new(vec![0u8; size]);
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new().volume_label(*b"EFIBOOT    "),
    )?;
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new())?;
        {
            let boot = fs.root_dir().create_dir("EFI")?.create_dir("BOOT")?;
            boot.create_file("BOOTX64.EFI")?.write_all(loader)?;
            boot.create_file("grub.cfg")?
                .write_all(grub_cfg.as_bytes())?;
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_any_loader_is_refused() {
        let err = build(&BootIso {
            kernel: b"k",
            ramdisk: b"r",
            kernel_params: "",
            bios: None,
            uefi_loader: None,
            volume: "X",
        })
        .unwrap_err();
        assert!(err.to_string().contains("needs a BIOS loader"), "{err}");
    }

    #[test]
    fn a_line_break_in_the_parameters_is_refused() {
        let err = build(&BootIso {
            kernel: b"k",
            ramdisk: b"r",
            kernel_params: "a\nkernel /evil",
            bios: Some(Isolinux {
                loader: &[0; 2048],
                ldlinux: None,
            }),
            uefi_loader: None,
            volume: "X",
        })
        .unwrap_err();
        assert!(err.to_string().contains("one line"), "{err}");
    }

    #[test]
    fn the_config_boots_the_kernel_with_the_parameters() {
        assert_eq!(
            isolinux_cfg("root=UUID=1 console=ttyS0"),
            "default boot\n\nlabel boot\nkernel /vmlinuz\nappend initrd=/initrd text root=UUID=1 console=ttyS0 --\n"
        );
        assert!(grub_cfg("root=x").contains("linux /vmlinuz root=x --\ninitrd /initrd\n"));
    }
}
