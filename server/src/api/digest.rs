//! A tower layer that stamps every gRPC response with the node's topology digest
//! ([`ringcache_proto::TOPOLOGY_DIGEST_METADATA`]), so a client notices at once when its topology
//! is stale, whatever it called and whether the call failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use ringcache_proto::TOPOLOGY_DIGEST_METADATA;
use tonic::codegen::http::{HeaderName, HeaderValue, Request, Response};
use tower::{Layer, Service};

/// Adds the digest header; see the module docs.
#[derive(Debug, Clone)]
pub struct DigestLayer {
    digest: Arc<AtomicU64>,
}

impl DigestLayer {
    /// A layer reading the current digest from `digest`.
    pub fn new(digest: Arc<AtomicU64>) -> Self {
        Self { digest }
    }
}

impl<S> Layer<S> for DigestLayer {
    type Service = DigestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DigestService {
            inner,
            digest: self.digest.clone(),
        }
    }
}

/// The service of [`DigestLayer`].
#[derive(Debug, Clone)]
pub struct DigestService<S> {
    inner: S,
    digest: Arc<AtomicU64>,
}

impl<S, B, RB> Service<Request<B>> for DigestService<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        let digest = self.digest.clone();
        Box::pin(async move {
            let mut response = future.await?;
            // Read after the handler ran: a request that changed the topology reports the new one.
            let value = HeaderValue::from(digest.load(Ordering::Acquire));
            response
                .headers_mut()
                .insert(HeaderName::from_static(TOPOLOGY_DIGEST_METADATA), value);
            Ok(response)
        })
    }
}
