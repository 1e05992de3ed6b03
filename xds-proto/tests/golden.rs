//! Wire compatibility of the project's `.proto` files with the upstream encodings recorded in
//! `shared/golden` (see its README): every vector is decoded with the generated types, re-encoded,
//! and compared field by field with its canonical JSON through a reflection pool built from our
//! own descriptor set.

// tests: a panic is a failure report
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    fmt::Debug,
    fs,
    path::{Path, PathBuf},
};

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, ReflectMessage, SerializeOptions, Value};
use serde_json::Value as Json;
use xds_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, FILE_DESCRIPTOR_SET,
    envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse},
    istio::{
        security::{self, string_match::MatchType},
        v1::auth::{IstioCertificateRequest, IstioCertificateResponse},
        workload::{
            self, address,
            gateway_address::Destination,
            load_balancing,
            zds::{self, workload_request, workload_response},
        },
    },
};

// ---------------------------------------------------------------------------------------------
// Loading the vectors
// ---------------------------------------------------------------------------------------------

/// `shared/golden`, which lives beside the checkout.
fn golden_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden");
    assert!(
        dir.join("index.json").is_file(),
        "golden vectors not found: expected {}/index.json (the checkout must sit beside shared/)",
        dir.display()
    );
    dir
}

/// `index.json`: vector name → full message name.
fn index() -> BTreeMap<String, String> {
    let path = golden_dir().join("index.json");
    let index: Json = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let entries = index.as_object().expect("index.json is an object");
    assert!(!entries.is_empty(), "index.json lists no vector");
    entries
        .iter()
        .map(|(name, entry)| {
            let message = entry["message"]
                .as_str()
                .unwrap_or_else(|| panic!("index.json: {name} has no message name"));
            (name.clone(), message.to_owned())
        })
        .collect()
}

fn golden_bin(name: &str) -> Vec<u8> {
    let path = golden_dir().join(format!("{name}.bin"));
    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn golden_json(name: &str) -> Json {
    let path = golden_dir().join(format!("{name}.json"));
    serde_json::from_slice(&fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn decode<M: Message + Default>(name: &str) -> M {
    M::decode(golden_bin(name).as_slice()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Typed path: the generated prost types
// ---------------------------------------------------------------------------------------------

/// Decodes `bytes` as `M`, re-encodes it, and checks the re-encoding decodes to an equal value and
/// is byte-identical to the original.
fn round_trip<M: Message + Default + PartialEq + Debug>(bytes: &[u8]) -> Result<M, String> {
    let decoded = M::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let encoded = decoded.encode_to_vec();
    let again = M::decode(encoded.as_slice()).map_err(|e| format!("decode of re-encoding: {e}"))?;
    if again != decoded {
        return Err(format!(
            "round trip changed the value:\n{decoded:?}\n!=\n{again:?}"
        ));
    }
    if encoded != bytes {
        return Err(format!(
            "re-encoding differs from the original bytes:\n  original {}\n  re-encoded {}",
            hex(bytes),
            hex(&encoded)
        ));
    }
    Ok(decoded)
}

/// Typed round trip of a vector, chosen by the message name from `index.json`. Resources inside a
/// `DeltaDiscoveryResponse` are round-tripped too, as the type their URL names.
fn typed_round_trip(message: &str, bytes: &[u8]) -> Result<(), String> {
    match message {
        "envoy.service.discovery.v3.DeltaDiscoveryRequest" => {
            round_trip::<DeltaDiscoveryRequest>(bytes).map(drop)
        }
        "envoy.service.discovery.v3.DeltaDiscoveryResponse" => {
            let response = round_trip::<DeltaDiscoveryResponse>(bytes)?;
            for resource in &response.resources {
                let any = resource
                    .resource
                    .as_ref()
                    .ok_or_else(|| format!("resource {} has no body", resource.name))?;
                if any.type_url != response.type_url {
                    return Err(format!(
                        "resource {}: Any type {} differs",
                        resource.name, any.type_url
                    ));
                }
                let inner = match any.type_url.as_str() {
                    ADDRESS_TYPE_URL => round_trip::<workload::Address>(&any.value).map(drop),
                    AUTHORIZATION_TYPE_URL => {
                        round_trip::<security::Authorization>(&any.value).map(drop)
                    }
                    other => Err(format!("unexpected resource type {other}")),
                };
                inner.map_err(|e| format!("resource {}: {e}", resource.name))?;
            }
            Ok(())
        }
        "istio.v1.auth.IstioCertificateRequest" => {
            round_trip::<IstioCertificateRequest>(bytes).map(drop)
        }
        "istio.v1.auth.IstioCertificateResponse" => {
            round_trip::<IstioCertificateResponse>(bytes).map(drop)
        }
        "istio.workload.zds.ZdsHello" => round_trip::<zds::ZdsHello>(bytes).map(drop),
        "istio.workload.zds.WorkloadRequest" => round_trip::<zds::WorkloadRequest>(bytes).map(drop),
        "istio.workload.zds.WorkloadResponse" => {
            round_trip::<zds::WorkloadResponse>(bytes).map(drop)
        }
        other => Err(format!("no generated type is mapped to message {other}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Reflection path: our descriptor set, canonical JSON, unknown fields
// ---------------------------------------------------------------------------------------------

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn decode_dynamic(
    pool: &DescriptorPool,
    message: &str,
    bytes: &[u8],
) -> Result<DynamicMessage, String> {
    let desc = pool
        .get_message_by_name(message)
        .ok_or_else(|| format!("message {message} is not in FILE_DESCRIPTOR_SET"))?;
    DynamicMessage::decode(desc, bytes).map_err(|e| format!("reflection decode: {e}"))
}

/// Canonical JSON as the golden files use it: proto field names, zero values omitted, enum names,
/// 64-bit integers as strings. `Any` values are expanded by their type URL against the pool.
fn to_json(message: &DynamicMessage) -> Result<Json, String> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .use_enum_numbers(false)
        .stringify_64_bit_integers(true);
    message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| format!("JSON serialization: {e}"))
}

/// Every unknown field in `message`, recursively, including inside packed `Any` values (which are
/// decoded by their type URL). Each entry is `path: field number`.
fn unknown_fields(message: &DynamicMessage) -> Vec<String> {
    let mut found = Vec::new();
    collect_unknown(message, message.descriptor().full_name(), &mut found);
    found
}

fn collect_unknown(message: &DynamicMessage, path: &str, found: &mut Vec<String>) {
    for field in message.unknown_fields() {
        found.push(format!("{path}: unknown field number {}", field.number()));
    }
    if message.descriptor().full_name() == "google.protobuf.Any" {
        collect_unknown_in_any(message, path, found);
    }
    for (field, value) in message.fields() {
        collect_unknown_in_value(value, &format!("{path}.{}", field.name()), found);
    }
}

fn collect_unknown_in_value(value: &Value, path: &str, found: &mut Vec<String>) {
    match value {
        Value::Message(m) => collect_unknown(m, path, found),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_unknown_in_value(item, &format!("{path}[{i}]"), found);
            }
        }
        Value::Map(entries) => {
            for (key, item) in entries {
                collect_unknown_in_value(item, &format!("{path}[{key:?}]"), found);
            }
        }
        _ => {}
    }
}

fn collect_unknown_in_any(any: &DynamicMessage, path: &str, found: &mut Vec<String>) {
    let type_url = any
        .get_field_by_name("type_url")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let value = any
        .get_field_by_name("value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = type_url.rsplit('/').next().unwrap_or_default();
    let Some(desc) = any.descriptor().parent_pool().get_message_by_name(name) else {
        found.push(format!("{path}: Any of unknown type {type_url:?}"));
        return;
    };
    match DynamicMessage::decode(desc, value.as_ref()) {
        Ok(inner) => collect_unknown(&inner, &format!("{path}<{name}>"), found),
        Err(e) => found.push(format!(
            "{path}: Any payload does not decode as {name}: {e}"
        )),
    }
}

/// The first difference between two JSON values, as `path: expected … actual …`.
fn first_difference(path: &str, expected: &Json, actual: &Json) -> Option<String> {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => {
            let keys: std::collections::BTreeSet<&String> = e.keys().chain(a.keys()).collect();
            keys.into_iter().find_map(|key| {
                let here = format!("{path}.{key}");
                match (e.get(key), a.get(key)) {
                    (Some(ev), Some(av)) => first_difference(&here, ev, av),
                    (Some(ev), None) => Some(format!("{here}: expected {ev}, actual field absent")),
                    (None, Some(av)) => Some(format!("{here}: expected field absent, actual {av}")),
                    (None, None) => None,
                }
            })
        }
        (Json::Array(e), Json::Array(a)) => {
            if e.len() != a.len() {
                return Some(format!(
                    "{path}: expected {} elements, actual {}\n  expected {expected}\n  actual   {actual}",
                    e.len(),
                    a.len()
                ));
            }
            e.iter()
                .zip(a)
                .enumerate()
                .find_map(|(i, (ev, av))| first_difference(&format!("{path}[{i}]"), ev, av))
        }
        _ if expected == actual => None,
        _ => Some(format!("{path}: expected {expected}, actual {actual}")),
    }
}

/// The reflection check of one vector: decode with our descriptors, no unknown field anywhere,
/// canonical JSON equal to the golden JSON.
fn reflection_check(
    pool: &DescriptorPool,
    message: &str,
    bytes: &[u8],
    expected: &Json,
) -> Result<(), String> {
    let dynamic = decode_dynamic(pool, message, bytes)?;
    let mut problems = Vec::new();
    let unknown = unknown_fields(&dynamic);
    if !unknown.is_empty() {
        problems.push(format!(
            "unknown fields (wrong field number?):\n  {}",
            unknown.join("\n  ")
        ));
    }
    match to_json(&dynamic) {
        Ok(actual) => {
            if let Some(diff) = first_difference("$", expected, &actual) {
                problems.push(format!("JSON differs from the golden file at {diff}"));
            }
        }
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------------
// Every vector
// ---------------------------------------------------------------------------------------------

#[test]
fn every_golden_vector_decodes_round_trips_and_matches_its_json() {
    let pool = pool();
    let index = index();
    let mut failures = Vec::new();
    for (name, message) in &index {
        let bytes = golden_bin(name);
        let expected = golden_json(name);
        if let Err(e) = typed_round_trip(message, &bytes) {
            failures.push(format!("{name} ({message}), generated types: {e}"));
        }
        if let Err(e) = reflection_check(&pool, message, &bytes, &expected) {
            failures.push(format!("{name} ({message}), reflection: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden vectors failed:\n{}",
        failures.len(),
        index.len(),
        failures.join("\n\n")
    );
}

#[test]
fn every_message_named_in_the_index_is_in_the_descriptor_set() {
    let pool = pool();
    for (name, message) in index() {
        assert!(
            pool.get_message_by_name(&message).is_some(),
            "{name}: {message} missing"
        );
    }
}

#[test]
fn an_unknown_message_name_is_refused() {
    assert!(typed_round_trip("istio.workload.Nope", &[]).is_err());
    assert!(decode_dynamic(&pool(), "istio.workload.Nope", &[]).is_err());
}

// ---------------------------------------------------------------------------------------------
// The checker can fail
// ---------------------------------------------------------------------------------------------

/// `zds-del` is `12 26 12 24 <uid>`: `del` (field 2) holding `uid` (field 2). Moving `uid` to
/// field 1 must be reported as an unknown field and as a JSON difference.
#[test]
fn a_wrong_field_number_is_reported() {
    let mut bytes = golden_bin("zds-del");
    assert_eq!(
        &bytes[..4],
        &[0x12, 0x26, 0x12, 0x24],
        "zds-del layout changed"
    );
    bytes[2] = 0x0a;

    let pool = pool();
    let dynamic = decode_dynamic(&pool, "istio.workload.zds.WorkloadRequest", &bytes).unwrap();
    let unknown = unknown_fields(&dynamic);
    assert_eq!(
        unknown,
        vec!["istio.workload.zds.WorkloadRequest.del: unknown field number 1".to_owned()]
    );
    let err = reflection_check(
        &pool,
        "istio.workload.zds.WorkloadRequest",
        &bytes,
        &golden_json("zds-del"),
    )
    .unwrap_err();
    assert!(err.contains("unknown field number 1"), "{err}");

    // The generated type silently drops the unknown field: only a value comparison catches it.
    let typed = zds::WorkloadRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        typed.payload,
        Some(workload_request::Payload::Del(zds::DelWorkload {
            uid: String::new()
        }))
    );
}

/// An unknown field inside a packed `Any` (an Authorization inside a delta response) is found.
#[test]
fn an_unknown_field_inside_an_any_is_reported() {
    let mut response: DeltaDiscoveryResponse = decode("xds-delta-response-authorization");
    let any = response.resources[0].resource.as_mut().unwrap();
    // Field 15, varint 1: not defined in istio.security.Authorization.
    any.value.extend_from_slice(&[0x78, 0x01]);
    let bytes = response.encode_to_vec();

    let pool = pool();
    let dynamic = decode_dynamic(
        &pool,
        "envoy.service.discovery.v3.DeltaDiscoveryResponse",
        &bytes,
    )
    .unwrap();
    assert_eq!(
        unknown_fields(&dynamic),
        vec![
            "envoy.service.discovery.v3.DeltaDiscoveryResponse.resources[0].resource\
             <istio.security.Authorization>: unknown field number 15"
                .to_owned()
        ]
    );
}

/// A nested value that differs is reported with its path, expected and actual values.
#[test]
fn a_json_difference_is_reported_with_its_path() {
    let mut response: DeltaDiscoveryResponse = decode("xds-delta-response-addresses");
    let any = response.resources[0].resource.as_mut().unwrap();
    let mut address = workload::Address::decode(any.value.as_slice()).unwrap();
    let Some(address::Type::Workload(w)) = address.r#type.as_mut() else {
        panic!("first resource is a workload");
    };
    w.service_account = "intruder".to_owned();
    any.value = address.encode_to_vec();

    let err = reflection_check(
        &pool(),
        "envoy.service.discovery.v3.DeltaDiscoveryResponse",
        &response.encode_to_vec(),
        &golden_json("xds-delta-response-addresses"),
    )
    .unwrap_err();
    assert!(
        err.contains(
            "$.resources[0].resource.workload.service_account: expected \"web\", actual \"intruder\""
        ),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Typed assertions per family
// ---------------------------------------------------------------------------------------------

fn unpack_address(response: &DeltaDiscoveryResponse, i: usize) -> workload::Address {
    let any = response.resources[i].resource.as_ref().unwrap();
    assert_eq!(any.type_url, ADDRESS_TYPE_URL);
    workload::Address::decode(any.value.as_slice()).unwrap()
}

fn unpack_authorization(response: &DeltaDiscoveryResponse, i: usize) -> security::Authorization {
    let any = response.resources[i].resource.as_ref().unwrap();
    assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
    security::Authorization::decode(any.value.as_slice()).unwrap()
}

fn workload_of(address: workload::Address) -> workload::Workload {
    match address.r#type {
        Some(address::Type::Workload(w)) => w,
        other => panic!("expected a workload, got {other:?}"),
    }
}

#[test]
fn typed_address_response() {
    let response: DeltaDiscoveryResponse = decode("xds-delta-response-addresses");
    assert_eq!(response.type_url, ADDRESS_TYPE_URL);
    assert_eq!(response.nonce, "nonce-17");
    assert_eq!(response.system_version_info, "2026-11-22T00:00:00Z/17");
    assert_eq!(
        response.removed_resources,
        ["Kubernetes//Pod/storefront/web-7d4b9-old00"]
    );
    assert_eq!(response.resources.len(), 4);
    assert_eq!(response.resources[0].version, "v17");

    let web = workload_of(unpack_address(&response, 0));
    assert_eq!(response.resources[0].name, web.uid);
    assert_eq!(web.uid, "Kubernetes//Pod/storefront/web-7d4b9-x2x1");
    assert_eq!(web.name, "web-7d4b9-x2x1");
    assert_eq!(web.namespace, "storefront");
    assert_eq!(web.addresses, [vec![10, 244, 1, 5]]);
    assert_eq!(web.service_account, "web");
    assert_eq!(web.trust_domain, "cluster.local");
    assert_eq!(web.tunnel_protocol(), workload::TunnelProtocol::Hbone);
    assert_eq!(web.workload_type(), workload::WorkloadType::Pod);
    assert_eq!(web.status(), workload::WorkloadStatus::Healthy);
    assert_eq!(web.node, "node-a");
    assert_eq!(web.authorization_policies, ["storefront/allow-web-to-api"]);
    let locality = web.locality.as_ref().unwrap();
    assert_eq!(
        (locality.region.as_str(), locality.zone.as_str()),
        ("eu-west-1", "eu-west-1a")
    );
    let ports = &web.services["storefront/web.storefront.svc.cluster.local"].ports;
    assert_eq!((ports[0].service_port, ports[0].target_port), (80, 8080));

    let api = workload_of(unpack_address(&response, 1));
    assert_eq!(api.addresses.len(), 2);
    assert_eq!(api.addresses[1].len(), 16, "second address is IPv6");
    let waypoint = api.waypoint.as_ref().unwrap();
    assert_eq!(waypoint.hbone_mtls_port, 15008);
    match &waypoint.destination {
        Some(Destination::Hostname(h)) => {
            assert_eq!(h.namespace, "storefront");
            assert_eq!(h.hostname, "waypoint.storefront.svc.cluster.local");
        }
        other => panic!("expected a hostname waypoint, got {other:?}"),
    }

    let billing = workload_of(unpack_address(&response, 2));
    assert_eq!(billing.status(), workload::WorkloadStatus::Unhealthy);
    assert_eq!(billing.tunnel_protocol(), workload::TunnelProtocol::None);
    assert_eq!(billing.service_account, "default");

    let service = match unpack_address(&response, 3).r#type {
        Some(address::Type::Service(s)) => s,
        other => panic!("expected a service, got {other:?}"),
    };
    assert_eq!(
        response.resources[3].name,
        format!("{}/{}", service.namespace, service.hostname)
    );
    assert_eq!(service.addresses[0].address, [10, 96, 0, 10]);
    assert_eq!(service.addresses[0].length, None);
    assert_eq!(service.ip_families(), workload::IpFamilies::Ipv4Only);
    let lb = service.load_balancing.as_ref().unwrap();
    assert_eq!(lb.mode(), load_balancing::Mode::Failover);
    assert_eq!(
        lb.routing_preference().collect::<Vec<_>>(),
        [
            load_balancing::Scope::Network,
            load_balancing::Scope::Region,
            load_balancing::Scope::Zone
        ]
    );
    assert_eq!(
        service.ports[0].app_protocol(),
        workload::AppProtocol::Http11
    );
    assert_eq!(service.ports[1].app_protocol(), workload::AppProtocol::Grpc);
    assert_eq!(
        (service.ports[1].service_port, service.ports[1].target_port),
        (9090, 0)
    );
    assert_eq!(
        service.subject_alt_names,
        ["spiffe://cluster.local/ns/storefront/sa/api"]
    );
    match &service.waypoint.as_ref().unwrap().destination {
        Some(Destination::Address(a)) => assert_eq!(a.address, [10, 96, 0, 99]),
        other => panic!("expected an IP waypoint, got {other:?}"),
    }
}

#[test]
fn typed_authorization_response() {
    let response: DeltaDiscoveryResponse = decode("xds-delta-response-authorization");
    assert_eq!(response.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(response.resources.len(), 3);

    let allow = unpack_authorization(&response, 0);
    assert_eq!(
        response.resources[0].name,
        format!("{}/{}", allow.namespace, allow.name)
    );
    assert_eq!(allow.scope(), security::Scope::WorkloadSelector);
    assert_eq!(allow.action(), security::Action::Allow);
    assert!(!allow.dry_run);
    let clauses = &allow.rules[0].clauses;
    assert_eq!(clauses.len(), 2);
    assert_eq!(
        clauses[0].matches[0].principals[0].match_type,
        Some(MatchType::Exact(
            "cluster.local/ns/storefront/sa/web".to_owned()
        ))
    );
    assert_eq!(
        clauses[0].matches[1].namespaces[0].match_type,
        Some(MatchType::Prefix("store".to_owned()))
    );
    assert_eq!(clauses[1].matches[0].destination_ports, [8080, 8443]);

    let deny = unpack_authorization(&response, 1);
    assert_eq!(deny.action(), security::Action::Deny);
    assert_eq!(deny.scope(), security::Scope::Global);
    assert!(deny.dry_run);
    let m = &deny.rules[0].clauses[0].matches[0];
    assert_eq!(
        m.not_principals[0].match_type,
        Some(MatchType::Presence(()))
    );
    assert_eq!(
        m.not_namespaces[0].match_type,
        Some(MatchType::Suffix("-trusted".to_owned()))
    );
    assert_eq!(m.service_accounts[0].namespace, "ops");
    assert_eq!(m.service_accounts[0].service_account, "robot");
    assert_eq!(m.source_ips[0].address, [192, 0, 2, 0]);
    assert_eq!(m.source_ips[0].length, 24);
    assert_eq!(m.not_destination_ports, [15021]);

    let ns = unpack_authorization(&response, 2);
    assert_eq!(ns.scope(), security::Scope::Namespace);
    assert!(ns.rules.is_empty());
}

#[test]
fn typed_delta_requests() {
    let initial: DeltaDiscoveryRequest = decode("xds-delta-request-initial");
    assert_eq!(initial.type_url, ADDRESS_TYPE_URL);
    assert!(initial.resource_names_subscribe.is_empty());
    assert!(initial.response_nonce.is_empty());
    assert_eq!(
        initial
            .initial_resource_versions
            .get("Kubernetes//Pod/storefront/web-7d4b9-x2x1"),
        Some(&"v16".to_owned())
    );
    let node = initial.node.as_ref().unwrap();
    assert_eq!(
        node.id,
        "ztunnel~10.244.1.2~ztunnel-7k2lp.istio-system~istio-system.svc.cluster.local"
    );
    let metadata = &node.metadata.as_ref().unwrap().fields;
    assert_eq!(
        metadata["NODE_NAME"].kind,
        Some(prost_types::value::Kind::StringValue("node-a".to_owned()))
    );
    assert_eq!(metadata.len(), 3);

    let nack: DeltaDiscoveryRequest = decode("xds-delta-request-nack");
    assert_eq!(nack.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(nack.response_nonce, "nonce-3");
    assert!(nack.node.is_none());
    let status = nack.error_detail.as_ref().unwrap();
    assert_eq!(status.code, 3);
    assert_eq!(
        status.message,
        "storefront/allow-web-to-api: invalid CIDR length 33"
    );

    let on_demand: DeltaDiscoveryRequest = decode("xds-delta-request-ondemand");
    assert_eq!(on_demand.resource_names_subscribe, ["/10.244.9.9"]);
    assert!(on_demand.node.is_none() && on_demand.response_nonce.is_empty());
}

#[test]
fn typed_ca_messages() {
    let request: IstioCertificateRequest = decode("ca-request");
    assert!(
        request
            .csr
            .starts_with("-----BEGIN CERTIFICATE REQUEST-----\n")
    );
    assert_eq!(request.validity_duration, 86_400);
    let metadata = &request.metadata.as_ref().unwrap().fields;
    assert_eq!(
        metadata["ImpersonatedIdentity"].kind,
        Some(prost_types::value::Kind::StringValue(
            "spiffe://cluster.local/ns/storefront/sa/web".to_owned()
        ))
    );

    let response: IstioCertificateResponse = decode("ca-response");
    assert_eq!(response.cert_chain.len(), 3);
    assert!(response.cert_chain[0].contains("LEAF"));
    assert!(response.cert_chain[1].contains("INTERMEDIATE"));
    assert!(response.cert_chain[2].contains("ROOT"));
    assert!(
        response
            .cert_chain
            .iter()
            .all(|c| c.ends_with("-----END CERTIFICATE-----\n"))
    );
}

#[test]
fn typed_zds_messages() {
    let uid = "0b1d6e2a-1111-4c3e-9f00-5a5a5a5a5a5a";

    let hello: zds::ZdsHello = decode("zds-hello");
    assert_eq!(hello.version(), zds::Version::V1);

    let add: zds::WorkloadRequest = decode("zds-add");
    let Some(workload_request::Payload::Add(add)) = add.payload else {
        panic!("zds-add is not an add: {add:?}");
    };
    assert_eq!(add.uid, uid);
    assert_eq!(
        add.workload_info,
        Some(zds::WorkloadInfo {
            name: "web-7d4b9-x2x1".to_owned(),
            namespace: "storefront".to_owned(),
            service_account: "web".to_owned(),
        })
    );

    let keep: zds::WorkloadRequest = decode("zds-keep");
    assert_eq!(
        keep.payload,
        Some(workload_request::Payload::Keep(zds::KeepWorkload {
            uid: uid.to_owned()
        }))
    );
    let del: zds::WorkloadRequest = decode("zds-del");
    assert_eq!(
        del.payload,
        Some(workload_request::Payload::Del(zds::DelWorkload {
            uid: uid.to_owned()
        }))
    );
    let snapshot: zds::WorkloadRequest = decode("zds-snapshot-sent");
    assert_eq!(
        snapshot.payload,
        Some(workload_request::Payload::SnapshotSent(
            zds::SnapshotSent {}
        ))
    );

    let ok: zds::WorkloadResponse = decode("zds-ack-ok");
    assert_eq!(
        ok.payload,
        Some(workload_response::Payload::Ack(zds::Ack {
            error: String::new()
        }))
    );
    assert_eq!(
        ok.encode_to_vec(),
        [0x0a, 0x00],
        "an OK ack is never empty on the wire"
    );
    let error: zds::WorkloadResponse = decode("zds-ack-error");
    assert_eq!(
        error.payload,
        Some(workload_response::Payload::Ack(zds::Ack {
            error: "netns for uid 0b1d6e2a is gone".to_owned()
        }))
    );
}

#[test]
fn grpc_service_names_follow_the_upstream_packages() {
    use xds_proto::{
        envoy::service::discovery::v3::aggregated_discovery_service_server as ads,
        istio::v1::auth::istio_certificate_service_server as ca,
    };
    fn name<S: tonic::server::NamedService>() -> &'static str {
        S::NAME
    }
    assert_eq!(
        ads::SERVICE_NAME,
        "envoy.service.discovery.v3.AggregatedDiscoveryService"
    );
    assert_eq!(
        name::<ads::AggregatedDiscoveryServiceServer<()>>(),
        ads::SERVICE_NAME
    );
    assert_eq!(ca::SERVICE_NAME, "istio.v1.auth.IstioCertificateService");
    assert_eq!(
        name::<ca::IstioCertificateServiceServer<()>>(),
        ca::SERVICE_NAME
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
