//! The `hru.v1` wire contract: prost messages and tonic services generated from `proto/`,
//! plus the encoded file descriptor set for gRPC reflection and the proto3 JSON form.

#![allow(missing_docs, clippy::doc_lazy_continuation, clippy::large_enum_variant)]

/// Generated `hru.v1` package.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/hru.v1.rs"));
}

/// The encoded `FileDescriptorSet` of every `hru.v1` proto file.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/hru_descriptor.bin"));

/// The descriptor pool of the wire contract, for reflection and JSON.
pub fn descriptor_pool() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET)
            .unwrap_or_else(|e| panic!("the embedded descriptor set is built by build.rs and always decodes: {e}"))
    })
}

/// The gRPC metadata key naming the person acting for the calling party (the access log
/// records it).
pub const PERSON_HEADER: &str = "x-hru-person";

/// A request naming the person acting; `None` when `person` is not valid ASCII metadata.
pub fn request_as<T>(message: T, person: &str) -> Option<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(PERSON_HEADER, person.parse().ok()?);
    Some(r)
}
