//! Porthole's gRPC contracts, generated from `proto/**/*.proto` at build time.
//!
//! Services depend on this crate for both the server traits and the clients;
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC server reflection.

pub mod console {
    pub mod v1 {
        tonic::include_proto!("porthole.console.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract in this crate.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/porthole_descriptor.bin"));
