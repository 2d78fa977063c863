//! Compiles the `.proto` contracts with `protox` (a protobuf compiler in pure
//! Rust), so a fresh machine needs no `protoc`. The encoded descriptor set is
//! kept in OUT_DIR for gRPC server reflection.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "console/v1/console.proto",
    "deploy/v1/deploy.proto",
    "inspect/v1/inspect.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;
    std::fs::write(
        out.join("porthole_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, but an undecodable request is INVALID_ARGUMENT.
        .codec_path("crate::codec::Codec")
        .compile_fds(fds)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
