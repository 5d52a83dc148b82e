//! Compile the etcd-compatible protos with protox (a protobuf compiler in Rust), so that
//! building synod needs no protoc on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/kv.proto",
        "proto/rpc.proto",
        "proto/v3lock.proto",
        "proto/v3election.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
