//! One configurable fake `Cache` service for the client's tests: a fake node implements
//! [`FakeCache`] for the calls it scripts, and every other call answers UNIMPLEMENTED (as a
//! node too old for it would). [`Served`] turns it into the generated `Cache` service.
//!
//! (The generated trait has no default methods: the committed code is generated without
//! default stubs, so this is where the UNIMPLEMENTED answers live, once.)

use std::sync::Arc;

use ringcache_proto::v1::{
    self as pb,
    cache_server::{Cache, CacheServer},
};
use tonic::{Request, Response, Status, Streaming, codegen::BoxStream};

/// What one call of a fake node answers.
pub(crate) type Reply<T> = Result<Response<T>, Status>;

/// The UNIMPLEMENTED answer of a call the fake does not script.
pub(crate) fn unimplemented<T>(call: &str) -> Reply<T> {
    Err(Status::unimplemented(format!(
        "{call}: not on this fake node"
    )))
}

macro_rules! fake_cache {
    ($($method:ident($request:ty) -> $response:ty, $name:literal;)*) => {
        /// A fake node's `Cache` calls; each one it does not override answers UNIMPLEMENTED.
        #[tonic::async_trait]
        pub(crate) trait FakeCache: Send + Sync + 'static {
            $(
                async fn $method(&self, _request: Request<$request>) -> Reply<$response> {
                    unimplemented($name)
                }
            )*
        }

        #[tonic::async_trait]
        impl<F: FakeCache> Cache for Served<F> {
            type PipelineStream = BoxStream<pb::PipelineResponseBatch>;
            type InvalidationsStream = BoxStream<pb::InvalidationBatch>;

            $(
                async fn $method(&self, request: Request<$request>) -> Reply<$response> {
                    self.0.$method(request).await
                }
            )*
        }
    };
}

fake_cache! {
    get(pb::GetRequest) -> pb::GetResponse, "Get";
    set(pb::SetRequest) -> pb::SetResponse, "Set";
    delete(pb::DeleteRequest) -> pb::DeleteResponse, "Delete";
    m_get(pb::MGetRequest) -> pb::MGetResponse, "MGet";
    m_set(pb::MSetRequest) -> pb::MSetResponse, "MSet";
    m_delete(pb::MDeleteRequest) -> pb::MDeleteResponse, "MDelete";
    incr(pb::IncrRequest) -> pb::IncrResponse, "Incr";
    compare_and_set(pb::CompareAndSetRequest) -> pb::CompareAndSetResponse, "CompareAndSet";
    expire(pb::ExpireRequest) -> pb::ExpireResponse, "Expire";
    persist(pb::PersistRequest) -> pb::PersistResponse, "Persist";
    ttl(pb::TtlRequest) -> pb::TtlResponse, "Ttl";
    update(pb::UpdateRequest) -> pb::UpdateResponse, "Update";
    get_or_lease(pb::GetOrLeaseRequest) -> pb::GetOrLeaseResponse, "GetOrLease";
    pipeline(Streaming<pb::PipelineRequestBatch>) -> BoxStream<pb::PipelineResponseBatch>, "Pipeline";
    invalidations(pb::InvalidationsRequest) -> BoxStream<pb::InvalidationBatch>, "Invalidations";
}

/// A [`FakeCache`] served as the generated `Cache` service.
pub(crate) struct Served<F>(pub(crate) Arc<F>);

/// The `Cache` server of `fake`.
pub(crate) fn cache_server<F: FakeCache>(fake: Arc<F>) -> CacheServer<Served<F>> {
    CacheServer::new(Served(fake))
}
