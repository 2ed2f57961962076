//! Compiles `proto/` into the Rust types and the tonic service and client
//! of the externalgrpc provider. protox parses the .proto files, so no
//! `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/externalgrpc.proto",
        "proto/k8s/node.proto",
        "proto/k8s/meta.proto",
        "proto/k8s/resource.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
