//! Generates the protobuf types from `proto/` with protox, a protobuf compiler written in Rust,
//! so a fresh machine needs no hand-installed `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(
        ["tiendo/v1/events.proto", "tiendo/v1/alerts.proto"],
        ["proto"],
    )?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
