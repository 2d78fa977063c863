//! Partition images (nova's `root_gb`, `swap_mb`, `ephemeral_gb`,
//! `ephemeral_format`): the disk layout Ironic's `make_partitions` makes
//! on an MBR disk (ephemeral first, so a rebuild can keep it, then swap,
//! the root partition last; 1 MiB aligned; the root partition bootable),
//! its partition table, a swap signature and the ephemeral file system —
//! all made here in user space as bytes or files (`mkfs.*` on a sparse
//! file), then written to their offsets of the target by [`super::qemu`].
//!
//! Callers: [`super::steps`] (ContinueDeploy with `image_type: partition`).

use std::path::Path;

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// What an MBR's 32-bit sector fields reach.
pub const MBR_LIMIT: u64 = (u32::MAX as u64) * SECTOR;

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("a partition image needs root_gb")]
    NoRoot,
    #[error("ephemeral_format {0:?} is not supported (ext2, ext3, ext4, vfat)")]
    Format(String),
    #[error("the partitions need {0} bytes; an MBR disk ends at 2 TiB")]
    TooBig(u64),
    #[error("making the ephemeral file system: {0}")]
    Mkfs(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ephemeral,
    Swap,
    Root,
}

/// One partition: byte offset and length on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    pub kind: Kind,
    pub start: u64,
    pub size: u64,
}

/// The partitions in disk order (1-based numbers follow it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub parts: Vec<Part>,
}

impl Layout {
    /// Ironic's order: ephemeral, swap, root, from 1 MiB.
    pub fn new(root_gb: u64, swap_mb: u64, ephemeral_gb: u64) -> Result<Layout, PartitionError> {
        if root_gb == 0 {
            return Err(PartitionError::NoRoot);
        }
        let mut parts = Vec::new();
        let mut at = MIB;
        for (kind, size) in [
            (Kind::Ephemeral, ephemeral_gb.saturating_mul(1 << 30)),
            (Kind::Swap, swap_mb.saturating_mul(MIB)),
            (Kind::Root, root_gb.saturating_mul(1 << 30)),
        ] {
            if size > 0 {
                parts.push(Part {
                    kind,
                    start: at,
                    size,
                });
                at = at.saturating_add(size);
            }
        }
        if at > MBR_LIMIT {
            return Err(PartitionError::TooBig(at));
        }
        Ok(Layout { parts })
    }

    /// Bytes the disk needs.
    pub fn end(&self) -> u64 {
        self.parts.last().map_or(MIB, |p| p.start + p.size)
    }

    pub fn get(&self, kind: Kind) -> Option<(usize, Part)> {
        self.parts
            .iter()
            .enumerate()
            .find(|(_, p)| p.kind == kind)
            .map(|(i, p)| (i + 1, *p))
    }

    /// The MBR sector: the entries, `disk_id` as the disk signature.
    pub fn mbr(&self, disk_id: u32) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[440..444].copy_from_slice(&disk_id.to_le_bytes());
        for (i, p) in self.parts.iter().enumerate() {
            let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
            e[0] = if p.kind == Kind::Root { 0x80 } else { 0 };
            // CHS fields unused (LBA only), as parted writes past 8 GiB.
            e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
            e[4] = if p.kind == Kind::Swap { 0x82 } else { 0x83 };
            e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
            let lba = (p.start / SECTOR) as u32;
            let sectors = (p.size / SECTOR) as u32;
            e[8..12].copy_from_slice(&lba.to_le_bytes());
            e[12..16].copy_from_slice(&sectors.to_le_bytes());
        }
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }
}

/// A swap area's first page (mkswap's v1 header, 4 KiB pages, no bad
/// pages), for a partition of `size` bytes.
pub fn swap_header(size: u64, uuid: [u8; 16]) -> Vec<u8> {
    const PAGE: u64 = 4096;
    let mut p = vec![0u8; PAGE as usize];
    p[1024..1028].copy_from_slice(&1u32.to_le_bytes()); // version
    let last_page = (size / PAGE).saturating_sub(1) as u32;
    p[1028..1032].copy_from_slice(&last_page.to_le_bytes());
    // nr_badpages = 0 at 1032; uuid at 1036; volume label at 1052.
    p[1036..1052].copy_from_slice(&uuid);
    p[4086..4096].copy_from_slice(b"SWAPSPACE2");
    p
}

/// `mkfs` of `format` on a new sparse file `path` of `size` bytes,
/// labelled `ephemeral0` as Ironic labels it.
pub async fn ephemeral_fs(path: &Path, size: u64, format: &str) -> Result<(), PartitionError> {
    let args: &[&str] = match format {
        "ext2" | "ext3" | "ext4" => &["-q", "-F", "-L", "ephemeral0"],
        "vfat" => &["-n", "EPHEMERAL0"],
        other => return Err(PartitionError::Format(other.to_owned())),
    };
    let tool = format!("mkfs.{format}");
    let f = std::fs::File::create(path).map_err(|e| PartitionError::Mkfs(e.to_string()))?;
    f.set_len(size)
        .map_err(|e| PartitionError::Mkfs(e.to_string()))?;
    drop(f);
    let out = tokio::process::Command::new(&tool)
        .args(args)
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .await
        .map_err(|e| PartitionError::Mkfs(format!("{tool}: {e}")))?;
    if !out.status.success() {
        let words = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(PartitionError::Mkfs(format!("{tool}: {words}")));
    }
    Ok(())
}

/// Whether `format` is one [`ephemeral_fs`] makes.
pub fn known_format(format: &str) -> bool {
    ["ext2", "ext3", "ext4", "vfat"].contains(&format)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ironics_order_ephemeral_swap_root_one_mib_aligned() {
        let l = Layout::new(2, 512, 1).unwrap();
        let g = 1u64 << 30;
        assert_eq!(
            l.parts,
            [
                Part {
                    kind: Kind::Ephemeral,
                    start: MIB,
                    size: g
                },
                Part {
                    kind: Kind::Swap,
                    start: MIB + g,
                    size: 512 * MIB
                },
                Part {
                    kind: Kind::Root,
                    start: MIB + g + 512 * MIB,
                    size: 2 * g
                },
            ]
        );
        assert_eq!(l.get(Kind::Root).unwrap().0, 3);
        let only_root = Layout::new(1, 0, 0).unwrap();
        assert_eq!(
            only_root.get(Kind::Root),
            Some((
                1,
                Part {
                    kind: Kind::Root,
                    start: MIB,
                    size: g
                }
            ))
        );
        assert!(matches!(Layout::new(0, 1, 1), Err(PartitionError::NoRoot)));
        assert!(matches!(
            Layout::new(3000, 0, 0),
            Err(PartitionError::TooBig(_))
        ));
    }

    #[test]
    fn the_mbr_entries_types_and_boot_flag() {
        let l = Layout::new(1, 64, 0).unwrap();
        let s = l.mbr(0x1234_5678);
        assert_eq!(&s[510..], &[0x55, 0xaa]);
        assert_eq!(&s[440..444], &0x1234_5678u32.to_le_bytes());
        // Swap first (no ephemeral), then root, bootable.
        assert_eq!((s[446], s[446 + 4]), (0, 0x82));
        assert_eq!(u32::from_le_bytes(s[454..458].try_into().unwrap()), 2048);
        assert_eq!((s[462], s[462 + 4]), (0x80, 0x83));
        assert_eq!(
            u32::from_le_bytes(s[470..474].try_into().unwrap()),
            2048 + 64 * 2048
        );
        assert!(s[478..510].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_swap_header_is_mkswaps_v1() {
        let h = swap_header(64 * MIB, [7; 16]);
        assert_eq!(&h[4086..], b"SWAPSPACE2");
        assert_eq!(u32::from_le_bytes(h[1028..1032].try_into().unwrap()), 16383);
    }
}
