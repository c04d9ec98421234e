//! Tracing spans of the client's calls, through a capturing subscriber layer. Alone in its test
//! binary: `tracing` caches each callsite's interest process-wide, and a test in the same
//! process that hits the client's callsites while this one installs its subscriber can leave a
//! callsite cached as uninteresting, so spans would go missing at random.

mod common;

use std::collections::BTreeMap;

use common::{Harness, MEMBER_ADDR};

mod spans {
    use std::{
        collections::BTreeMap,
        sync::{Arc, Mutex},
    };

    use tracing::{
        Subscriber,
        field::{Field, Visit},
        span::{Attributes, Id, Record},
    };
    use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

    /// A span's name and fields (values as text).
    pub(super) type SpanFields = (String, BTreeMap<String, String>);

    /// Every span, in creation order.
    #[derive(Clone, Default)]
    pub(super) struct Captured(pub(super) Arc<Mutex<Vec<SpanFields>>>);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.insert(field.name().to_owned(), format!("{value:?}"));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.insert(field.name().to_owned(), value.to_owned());
        }
    }

    /// Where a span's fields are, in [`Captured`].
    struct Index(usize);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            let mut spans = self.0.lock().unwrap();
            spans.push((attrs.metadata().name().to_owned(), fields));
            if let Some(span) = ctx.span(id) {
                span.extensions_mut().insert(Index(spans.len() - 1));
            }
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
            let Some(span) = ctx.span(id) else {
                return;
            };
            let Some(Index(index)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
                return;
            };
            values.record(&mut Fields(&mut self.0.lock().unwrap()[index].1));
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn each_call_has_a_span_with_the_node_and_the_key_hash_never_the_key() {
    use tracing_subscriber::layer::SubscriberExt;

    let captured = spans::Captured::default();
    let subscriber = tracing_subscriber::registry().with(captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let harness = Harness::start().await;
    let client = harness.client().await;
    let key = "user:secret-42";
    client.get(key).await.unwrap();
    harness.fake.fail_next(1);
    client.set(key, "v").await.unwrap();
    client.mget(["a", "b", "c"]).await.unwrap();

    let spans = captured.0.lock().unwrap().clone();
    let requests: Vec<&BTreeMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "ringcache.request")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(requests.len(), 3, "{spans:?}");
    let slot = ringcache_proto::placement::key_slot(key.as_bytes()).to_string();
    let hash = format!(
        "{:016x}",
        ringcache_proto::placement::key_hash(key.as_bytes())
    );

    let get = requests[0];
    assert_eq!(get["op"], "get");
    assert_eq!(get["key_slot"], slot);
    assert_eq!(get["key_hash"], hash);
    assert_eq!(get["node"], "n1", "the member that answered");
    assert_eq!(get["attempts"], "1");
    assert_eq!(get["outcome"], "ok");

    let set = requests[1];
    assert_eq!((set["op"].as_str(), set["attempts"].as_str()), ("set", "2"));
    assert_eq!(set["key_hash"], hash);

    let mget = requests[2];
    assert_eq!((mget["op"].as_str(), mget["keys"].as_str()), ("mget", "3"));
    assert!(!mget.contains_key("key_hash"));

    let attempts: Vec<&BTreeMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "ringcache.attempt")
        .map(|(_, fields)| fields)
        .collect();
    assert_eq!(attempts.len(), 4, "get, set twice, mget");
    for attempt in &attempts {
        assert_eq!(attempt["node"], "n1");
        assert_eq!(attempt["addr"], MEMBER_ADDR);
    }
    assert_eq!(attempts[2]["attempt"], "2", "the retry of the set");

    for (name, fields) in &spans {
        for value in fields.values() {
            assert!(
                !value.contains("secret"),
                "the key leaked into {name}: {fields:?}"
            );
        }
    }
}
