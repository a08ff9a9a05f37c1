//! Generates the protobuf types from `proto/` with protox, a protobuf compiler written in Rust,
//! so a fresh machine needs no hand-installed `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["tiendo/v1/events.proto", "tiendo/v1/alerts.proto"],
        ["proto"],
    )?;
    // The descriptors themselves, for reading the proto3 JSON mapping (src/wire.rs).
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptors.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
