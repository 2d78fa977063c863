//! Deploy media built in-process: the virtual floppy ([`vfat`]) and
//! bootable ISO images ([`iso`]).
//!
//! Callers: [`crate::deploy`].

pub mod iso;
pub mod vfat;
