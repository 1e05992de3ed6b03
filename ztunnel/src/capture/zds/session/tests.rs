use std::collections::BTreeMap;

use super::*;

fn info(name: &str) -> PodInfo {
    PodInfo {
        name: name.into(),
        namespace: "shop".into(),
        service_account: name.into(),
    }
}

const NS1: NetnsId = NetnsId { dev: 4, ino: 100 };
const NS2: NetnsId = NetnsId { dev: 4, ino: 200 };

/// Plays requests against a session and a set of running proxies that applies its actions.
struct Node {
    session: Session,
    running: BTreeMap<String, NetnsId>,
}

impl Node {
    fn new() -> Self {
        Self {
            session: Session::new(),
            running: BTreeMap::new(),
        }
    }

    fn reconnect(&mut self) {
        self.session = Session::new();
    }

    fn send(
        &mut self,
        request: Request,
        netns: Option<NetnsId>,
    ) -> Result<Vec<Action>, ProtocolError> {
        let running = self.running.clone();
        let actions = self.session.handle(
            request,
            netns,
            |uid| running.get(uid).copied(),
            running.keys().map(String::as_str),
        )?;
        for action in &actions {
            match action {
                Action::Start { uid, netns, .. } | Action::Replace { uid, netns, .. } => {
                    self.running.insert(uid.clone(), *netns);
                }
                Action::Stop { uid } => {
                    self.running.remove(uid);
                }
            }
        }
        Ok(actions)
    }

    fn add(&mut self, uid: &str, netns: NetnsId) -> Vec<Action> {
        self.send(
            Request::Add {
                uid: uid.into(),
                info: Some(info(uid)),
            },
            Some(netns),
        )
        .unwrap()
    }
}

#[test]
fn snapshot_starts_named_pods_and_reconcile_stops_the_rest() {
    let mut node = Node::new();
    assert_eq!(
        node.add("a", NS1),
        vec![Action::Start {
            uid: "a".into(),
            info: info("a"),
            netns: NS1
        }]
    );
    node.add("b", NS2);
    node.send(Request::SnapshotSent, None).unwrap();
    assert!(node.session.snapshot_done());

    // The agent restarts; its new snapshot names only a (same netns: nothing to do).
    node.reconnect();
    assert_eq!(
        node.add("a", NS1),
        vec![],
        "re-adding a running pod is a no-op"
    );
    let stopped = node.send(Request::SnapshotSent, None).unwrap();
    assert_eq!(stopped, vec![Action::Stop { uid: "b".into() }]);
    assert_eq!(node.running.keys().collect::<Vec<_>>(), ["a"]);
}

#[test]
fn keep_protects_and_del_during_snapshot_unprotects() {
    let mut node = Node::new();
    node.add("a", NS1);
    node.add("b", NS2);
    node.send(Request::SnapshotSent, None).unwrap();
    node.reconnect();
    node.send(Request::Keep { uid: "a".into() }, None).unwrap();
    node.add("b", NS2);
    node.send(Request::Del { uid: "b".into() }, None).unwrap();
    let stopped = node.send(Request::SnapshotSent, None).unwrap();
    assert_eq!(
        stopped,
        vec![Action::Stop { uid: "b".into() }],
        "kept a, b was deleted"
    );
}

#[test]
fn incremental_changes_after_the_snapshot() {
    let mut node = Node::new();
    node.send(Request::SnapshotSent, None).unwrap();
    node.add("a", NS1);
    assert_eq!(
        node.add("a", NS2),
        vec![Action::Replace {
            uid: "a".into(),
            info: info("a"),
            netns: NS2
        }],
        "a recreated sandbox replaces the proxy"
    );
    assert_eq!(
        node.send(Request::Del { uid: "a".into() }, None).unwrap(),
        vec![Action::Stop { uid: "a".into() }]
    );
    assert_eq!(
        node.send(Request::Del { uid: "zz".into() }, None).unwrap(),
        vec![],
        "unknown uid"
    );
}

#[test]
fn protocol_violations_are_named() {
    let mut node = Node::new();
    assert_eq!(
        node.send(
            Request::Add {
                uid: "a".into(),
                info: None
            },
            Some(NS1)
        ),
        Err(ProtocolError::AddWithoutInfo("a".into()))
    );
    assert_eq!(
        node.send(Request::Del { uid: String::new() }, None),
        Err(ProtocolError::EmptyUid)
    );
    node.send(Request::SnapshotSent, None).unwrap();
    assert_eq!(
        node.send(Request::SnapshotSent, None),
        Err(ProtocolError::SecondSnapshot)
    );
    assert_eq!(
        node.send(Request::Keep { uid: "a".into() }, None),
        Err(ProtocolError::KeepAfterSnapshot("a".into()))
    );
    assert!(node.running.is_empty(), "violations change nothing");
}
