//! The virtual floppy, as Ironic's `images.create_vfat_image` makes it: a
//! small FAT12 volume labelled `ir-vfd-dev` holding `parameters.txt`
//! (`key=value` lines joined by `\n`) and, for the callback, a `token` file
//! with the per-deploy secret. The label is the boot sector's, which
//! blkid (the ramdisk's `/dev/disk/by-label`), mtools and fatlabel read.
//! Built in memory with `fatfs`: no loop mount,
//! no `mkfs`, no root, and no file on disk holds the token.
//!
//! Callers: [`crate::deploy`] (the floppy of each deploy), tests.

use std::io::{Cursor, Write};

use fatfs::{FatType, FileSystem, FormatVolumeOptions, FsOptions};

use crate::secret::DeployKey;

/// The label the deploy ramdisk looks for (`/dev/disk/by-label/ir-vfd-dev`).
pub const LABEL: &str = "ir-vfd-dev";

/// Ironic's default size (`fs_size_kib=100`).
pub const DEFAULT_SIZE_KIB: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum VfatError {
    #[error("building the floppy: {0}")]
    Io(#[from] std::io::Error),
    #[error("floppy parameter {key:?}: {reason}")]
    Parameter { key: String, reason: &'static str },
}

/// What goes on the floppy.
#[derive(Debug)]
pub struct Floppy<'a> {
    /// `parameters.txt`, in this order.
    pub parameters: &'a [(String, String)],
    /// The `token` file; `None`: no token file (Ironic's noauth case).
    pub token: Option<&'a DeployKey>,
    pub size_kib: usize,
}

/// The image's bytes.
pub fn build(floppy: &Floppy<'_>) -> Result<Vec<u8>, VfatError> {
    let text = parameters_text(floppy.parameters)?;
    let mut disk = Cursor::new(vec![0u8; floppy.size_kib * 1024]);
    let mut label = [b' '; 11];
    label[..LABEL.len()].copy_from_slice(LABEL.as_bytes());
    fatfs::format_volume(
        &mut disk,
        FormatVolumeOptions::new()
            .volume_label(label)
            .volume_id(volume_id())
            .fat_type(FatType::Fat12),
    )?;
    {
        let fs = FileSystem::new(&mut disk, FsOptions::new())?;
        {
            let root = fs.root_dir();
            root.create_file("parameters.txt")?
                .write_all(text.as_bytes())?;
            if let Some(token) = floppy.token {
                root.create_file("token")?
                    .write_all(token.expose().as_bytes())?;
            }
        }
        fs.unmount()?;
    }
    Ok(disk.into_inner())
}

/// A random serial number, as mkfs.fat derives one from the clock.
fn volume_id() -> u32 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 4];
    // A fixed serial is harmless; the RNG does not fail on Linux anyway.
    let _ = SystemRandom::new().fill(&mut b);
    u32::from_le_bytes(b)
}

/// `key=value` lines joined by `\n`, as Ironic writes them. A key with `=`
/// or a line break, or a value with a line break, would change what the
/// ramdisk reads: refused.
pub fn parameters_text(parameters: &[(String, String)]) -> Result<String, VfatError> {
    let mut lines = Vec::with_capacity(parameters.len());
    for (k, v) in parameters {
        let bad = |reason| VfatError::Parameter {
            key: k.clone(),
            reason,
        };
        if k.is_empty() || k.contains(['=', '\n', '\r']) {
            return Err(bad("a key must be non-empty, without '=' or line breaks"));
        }
        if v.contains(['\n', '\r']) {
            return Err(bad("a value must not contain line breaks"));
        }
        lines.push(format!("{k}={v}"));
    }
    Ok(lines.join("\n"))
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn params() -> Vec<(String, String)> {
        vec![
            ("ironic_api_url".into(), "http://127.0.0.1:6385".into()),
            (
                "deployment_id".into(),
                "1be26c0b-03f2-4d2e-ae87-c02d7f33c123".into(),
            ),
        ]
    }

    #[test]
    fn fatfs_reads_back_the_label_parameters_and_token() {
        let key = DeployKey::generate();
        let img = build(&Floppy {
            parameters: &params(),
            token: Some(&key),
            size_kib: DEFAULT_SIZE_KIB,
        })
        .unwrap();
        assert_eq!(img.len(), 100 * 1024);
        let fs = FileSystem::new(Cursor::new(img), FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), FatType::Fat12);
        assert_eq!(fs.volume_label(), LABEL);
        let mut text = String::new();
        fs.root_dir()
            .open_file("parameters.txt")
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(
            text,
            "ironic_api_url=http://127.0.0.1:6385\ndeployment_id=1be26c0b-03f2-4d2e-ae87-c02d7f33c123"
        );
        let mut token = String::new();
        fs.root_dir()
            .open_file("token")
            .unwrap()
            .read_to_string(&mut token)
            .unwrap();
        assert_eq!(token, key.expose());
    }

    #[test]
    fn no_token_no_token_file() {
        let img = build(&Floppy {
            parameters: &params(),
            token: None,
            size_kib: DEFAULT_SIZE_KIB,
        })
        .unwrap();
        let fs = FileSystem::new(Cursor::new(img), FsOptions::new()).unwrap();
        assert!(fs.root_dir().open_file("token").is_err());
    }

    #[test]
    fn a_line_break_or_equals_sign_that_would_change_the_lines_is_refused() {
        for (k, v) in [("a=b", "1"), ("a\nb", "1"), ("", "1"), ("a", "1\nb=2")] {
            let err = parameters_text(&[(k.into(), v.into())]).unwrap_err();
            assert!(err.to_string().contains("floppy parameter"), "{err}");
        }
        assert_eq!(
            parameters_text(&[("a".into(), "x=y".into())]).unwrap(),
            "a=x=y"
        );
    }
}
