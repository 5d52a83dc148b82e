//! Between the generated etcd protobuf types and the MVCC state machine's own types.
//! The state machine's types follow `rpc.proto` field by field, so this is one to one.

use super::pb::etcdserverpb as pb;
use super::pb::mvccpb;
use synod_protocols::mvcc as m;

pub(crate) fn kv_to_pb(kv: m::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub(crate) fn event_to_pb(e: m::Event, with_prev: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match e.kind {
            m::EventKind::Put => mvccpb::event::EventType::Put as i32,
            m::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(e.kv)),
        prev_kv: if with_prev {
            e.prev_kv.map(kv_to_pb)
        } else {
            None
        },
    }
}

pub(crate) fn range_from_pb(r: pb::RangeRequest) -> m::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    m::RangeRequest {
        key: r.key,
        range_end: r.range_end,
        limit: r.limit,
        revision: r.revision,
        sort_order: match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::None => m::SortOrder::None,
            SortOrder::Ascend => m::SortOrder::Ascend,
            SortOrder::Descend => m::SortOrder::Descend,
        },
        sort_target: match SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Key => m::SortTarget::Key,
            SortTarget::Version => m::SortTarget::Version,
            SortTarget::Create => m::SortTarget::Create,
            SortTarget::Mod => m::SortTarget::Mod,
            SortTarget::Value => m::SortTarget::Value,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub(crate) fn put_from_pb(p: pb::PutRequest) -> m::PutRequest {
    m::PutRequest {
        key: p.key,
        value: p.value,
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    }
}

pub(crate) fn delete_from_pb(d: pb::DeleteRangeRequest) -> m::DeleteRangeRequest {
    m::DeleteRangeRequest {
        key: d.key,
        range_end: d.range_end,
        prev_kv: d.prev_kv,
    }
}

fn compare_from_pb(c: pb::Compare) -> Result<m::Compare, String> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let result = match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => m::CompareResult::Equal,
        Ok(CompareResult::Greater) => m::CompareResult::Greater,
        Ok(CompareResult::Less) => m::CompareResult::Less,
        Ok(CompareResult::NotEqual) => m::CompareResult::NotEqual,
        Err(_) => return Err(format!("unknown compare result {}", c.result)),
    };
    // The target names which field of the union is compared; a missing field is zero.
    let union = c.target_union;
    let int = |want: fn(&TargetUnion) -> Option<i64>| union.as_ref().and_then(want).unwrap_or(0);
    let target = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Version) => m::CompareTarget::Version(int(|u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => m::CompareTarget::Create(int(|u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => m::CompareTarget::Mod(int(|u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => m::CompareTarget::Lease(int(|u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Value) => m::CompareTarget::Value(match &union {
            Some(TargetUnion::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
        Err(_) => return Err(format!("unknown compare target {}", c.target)),
    };
    Ok(m::Compare {
        result,
        target,
        key: c.key,
        range_end: c.range_end,
    })
}

fn op_from_pb(op: pb::RequestOp) -> Result<m::RequestOp, String> {
    use pb::request_op::Request;
    Ok(match op.request {
        Some(Request::RequestRange(r)) => m::RequestOp::Range(range_from_pb(r)),
        Some(Request::RequestPut(p)) => m::RequestOp::Put(put_from_pb(p)),
        Some(Request::RequestDeleteRange(d)) => m::RequestOp::DeleteRange(delete_from_pb(d)),
        Some(Request::RequestTxn(t)) => m::RequestOp::Txn(txn_from_pb(t)?),
        None => return Err("a txn operation has no request".into()),
    })
}

pub(crate) fn txn_from_pb(t: pb::TxnRequest) -> Result<m::TxnRequest, String> {
    Ok(m::TxnRequest {
        compare: t
            .compare
            .into_iter()
            .map(compare_from_pb)
            .collect::<Result<_, _>>()?,
        success: t
            .success
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
        failure: t
            .failure
            .into_iter()
            .map(op_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

/// A response header: the revision is the response's own, the rest is the node's.
pub(crate) type Header = Box<dyn Fn(i64) -> Option<pb::ResponseHeader> + Send + Sync>;

pub(crate) fn range_to_pb(r: m::RangeResponse, header: &Header) -> pb::RangeResponse {
    pb::RangeResponse {
        header: header(r.revision),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub(crate) fn put_to_pb(r: m::PutResponse, header: &Header) -> pb::PutResponse {
    pb::PutResponse {
        header: header(r.revision),
        prev_kv: r.prev_kv.map(kv_to_pb),
    }
}

pub(crate) fn delete_to_pb(r: m::DeleteRangeResponse, header: &Header) -> pb::DeleteRangeResponse {
    pb::DeleteRangeResponse {
        header: header(r.revision),
        deleted: r.deleted,
        prev_kvs: r.prev_kvs.into_iter().map(kv_to_pb).collect(),
    }
}

pub(crate) fn txn_to_pb(r: m::TxnResponse, header: &Header) -> pb::TxnResponse {
    use pb::response_op::Response;
    pb::TxnResponse {
        header: header(r.revision),
        succeeded: r.succeeded,
        responses: r
            .responses
            .into_iter()
            .map(|op| pb::ResponseOp {
                response: Some(match op {
                    m::ResponseOp::Range(x) => Response::ResponseRange(range_to_pb(x, header)),
                    m::ResponseOp::Put(x) => Response::ResponsePut(put_to_pb(x, header)),
                    m::ResponseOp::DeleteRange(x) => {
                        Response::ResponseDeleteRange(delete_to_pb(x, header))
                    }
                    m::ResponseOp::Txn(x) => Response::ResponseTxn(txn_to_pb(x, header)),
                }),
            })
            .collect(),
    }
}
