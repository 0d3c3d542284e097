//! The data disk fills up under the embedded default's spool, for real: the running edge gets a
//! file size limit (RLIMIT_FSIZE, set from outside with `prlimit`), so its next appends fail as
//! they would on a full disk (a short write, then an error), and the limit is lifted later, as
//! when space is freed. A carrier that retries sends each refused event again. Every event
//! acknowledged must be in the spool once, none refused may be lost to dedupe, and the spool
//! must be whole: a restart on it works.

use std::{collections::HashMap, process::Command};

use crate::{
    harness::{Edge, acknowledged_event_id},
    spec::BANDWIDTH_INBOUND,
};

/// Starts the binary with SIGXFSZ ignored (an ignored signal stays ignored across exec), so a
/// write past the limit fails with EFBIG instead of killing the process. Its log goes through a
/// pipe to `cat`, which has no limit, so logging is not what fails.
const WRAPPER: &[&str] = &[
    "bash",
    "-c",
    r#"trap '' XFSZ; exec "$@" 2> >(exec cat >&2)"#,
    "bash",
];

fn body(i: usize) -> String {
    BANDWIDTH_INBOUND.replace("msg-abc123def456", &format!("msg-disk-{i}"))
}

/// Sets the edge's file size limit (soft; the hard one stays unlimited), or lifts it.
fn limit_file_size(edge: &Edge, bytes: Option<u64>) {
    let soft = bytes.map_or("unlimited".to_owned(), |b| b.to_string());
    let status = Command::new("prlimit")
        .args(["--pid", &edge.pid().to_string()])
        .arg(format!("--fsize={soft}:unlimited"))
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
}

async fn send(edge: &Edge, i: usize) -> (u16, Option<String>) {
    let r = edge.post_json("/bandwidth/15551234567", &body(i)).await;
    (r.status().as_u16(), acknowledged_event_id(&r))
}

fn spooled_ids(edge: &Edge) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for event in edge.spooled("inbound") {
        *ids.entry(event["eventId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_with_503_keeps_every_acknowledged_event_and_recovers() {
    let mut edge = Edge::start_wrapped(WRAPPER, &["--insecure-skip-verify"]).await;
    let mut acknowledged = Vec::new();
    for i in 0..10 {
        let (status, id) = send(&edge, i).await;
        assert_eq!(status, 200);
        acknowledged.extend(id);
    }

    // Room for one more event and part of the next (ten took `size`).
    let size = std::fs::metadata(edge.spool_path("inbound")).unwrap().len();
    limit_file_size(&edge, Some(size + size / 10 + size / 20));
    let mut refused = Vec::new();
    for i in 10..20 {
        match send(&edge, i).await {
            (200, id) => acknowledged.extend(id),
            (503, _) => refused.push(i),
            (other, _) => panic!("webhook {i}: {other}, not 200 or 503\n{}", edge.log()),
        }
    }
    assert!(
        refused.len() >= 8,
        "the full disk refused the webhooks after it filled: {refused:?}\n{}",
        edge.log()
    );
    let spool = std::fs::read_to_string(edge.spool_path("inbound")).unwrap();
    assert!(
        spool.ends_with('\n'),
        "no partial record is left behind for the next append"
    );
    assert!(
        edge.log().contains("webhook failed; carrier will retry"),
        "the refusal is logged:\n{}",
        edge.log()
    );

    // Space is freed; the carrier retries each refused webhook once.
    limit_file_size(&edge, None);
    for &i in &refused {
        let (status, id) = send(&edge, i).await;
        assert_eq!(status, 200, "retry of webhook {i} once there is room");
        acknowledged.extend(id);
    }
    for i in 20..25 {
        let (status, id) = send(&edge, i).await;
        assert_eq!(status, 200);
        acknowledged.extend(id);
    }

    // Every acknowledged event once; the refused ones were not taken as duplicates of themselves.
    let spooled = spooled_ids(&edge);
    assert_eq!(acknowledged.len(), 25);
    for id in &acknowledged {
        assert_eq!(spooled.get(id), Some(&1), "{id} in the spool once");
    }
    assert_eq!(spooled.len(), 25, "nothing else in the spool");

    // The spool is whole: the edge starts again on it and keeps appending.
    assert!(edge.terminate().success());
    let data = edge.take_data();
    let edge = Edge::restart_in(data, &["--insecure-skip-verify"], &[]).await;
    let (status, _) = send(&edge, 25).await;
    assert_eq!(status, 200);
    assert_eq!(spooled_ids(&edge).len(), 26);
}
