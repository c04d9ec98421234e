//! The pipelined stream (`Cache.Pipeline`): the node answers every tagged request exactly as the
//! unary call would, stream-level limits end the stream with a clear status, and the client gives
//! the same results and errors with pipelining on and off.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use ringcache::{Client, Error};
use ringcache_proto::v1::{
    self, PipelineRequest, PipelineRequestBatch, cache_client::CacheClient, pipeline_request::Op,
    pipeline_response::Result as Answer,
};
use ringcache_server::Config;
use ringcache_server::config::{ByteSize, Settings};
use ringcache_tests::TestNode;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

const PATIENCE: Duration = Duration::from_secs(10);

fn config_with(settings: Settings) -> Config {
    let mut config = Config::from_settings(Settings {
        grpc_port: Some(0),
        http_port: Some(0),
        node_id: Some("pipe".to_owned()),
        ..settings
    })
    .unwrap();
    config.store.shards = 4;
    config
}

/// A raw pipeline stream: the sender of request batches and the stream of answers.
async fn open(
    node: &TestNode,
) -> (
    mpsc::Sender<PipelineRequestBatch>,
    Streaming<v1::PipelineResponseBatch>,
) {
    let (tx, rx) = mpsc::channel(8);
    let inbound = CacheClient::new(node.channel().await)
        .pipeline(ReceiverStream::new(rx))
        .await
        .expect("the node serves Pipeline")
        .into_inner();
    (tx, inbound)
}

/// Reads answers until every tag in `tags` has one.
async fn answers(
    inbound: &mut Streaming<v1::PipelineResponseBatch>,
    tags: usize,
) -> HashMap<u64, Answer> {
    let mut answers = HashMap::new();
    while answers.len() < tags {
        let batch = tokio::time::timeout(PATIENCE, inbound.message())
            .await
            .expect("answers within the deadline")
            .expect("the stream stays up")
            .expect("the stream does not end");
        assert_ne!(batch.topology_digest, 0, "every batch carries the digest");
        for response in batch.responses {
            let answer = response.result.expect("every answer has a result");
            assert!(
                answers.insert(response.tag, answer).is_none(),
                "tag {} answered twice",
                response.tag
            );
        }
    }
    answers
}

fn request(tag: u64, op: Op) -> PipelineRequest {
    PipelineRequest { tag, op: Some(op) }
}

fn get(key: &'static str) -> Op {
    Op::Get(v1::GetRequest {
        key: key.into(),
        consistency: 0,
        tracking_id: 0,
    })
}

fn set(key: &'static str, value: &'static str) -> Op {
    Op::Set(v1::SetRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    })
}

fn error_code(answer: &Answer) -> Code {
    match answer {
        Answer::Error(error) => Code::from(error.code),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn every_tagged_request_gets_the_answer_of_its_unary_call() {
    let node = TestNode::start(config_with(Settings::default())).await;
    let (tx, mut inbound) = open(&node).await;

    // Requests start in arrival order: the get after the set sees its value.
    let first = vec![
        request(1, set("a", "alpha")),
        request(2, get("a")),
        request(3, get("missing")),
        request(4, set("n", "not a number")),
        request(
            5,
            Op::Incr(v1::IncrRequest {
                key: "n".into(),
                delta: 1,
                ..Default::default()
            }),
        ),
        request(6, get("")),
        PipelineRequest { tag: 7, op: None },
        request(
            8,
            Op::MGet(v1::MGetRequest {
                keys: vec!["a".into(), "missing".into()],
                consistency: 0,
                tracking_id: 0,
            }),
        ),
    ];
    tx.send(PipelineRequestBatch { requests: first })
        .await
        .unwrap();
    let got = answers(&mut inbound, 8).await;
    let Answer::Set(stored) = &got[&1] else {
        panic!("{:?}", got[&1])
    };
    assert!(stored.stored);
    let Answer::Get(hit) = &got[&2] else {
        panic!("{:?}", got[&2])
    };
    assert!(hit.found);
    assert_eq!(hit.value, Bytes::from("alpha"));
    assert_eq!(hit.version, stored.version);
    let Answer::Get(miss) = &got[&3] else {
        panic!("{:?}", got[&3])
    };
    assert!(!miss.found);
    assert_eq!(
        error_code(&got[&5]),
        Code::InvalidArgument,
        "not an integer"
    );
    assert_eq!(error_code(&got[&6]), Code::InvalidArgument, "empty key");
    assert_eq!(error_code(&got[&7]), Code::InvalidArgument, "no operation");
    let Answer::MGet(both) = &got[&8] else {
        panic!("{:?}", got[&8])
    };
    assert_eq!(
        both.results.iter().map(|r| r.found).collect::<Vec<_>>(),
        [true, false]
    );

    // A compare-and-set conflict carries the current version, like the unary metadata.
    tx.send(PipelineRequestBatch {
        requests: vec![request(
            9,
            Op::CompareAndSet(v1::CompareAndSetRequest {
                key: "a".into(),
                expected_version: stored.version + 1,
                value: "beta".into(),
                ..Default::default()
            }),
        )],
    })
    .await
    .unwrap();
    let got = answers(&mut inbound, 1).await;
    let Answer::Error(conflict) = &got[&9] else {
        panic!("{:?}", got[&9])
    };
    assert_eq!(Code::from(conflict.code), Code::FailedPrecondition);
    assert_eq!(conflict.current_version, Some(stored.version));

    // The node counts streams, batches and requests.
    let metrics = ringcache_tests::http_get(node.http_addr, "/metrics")
        .await
        .unwrap()
        .body;
    for needle in [
        "ringcache_pipeline_streams 1",
        "ringcache_pipeline_batches_total 2",
        "ringcache_pipeline_requests_total 9",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }

    // Closing the request side ends the answers too.
    drop(tx);
    let end = tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("the stream ends");
    assert!(matches!(end, Ok(None)), "{end:?}");
    node.stop().await.unwrap();
}

#[tokio::test]
async fn max_batch_keys_bounds_each_request_and_only_an_oversized_batch_ends_the_stream() {
    let node = TestNode::start(config_with(Settings {
        max_batch_keys: Some(4),
        ..Settings::default()
    }))
    .await;

    // A pipeline batch may hold more requests than max_batch_keys; each multi-key request in it
    // still obeys the limit.
    let (tx, mut inbound) = open(&node).await;
    let mut requests: Vec<PipelineRequest> = (0..5).map(|tag| request(tag, get("k"))).collect();
    requests.push(request(
        5,
        Op::MGet(v1::MGetRequest {
            keys: (0..5).map(|i| Bytes::from(format!("k{i}"))).collect(),
            consistency: 0,
            tracking_id: 0,
        }),
    ));
    tx.send(PipelineRequestBatch { requests }).await.unwrap();
    let got = answers(&mut inbound, 6).await;
    assert!((0..5).all(|tag| matches!(got[&tag], Answer::Get(_))));
    assert_eq!(error_code(&got[&5]), Code::InvalidArgument, "{:?}", got[&5]);

    // The typed client batches up to 256 requests whatever the node's max_batch_keys.
    let client = Client::connect([node.grpc_target()]).await.unwrap();
    let writes = (0..300).map(|i| client.set(format!("c{i}"), "v"));
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }

    // A batch over the stream's limit is not run: the stream ends with a status.
    let oversized = (0..=4096).map(|tag| request(tag, get("k"))).collect();
    tx.send(PipelineRequestBatch {
        requests: oversized,
    })
    .await
    .unwrap();
    let status = match tokio::time::timeout(PATIENCE, inbound.message())
        .await
        .expect("the stream ends")
    {
        Ok(Some(batch)) => panic!("no answers expected, got {batch:?}"),
        Ok(None) => panic!("the stream must end with a status"),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("more than 4096"), "{status}");

    // The node keeps serving, on a new stream.
    let (tx, mut inbound) = open(&node).await;
    tx.send(PipelineRequestBatch {
        requests: vec![request(1, get("k"))],
    })
    .await
    .unwrap();
    assert!(matches!(answers(&mut inbound, 1).await[&1], Answer::Get(_)));
    node.stop().await.unwrap();
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let node = TestNode::start(config_with(Settings::default())).await;
    let client = Client::connect([node.grpc_target()]).await.unwrap();
    client.set("k", "v").await.unwrap();
    let addr = node.grpc_addr;
    // The client's stream stays open; stopping waits for it to finish, not forever.
    tokio::time::timeout(PATIENCE, node.stop())
        .await
        .expect("the node stops with a pipeline stream open")
        .unwrap();
    // The stopped node's port is free: hold it, so no other test's node can take it while the
    // client tries, and drop every connection at once (a node that is gone).
    let holder = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("the stopped node's gRPC port {addr} is still bound: {e}"));
    let refuse = tokio::spawn(async move {
        while let Ok((connection, _)) = holder.accept().await {
            drop(connection);
        }
    });
    let answer = client.get("k").await;
    refuse.abort();
    match answer {
        Err(Error::Unavailable(_) | Error::Timeout { .. }) => {}
        other => panic!("expected the stopped node to be unavailable, got {other:?}"),
    }
}

/// Runs the same requests with pipelining on and off; both must see the same results.
#[tokio::test]
async fn pipelined_and_unary_clients_see_the_same_results_and_errors() {
    let node = TestNode::start(config_with(Settings {
        max_value_bytes: Some(ByteSize(1024)),
        ..Settings::default()
    }))
    .await;
    for pipelining in [true, false] {
        let client = Client::builder()
            .seeds([node.grpc_target()])
            .pipelining(pipelining)
            .connect()
            .await
            .unwrap();
        let prefix = if pipelining { "p" } else { "u" };
        let key = |k: &str| format!("{prefix}:{k}");

        // Many requests in flight at once: they share batches on the stream.
        let writes = (0..200).map(|i| client.set(key(&i.to_string()), format!("value-{i}")));
        for result in futures_util::future::join_all(writes).await {
            result.unwrap();
        }
        let reads = (0..200).map(|i| client.get(key(&i.to_string())));
        for (i, value) in futures_util::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            assert_eq!(value.unwrap(), Some(Bytes::from(format!("value-{i}"))));
        }
        let values = client
            .mget([key("1"), key("missing"), key("2")])
            .await
            .unwrap();
        assert_eq!(
            values,
            [
                Some(Bytes::from("value-1")),
                None,
                Some(Bytes::from("value-2"))
            ]
        );

        let version = client.set(key("cas"), "one").await.unwrap();
        match client
            .compare_and_set(key("cas"), version + 1, "two", None)
            .await
        {
            Err(Error::CasConflict { current_version }) => {
                assert_eq!(current_version, Some(version), "pipelining={pipelining}");
            }
            other => panic!("pipelining={pipelining}: {other:?}"),
        }
        assert!(matches!(
            client.set(key("big"), vec![0u8; 2048]).await,
            Err(Error::InvalidArgument(m)) if m.contains("max_value_bytes")
        ));
        client.set(key("text"), "abc").await.unwrap();
        assert!(matches!(
            client.incr(key("text"), 1).await,
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(client.incr(key("counter"), 5).await.unwrap(), 5);
        assert!(client.delete(key("counter")).await.unwrap());
        assert_eq!(client.get(key("counter")).await.unwrap(), None);
    }
    node.stop().await.unwrap();
}

#[tokio::test]
async fn response_batches_stay_within_the_message_limit_and_a_too_large_answer_fails_alone() {
    let node = TestNode::start(config_with(Settings {
        max_key_bytes: Some(ByteSize(1024)),
        max_value_bytes: Some(ByteSize(16 * 1024)),
        max_message_bytes: Some(ByteSize(64 * 1024)),
        ..Settings::default()
    }))
    .await;
    let client = Client::connect([node.grpc_target()]).await.unwrap();
    let value = Bytes::from(vec![b'v'; 10 * 1024]);
    let keys: Vec<String> = (0..12).map(|i| format!("big-{i}")).collect();
    for key in &keys {
        client.set(key.clone(), value.clone()).await.unwrap();
    }

    // Twelve answers of 10 KiB asked in one request batch: 120 KiB of answers, which used to
    // leave as one response batch over the 64 KiB limit and end the stream for every request.
    let (tx, mut inbound) = open(&node).await;
    let mut requests: Vec<PipelineRequest> = keys
        .iter()
        .enumerate()
        .map(|(tag, key)| {
            request(
                tag as u64,
                Op::Get(v1::GetRequest {
                    key: Bytes::from(key.clone()),
                    consistency: 0,
                    tracking_id: 0,
                }),
            )
        })
        .collect();
    // An MGet whose answer alone is over the limit: an error for it, not for the stream.
    requests.push(request(
        100,
        Op::MGet(v1::MGetRequest {
            keys: keys.iter().map(|k| Bytes::from(k.clone())).collect(),
            consistency: 0,
            tracking_id: 0,
        }),
    ));
    requests.push(request(101, get("missing")));
    tx.send(PipelineRequestBatch { requests }).await.unwrap();
    let mut got = HashMap::new();
    let mut batches = 0;
    while got.len() < 14 {
        let batch = tokio::time::timeout(PATIENCE, inbound.message())
            .await
            .expect("answers within the deadline")
            .expect("the stream stays up")
            .expect("the stream does not end");
        let values: usize = batch
            .responses
            .iter()
            .map(|r| match &r.result {
                Some(Answer::Get(get)) => get.value.len(),
                _ => 0,
            })
            .sum();
        assert!(
            values <= 64 * 1024,
            "a response batch with {values} bytes of values"
        );
        batches += 1;
        for response in batch.responses {
            got.insert(response.tag, response.result.unwrap());
        }
    }
    assert!(batches >= 2, "{batches} batches");
    for tag in 0..12 {
        assert!(
            matches!(&got[&tag], Answer::Get(r) if r.found && r.value == value),
            "tag {tag}"
        );
    }
    assert_eq!(error_code(&got[&100]), Code::OutOfRange);
    let Answer::Error(error) = &got[&100] else {
        unreachable!()
    };
    assert!(
        error.message.contains("max_message_bytes"),
        "{}",
        error.message
    );
    assert!(matches!(&got[&101], Answer::Get(r) if !r.found));

    // The stream still serves.
    tx.send(PipelineRequestBatch {
        requests: vec![request(200, get("big-0"))],
    })
    .await
    .unwrap();
    let after = answers(&mut inbound, 1).await;
    assert!(matches!(&after[&200], Answer::Get(r) if r.found));
    node.stop().await.unwrap();
}
