//! Abuse limits on the real binary: a per-client rate limit keyed by the real client address,
//! per-carrier source allowlists, and bounded logging of refused calls. Distinct clients are
//! distinct loopback addresses (127.0.0.2, 127.0.0.3, …): each test's client sockets bind one.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    harness::{Edge, json_reply},
    spec::BANDWIDTH_INBOUND,
};

/// A Twilio inbound form with its own message id.
fn twilio_form(id: &str) -> String {
    format!("MessageSid={id}&AccountSid=AC1&From=%2B15559876543&To=%2B15551234567&Body=x")
}

/// An HTTP client whose connections leave from `ip`.
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// POSTs a Twilio form from `client` with extra headers; status, `Retry-After`, JSON body.
async fn twilio_from(
    edge: &Edge,
    client: &reqwest::Client,
    id: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = client
        .post(edge.url("/twilio"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(twilio_form(id));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request sent");
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let (status, body) = json_reply(r).await;
    (status, retry_after, body)
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_while_another_is_unaffected() {
    // One call every 4 s sustained, three at once: the test has 4 s per call of slack.
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--rate-limit-per-sec",
            "0.25",
            "--rate-limit-burst",
            "3",
        ],
        &[],
    )
    .await;
    let noisy = client_from("127.0.0.2");
    let quiet = client_from("127.0.0.3");
    for i in 0..3 {
        let (status, _, _) = twilio_from(&edge, &noisy, &format!("SMnoisy{i}"), &[]).await;
        assert_eq!(status, 200, "call {i} is within the burst");
    }
    let (status, retry_after, body) = twilio_from(&edge, &noisy, "SMnoisy3", &[]).await;
    assert_eq!(status, 429, "{body}");
    let secs: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=4).contains(&secs), "Retry-After {secs}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "rate_limited");
    // The refused call published nothing; the other client still gets through.
    assert_eq!(edge.spooled_count(), 3);
    let (status, _, _) = twilio_from(&edge, &quiet, "SMquiet0", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 4);
    // After Retry-After the noisy client has budget again.
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (status, _, _) = twilio_from(&edge, &noisy, "SMnoisy4", &[]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_key_is_what_a_trusted_proxy_forwarded_never_what_an_untrusted_peer_claims() {
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--trusted-proxies",
            "127.0.0.2",
            // One call every 100 s: nothing refills during the test.
            "--rate-limit-per-sec",
            "0.01",
            "--rate-limit-burst",
            "2",
        ],
        &[],
    )
    .await;
    let proxy = client_from("127.0.0.2");
    let xff = |ip: &'static str| [("x-forwarded-for", ip)];
    // Through the trusted proxy: each forwarded client has its own budget.
    for i in 0..2 {
        let (status, _, _) =
            twilio_from(&edge, &proxy, &format!("SMa{i}"), &xff("198.51.100.1")).await;
        assert_eq!(status, 200);
    }
    let (status, _, _) = twilio_from(&edge, &proxy, "SMa2", &xff("198.51.100.1")).await;
    assert_eq!(status, 429, "198.51.100.1 spent its budget");
    let (status, _, _) = twilio_from(&edge, &proxy, "SMb0", &xff("198.51.100.2")).await;
    assert_eq!(
        status, 200,
        "another client behind the same proxy is not limited"
    );
    // RFC 7239 says the same thing.
    let (status, _, _) =
        twilio_from(&edge, &proxy, "SMa3", &[("forwarded", "for=198.51.100.1")]).await;
    assert_eq!(status, 429);
    // A client cannot prepend its way into a fresh budget: the proxy's entry is the last one.
    let (status, _, _) =
        twilio_from(&edge, &proxy, "SMa4", &xff("203.0.113.99, 198.51.100.1")).await;
    assert_eq!(status, 429);

    // An untrusted peer is keyed by its own address, whatever it claims to forward.
    let direct = client_from("127.0.0.3");
    for (i, claimed) in ["198.51.100.10", "198.51.100.11"].into_iter().enumerate() {
        let (status, _, _) = twilio_from(&edge, &direct, &format!("SMc{i}"), &xff(claimed)).await;
        assert_eq!(status, 200);
    }
    let (status, _, body) = twilio_from(&edge, &direct, "SMc2", &xff("198.51.100.12")).await;
    assert_eq!(
        status, 429,
        "a new claimed address is not a new budget: {body}"
    );
    assert_eq!(edge.spooled_count(), 5);
}

#[tokio::test]
async fn an_allowlisted_source_passes_and_any_other_gets_403_and_publishes_nothing() {
    let edge = Edge::start(
        &[
            "--insecure-skip-verify",
            "--twilio-allowed-sources",
            "127.0.0.2, 192.0.2.0/24",
        ],
        &[],
    )
    .await;
    let listed = client_from("127.0.0.2");
    let unlisted = client_from("127.0.0.3");
    let (status, _, _) = twilio_from(&edge, &listed, "SMlisted", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(edge.spooled_count(), 1);
    let (status, retry_after, body) = twilio_from(&edge, &unlisted, "SMunlisted", &[]).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "forbidden");
    assert_eq!(retry_after, None);
    // Claiming a listed address from an untrusted peer changes nothing.
    let (status, _, _) = twilio_from(
        &edge,
        &unlisted,
        "SMclaims",
        &[("x-forwarded-for", "192.0.2.1")],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(edge.spooled_count(), 1, "a refused call was published");
    assert!(
        edge.spooled("inbound")
            .iter()
            .all(|e| { e.to_string().contains("SMlisted") })
    );
    // The allowlist is Twilio's only: Bandwidth takes the same source.
    let r = unlisted
        .post(edge.url("/bandwidth/1"))
        .header("content-type", "application/json")
        .body(BANDWIDTH_INBOUND)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        edge.log()
            .contains("twilio only from 127.0.0.2/32, 192.0.2.0/24")
    );
}

#[tokio::test]
async fn a_flood_of_unauthenticated_calls_writes_a_bounded_number_of_log_lines() {
    let edge = Edge::start(
        &[
            "--twilio-auth-tokens",
            "flood-token",
            "--public-base-url",
            "http://127.0.0.1",
        ],
        &[],
    )
    .await;
    let started = Instant::now();
    let flood = 400;
    for chunk in 0..(flood / 50) {
        let forms: Vec<String> = (0..50)
            .map(|i| twilio_form(&format!("SMflood{chunk}x{i}")))
            .collect();
        let replies =
            futures_util::future::join_all(forms.iter().map(|f| edge.post_form("/twilio", f)))
                .await;
        assert!(replies.iter().all(|r| r.status() == 401));
    }
    // One more after a pause: its line reports the ones left out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        edge.post_form("/twilio", &twilio_form("SMlast"))
            .await
            .status(),
        401
    );
    let secs = started.elapsed().as_secs_f64().ceil() as usize;
    assert_eq!(edge.spooled_count(), 0);
    let log = edge.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("webhook refused"))
        .collect();
    let lines = refused.len();
    let most_suppressed = refused
        .iter()
        .filter_map(|l| l.split("suppressed=").nth(1))
        .filter_map(|v| v.split(' ').next()?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    // A burst of 50 lines, then 10 a second: far fewer lines than calls.
    assert!(
        lines >= 1 && lines <= 50 + 10 * (secs + 1),
        "{lines} log lines for {flood} refused calls in {secs} s"
    );
    assert!(lines < flood, "{lines} log lines for {flood} refused calls");
    assert!(most_suppressed > 0, "the lines say how many were left out");
    assert!(
        log.contains("X-Twilio-Signature"),
        "the auth reason is still logged"
    );
}
