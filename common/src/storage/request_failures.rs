//! Counts the object-store requests that failed for a reason of the environment (5xx, 429, a transport
//! error, a body cut midway): object_store retries them silently, and a run's report must still show
//! that the store misbehaved even when every retry succeeded.
//!
//! Every remote store built by [`super::StorageLocation::parse`] sends its requests through
//! [`CountingConnector`]. Each failure is added to a process-wide total (for `/metrics`) and, when the
//! request runs inside [`counted`], to that scope's counter, so a worker can report the failures of
//! one shard with that shard's result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::BodyExt;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService, ReqwestConnector,
};

static TOTAL: AtomicU64 = AtomicU64::new(0);

tokio::task_local! {
    static SCOPE: Arc<AtomicU64>;
}

/// Failed store requests of this process so far.
pub fn total() -> u64 {
    TOTAL.load(Ordering::Relaxed)
}

/// Runs `fut` with its store requests' failures also added to `counter`.
pub async fn counted<F: Future>(counter: Arc<AtomicU64>, fut: F) -> F::Output {
    SCOPE.scope(counter, fut).await
}

fn record(scope: Option<&Arc<AtomicU64>>) {
    TOTAL.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = scope {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Whether a response status is one that object_store retries as a fault of the server side: any 5xx,
/// and 429 (throttling). 4xx answers are about the request (missing object, credentials) and are
/// classified, not retried.
fn is_failure(status: u16) -> bool {
    status >= 500 || status == 429
}

/// object_store's own reqwest connector with every request's outcome counted.
#[derive(Debug, Default, Clone, Copy)]
pub struct CountingConnector;

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService { inner }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
}

#[async_trait::async_trait]
impl HttpService for CountingService {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        // Read here, in the caller's task: the body may be polled later, but by the same caller.
        let scope = SCOPE.try_with(Arc::clone).ok();
        match self.inner.execute(req).await {
            Ok(resp) if is_failure(resp.status().as_u16()) => {
                record(scope.as_ref());
                Ok(resp)
            }
            Ok(resp) => {
                // A body that breaks off midway is a failure too; object_store resumes it with a
                // ranged request, so only this wrapper sees it happen.
                let (parts, body) = resp.into_parts();
                let body = body.map_err(move |e| {
                    record(scope.as_ref());
                    e
                });
                Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
            }
            Err(e) => {
                record(scope.as_ref());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_and_throttling_count_client_errors_do_not() {
        for s in [500, 502, 503, 504, 429] {
            assert!(is_failure(s), "{s}");
        }
        for s in [200, 206, 304, 400, 401, 403, 404, 412] {
            assert!(!is_failure(s), "{s}");
        }
    }

    #[tokio::test]
    async fn failures_inside_a_scope_reach_its_counter_and_the_total() {
        let c = Arc::new(AtomicU64::new(0));
        let before = total();
        counted(c.clone(), async {
            record(SCOPE.try_with(Arc::clone).ok().as_ref())
        })
        .await;
        record(None);
        assert_eq!(c.load(Ordering::Relaxed), 1);
        assert!(total() >= before + 2);
    }
}
