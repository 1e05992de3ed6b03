//! Decoding what the node agent sends and encoding what ztunnel answers, with the record-level
//! rules of the protocol: size, payload present, exactly one descriptor with `add` and none
//! otherwise.

use prost::Message;
use xds_proto::istio::workload::zds::{
    Ack, AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo,
    WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};

/// Largest record either side reads (upstream reads into 1024-byte buffers); larger records
/// arrive truncated and are refused.
pub const MAX_RECORD: usize = 1024;

/// The pod an `add` names, as the agent describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Pod name.
    pub name: String,
    /// Pod namespace.
    pub namespace: String,
    /// Pod service account.
    pub service_account: String,
}

/// A request from the node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Serve this pod; its netns came as the record's descriptor. `info` is `None` when the agent
    /// left it out, which the session treats as a protocol error.
    Add {
        /// Kubernetes pod UID.
        uid: String,
        /// Who the pod is.
        info: Option<PodInfo>,
    },
    /// The pod is enrolled but its netns cannot be opened now: do not stop it at reconcile.
    Keep {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// Stop serving this pod.
    Del {
        /// Kubernetes pod UID.
        uid: String,
    },
    /// The initial snapshot is complete.
    SnapshotSent,
}

/// Why a record could not be read as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// An empty record: upstream reads it as end of stream.
    #[error("empty record (end of stream)")]
    Empty,
    /// The record was cut by the kernel (larger than the receive buffer).
    #[error("record larger than {MAX_RECORD} bytes")]
    Truncated,
    /// The bytes are not a `WorkloadRequest`.
    #[error("not a WorkloadRequest: {0}")]
    Decode(String),
    /// A `WorkloadRequest` with no payload set.
    #[error("request has no payload")]
    NoPayload,
    /// An `add` without its netns descriptor.
    #[error("add for {uid} carries no netns descriptor")]
    AddWithoutDescriptor {
        /// The pod.
        uid: String,
    },
    /// Descriptors on a message other than `add`, or more than one.
    #[error("{count} descriptor(s) on a {kind} record (only add carries one)")]
    UnexpectedDescriptors {
        /// What the record was.
        kind: &'static str,
        /// How many descriptors came with it.
        count: usize,
    },
}

/// Reads one record. `truncated` is the kernel's `MSG_TRUNC`/`MSG_CTRUNC`; `descriptors` is how
/// many file descriptors arrived with it.
pub fn decode_request(
    record: &[u8],
    truncated: bool,
    descriptors: usize,
) -> Result<Request, ReadError> {
    if truncated {
        return Err(ReadError::Truncated);
    }
    if record.is_empty() {
        return Err(ReadError::Empty);
    }
    let request = WorkloadRequest::decode(record).map_err(|e| ReadError::Decode(e.to_string()))?;
    let (request, kind) = match request.payload.ok_or(ReadError::NoPayload)? {
        workload_request::Payload::Add(add) => {
            let info = add.workload_info.map(|i| PodInfo {
                name: i.name,
                namespace: i.namespace,
                service_account: i.service_account,
            });
            if descriptors == 0 {
                return Err(ReadError::AddWithoutDescriptor { uid: add.uid });
            }
            (Request::Add { uid: add.uid, info }, "add")
        }
        workload_request::Payload::Keep(keep) => (Request::Keep { uid: keep.uid }, "keep"),
        workload_request::Payload::Del(del) => (Request::Del { uid: del.uid }, "del"),
        workload_request::Payload::SnapshotSent(_) => (Request::SnapshotSent, "snapshot_sent"),
    };
    // `add` carries exactly one (none was refused above); everything else carries none.
    let allowed = if matches!(request, Request::Add { .. }) {
        1
    } else {
        0
    };
    if descriptors > allowed {
        return Err(ReadError::UnexpectedDescriptors {
            kind,
            count: descriptors,
        });
    }
    Ok(request)
}

/// The first record ztunnel sends on a connection.
pub fn encode_hello() -> Vec<u8> {
    ZdsHello {
        version: Version::V1.into(),
    }
    .encode_to_vec()
}

/// The answer to one request: success, or an error text (cut to fit the record size).
pub fn encode_ack(error: Option<&str>) -> Vec<u8> {
    // Leave room for the two nested field headers around the text.
    const TEXT_BUDGET: usize = MAX_RECORD - 8;
    let error = error.map_or_else(String::new, |text| {
        let mut end = text.len().min(TEXT_BUDGET);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_owned()
    });
    WorkloadResponse {
        payload: Some(workload_response::Payload::Ack(Ack { error })),
    }
    .encode_to_vec()
}

/// What the node agent sends: one request as a record (the `add`'s descriptor travels beside
/// it). Fails if the record would exceed [`MAX_RECORD`], which the receiver would refuse.
pub fn encode_request(request: &Request) -> Result<Vec<u8>, ReadError> {
    let payload = match request {
        Request::Add { uid, info } => workload_request::Payload::Add(AddWorkload {
            uid: uid.clone(),
            workload_info: info.as_ref().map(|i| WorkloadInfo {
                name: i.name.clone(),
                namespace: i.namespace.clone(),
                service_account: i.service_account.clone(),
            }),
        }),
        Request::Keep { uid } => workload_request::Payload::Keep(KeepWorkload { uid: uid.clone() }),
        Request::Del { uid } => workload_request::Payload::Del(DelWorkload { uid: uid.clone() }),
        Request::SnapshotSent => workload_request::Payload::SnapshotSent(SnapshotSent {}),
    };
    let bytes = WorkloadRequest {
        payload: Some(payload),
    }
    .encode_to_vec();
    if bytes.len() > MAX_RECORD {
        return Err(ReadError::Truncated);
    }
    Ok(bytes)
}

/// Reads ztunnel's hello; returns the version it announced (upstream agents log, not check, it).
pub fn decode_hello(record: &[u8]) -> Result<i32, ReadError> {
    if record.is_empty() {
        return Err(ReadError::Empty);
    }
    ZdsHello::decode(record)
        .map(|hello| hello.version)
        .map_err(|e| ReadError::Decode(e.to_string()))
}

/// Reads ztunnel's answer to a request: `Ok(None)` for success, `Ok(Some(text))` for an error
/// ack.
pub fn decode_ack(record: &[u8]) -> Result<Option<String>, ReadError> {
    if record.is_empty() {
        return Err(ReadError::Empty);
    }
    let response =
        WorkloadResponse::decode(record).map_err(|e| ReadError::Decode(e.to_string()))?;
    match response.payload {
        Some(workload_response::Payload::Ack(ack)) if ack.error.is_empty() => Ok(None),
        Some(workload_response::Payload::Ack(ack)) => Ok(Some(ack.error)),
        None => Err(ReadError::NoPayload),
    }
}

#[cfg(test)]
mod tests;
