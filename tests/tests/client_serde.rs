//! The client's `serde` feature against a real node: typed values stored as JSON, read back,
//! batched, and refused clearly when a stored value is not JSON of the requested type.

use std::time::Duration;

use ringcache::{Client, Error, KeyTtl, SetOptions};
use ringcache_tests::TestNode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Session {
    user: String,
    roles: Vec<String>,
    visits: u32,
}

fn session(user: &str, visits: u32) -> Session {
    Session {
        user: user.to_owned(),
        roles: vec!["reader".to_owned()],
        visits,
    }
}

#[tokio::test]
async fn typed_values_round_trip_as_json() {
    let node = TestNode::start_default().await;
    let client = Client::connect([node.grpc_target()]).await.unwrap();

    let ada = session("ada", 3);
    client.set_json("session:ada", &ada).await.unwrap();
    assert_eq!(
        client.get_json::<Session>("session:ada").await.unwrap(),
        Some(ada.clone())
    );
    // Stored as plain JSON text, readable by any client.
    let raw = client.get("session:ada").await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["user"],
        "ada"
    );
    assert_eq!(
        client.get_json::<Session>("session:none").await.unwrap(),
        None
    );

    client
        .set_json_ex("session:bob", &session("bob", 1), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(matches!(
        client.ttl("session:bob").await.unwrap(),
        KeyTtl::ExpiresIn(_)
    ));
    let outcome = client
        .set_json_with(
            "session:ada",
            &session("eve", 0),
            SetOptions::new().if_absent(),
        )
        .await
        .unwrap();
    assert!(!outcome.stored, "if_absent keeps ada's session");

    let all: Vec<Option<Session>> = client
        .mget_json(["session:bob", "session:none", "session:ada"])
        .await
        .unwrap();
    assert_eq!(all, vec![Some(session("bob", 1)), None, Some(ada)]);

    // Plain types and collections too.
    client.set_json("numbers", &[1u64, 2, 3]).await.unwrap();
    assert_eq!(
        client.get_json::<Vec<u64>>("numbers").await.unwrap(),
        Some(vec![1, 2, 3])
    );
    node.stop().await.unwrap();
}

#[tokio::test]
async fn a_value_of_another_shape_is_a_codec_error_naming_the_key() {
    let node = TestNode::start_default().await;
    let client = Client::connect([node.grpc_target()]).await.unwrap();
    client.set("plain", "not json at all").await.unwrap();
    client.set_json("count", &7u32).await.unwrap();

    let error = client.get_json::<Session>("plain").await.unwrap_err();
    assert!(
        matches!(&error, Error::Codec(m) if m.contains("\"plain\"")),
        "{error:?}"
    );
    assert_eq!(error.kind(), "codec");
    assert!(!error.is_retryable());
    let error = client
        .mget_json::<Session, _>(["missing", "count"])
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::Codec(m) if m.contains("\"count\"")),
        "{error:?}"
    );

    // A value serde cannot encode is refused before anything is sent.
    let mut bad = std::collections::HashMap::new();
    bad.insert((1, 2), "tuple keys are not json object keys");
    let error = client.set_json("bad", &bad).await.unwrap_err();
    assert!(
        matches!(&error, Error::Codec(m) if m.contains("\"bad\"")),
        "{error:?}"
    );
    assert_eq!(client.get("bad").await.unwrap(), None);
    node.stop().await.unwrap();
}
