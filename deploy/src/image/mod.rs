//! Deploy media built in-process: the virtual floppy ([`vfat`]).
//!
//! Callers: [`crate::deploy`].

pub mod vfat;
