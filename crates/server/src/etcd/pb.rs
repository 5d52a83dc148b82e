//! The generated etcd v3 protobuf types and service traits.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

/// mvccpb: KeyValue and Event.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
/// etcdserverpb: KV, Watch, Lease, Cluster, Maintenance.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// v3lockpb: Lock.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
/// v3electionpb: Election.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
