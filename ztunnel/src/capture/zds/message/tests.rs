use std::path::PathBuf;

use super::*;

/// Upstream-encoded records from `../shared/golden`.
fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/golden")
        .join(format!("{name}.bin"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const UID: &str = "0b1d6e2a-1111-4c3e-9f00-5a5a5a5a5a5a";

#[test]
fn decodes_every_upstream_request() {
    assert_eq!(
        decode_request(&golden("zds-add"), false, 1),
        Ok(Request::Add {
            uid: UID.into(),
            info: Some(PodInfo {
                name: "web-7d4b9-x2x1".into(),
                namespace: "storefront".into(),
                service_account: "web".into(),
            }),
        })
    );
    assert_eq!(
        decode_request(&golden("zds-keep"), false, 0),
        Ok(Request::Keep { uid: UID.into() })
    );
    assert_eq!(
        decode_request(&golden("zds-del"), false, 0),
        Ok(Request::Del { uid: UID.into() })
    );
    assert_eq!(
        decode_request(&golden("zds-snapshot-sent"), false, 0),
        Ok(Request::SnapshotSent)
    );
}

#[test]
fn encodes_what_upstream_agents_expect() {
    assert_eq!(encode_hello(), golden("zds-hello"));
    assert_eq!(encode_ack(None), golden("zds-ack-ok"));
    assert_eq!(
        encode_ack(Some("netns for uid 0b1d6e2a is gone")),
        golden("zds-ack-error")
    );
    let long = "é".repeat(MAX_RECORD);
    assert!(
        encode_ack(Some(&long)).len() <= MAX_RECORD,
        "error acks fit one record"
    );
}

#[test]
fn refuses_records_that_break_the_rules() {
    let cases: Vec<(Vec<u8>, bool, usize, ReadError)> = vec![
        (Vec::new(), false, 0, ReadError::Empty),
        (golden("zds-del"), true, 0, ReadError::Truncated),
        (
            vec![0xff, 0xff, 0xff],
            false,
            0,
            ReadError::Decode(String::new()),
        ),
        // A WorkloadRequest with no payload: an unknown field only.
        (vec![0x30, 0x01], false, 0, ReadError::NoPayload),
        (
            golden("zds-add"),
            false,
            0,
            ReadError::AddWithoutDescriptor { uid: UID.into() },
        ),
        (
            golden("zds-add"),
            false,
            2,
            ReadError::UnexpectedDescriptors {
                kind: "add",
                count: 2,
            },
        ),
        (
            golden("zds-del"),
            false,
            1,
            ReadError::UnexpectedDescriptors {
                kind: "del",
                count: 1,
            },
        ),
        (
            golden("zds-snapshot-sent"),
            false,
            1,
            ReadError::UnexpectedDescriptors {
                kind: "snapshot_sent",
                count: 1,
            },
        ),
    ];
    for (record, truncated, fds, want) in cases {
        let got = decode_request(&record, truncated, fds);
        match (&got, &want) {
            // The decoder's wording is prost's; only the kind matters here.
            (Err(ReadError::Decode(_)), ReadError::Decode(_)) => {}
            _ => assert_eq!(got, Err(want), "record {record:02x?} fds {fds}"),
        }
    }
}

#[test]
fn the_agent_side_encodes_what_upstream_encodes() {
    for (name, request) in [
        (
            "zds-add",
            Request::Add {
                uid: UID.into(),
                info: Some(PodInfo {
                    name: "web-7d4b9-x2x1".into(),
                    namespace: "storefront".into(),
                    service_account: "web".into(),
                }),
            },
        ),
        ("zds-keep", Request::Keep { uid: UID.into() }),
        ("zds-del", Request::Del { uid: UID.into() }),
        ("zds-snapshot-sent", Request::SnapshotSent),
    ] {
        assert_eq!(encode_request(&request).unwrap(), golden(name), "{name}");
    }
    assert_eq!(decode_hello(&golden("zds-hello")), Ok(1));
    assert_eq!(decode_ack(&golden("zds-ack-ok")), Ok(None));
    assert_eq!(
        decode_ack(&golden("zds-ack-error")),
        Ok(Some("netns for uid 0b1d6e2a is gone".into()))
    );
    let huge = Request::Keep {
        uid: "u".repeat(MAX_RECORD),
    };
    assert_eq!(encode_request(&huge), Err(ReadError::Truncated));
}
