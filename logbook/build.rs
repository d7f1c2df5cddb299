//! Compiles `proto/tally.proto` when the `rpc` feature is on. The parser is protox (pure
//! Rust), so no `protoc` needs to be installed.

fn main() {
    println!("cargo:rerun-if-changed=proto/tally.proto");
    println!("cargo:rerun-if-changed=proto/worker.proto");
    println!("cargo:rerun-if-changed=proto/log.proto");
    #[cfg(feature = "rpc")]
    {
        let descriptors = protox::compile(
            ["proto/tally.proto", "proto/worker.proto", "proto/log.proto"],
            ["proto"],
        )
        .expect("the protocol files must parse");
        tonic_prost_build::configure()
            .bytes(".")
            .compile_fds(descriptors)
            .expect("generate the gRPC code");
    }
}
