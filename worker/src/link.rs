//! The worker's link to its coordinator: a deadline on every RPC, HTTP/2 keepalive on the channel, and
//! patience. A coordinator that stops answering (not listening yet, frozen, partitioned, restarting) is
//! retried with backoff for a bounded time, then the worker gives up with an error that names the
//! coordinator and how long it waited, instead of hanging on a connection that still looks ESTABLISHED.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};
use tresnet_common::protocol::auth::AttachToken;
use tresnet_common::protocol::pb::coordinator_client::CoordinatorClient;
use tresnet_common::protocol::pb::{SubmitRequest, SubmitResponse};

/// Default `--rpc-timeout-ms`. The coordinator answers from memory in milliseconds; its slowest answer
/// is a Submit's, which waits for the journal write (a PUT to an object store, with that client's own
/// retries: seconds). 30 s never cuts a healthy but loaded coordinator, and notices a frozen one within
/// the default lease timeout.
pub const DEFAULT_RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `--coordinator-patience-ms`: rides out a coordinator that starts after its workers (a batch
/// scheduler starts them in any order), a rescheduled coordinator pod or a switch failing over (a minute
/// or two), yet frees a node whose coordinator is gone for good within minutes.
pub const DEFAULT_COORDINATOR_PATIENCE: Duration = Duration::from_secs(180);
/// TCP connect bound (never longer than the RPC deadline): a SYN that is not answered in this long on a
/// datacenter network went to a host that is down or partitioned.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// First pause between retries: a coordinator that is only starting up answers within a few of them.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between retries: a returning coordinator is noticed within this long, and a long outage
/// costs one failed attempt (and one log line) every few seconds.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Messages of a shard's result stream queued towards the transport: as many as the shard's own queue
/// in `process_shard`, so the stream is paced by the coordinator, not buffered here.
const SUBMIT_QUEUE: usize = 4;
/// The method whose request streams a whole shard and so has no per-request deadline, as the generated
/// client names it in [`tonic::GrpcMethod`].
const SUBMIT_METHOD: &str = "Submit";

/// The worker's `--rpc-timeout-ms` and `--coordinator-patience-ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkPolicy {
    /// Deadline of each unary RPC, and of a Submit's answer once its stream has been sent; the HTTP/2
    /// keepalive notices a dead connection within about as long, Submit streams included.
    pub rpc_timeout: Duration,
    /// How long a coordinator may stay silent before the worker gives up on it.
    pub patience: Duration,
}

impl Default for LinkPolicy {
    fn default() -> Self {
        LinkPolicy {
            rpc_timeout: DEFAULT_RPC_TIMEOUT,
            patience: DEFAULT_COORDINATOR_PATIENCE,
        }
    }
}

impl LinkPolicy {
    /// Connect bound, deadlines and keepalive on the coordinator's endpoint. A frozen process's kernel
    /// still ACKs TCP, so only an HTTP/2 PING, which the coordinator process answers itself, tells a
    /// frozen or partitioned coordinator from a slow one: one every half deadline, and the connection
    /// is dead when one goes unanswered for another half. Pings go on while idle, so a worker between
    /// RPCs notices too.
    pub fn configure(&self, endpoint: Endpoint) -> Endpoint {
        let half = self.rpc_timeout / 2;
        endpoint
            .connect_timeout(CONNECT_TIMEOUT.min(self.rpc_timeout))
            .http2_keep_alive_interval(half)
            .keep_alive_timeout(half)
            .keep_alive_while_idle(true)
    }
}

/// The client every worker RPC goes through.
pub type Client = CoordinatorClient<InterceptedService<Channel, Outgoing>>;

/// Stamps every outgoing RPC: the shared token, and the deadline on all but Submit, whose request is a
/// shard's whole result stream (as long as the shard takes to compute) and gets its deadline once the
/// stream is over ([`Submission`]). A deadline set on a request already is kept.
#[derive(Debug, Clone)]
pub struct Outgoing {
    token: AttachToken,
    deadline: Duration,
}

impl Outgoing {
    pub fn new(token: AttachToken, policy: &LinkPolicy) -> Self {
        Outgoing {
            token,
            deadline: policy.rpc_timeout,
        }
    }
}

impl Interceptor for Outgoing {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let mut req = self.token.call(req)?;
        let streaming = req
            .extensions()
            .get::<tonic::GrpcMethod>()
            .is_some_and(|m| m.method() == SUBMIT_METHOD);
        if !streaming && req.metadata().get("grpc-timeout").is_none() {
            req.set_timeout(self.deadline);
        }
        Ok(req)
    }
}

/// How a call failed, as far as waiting could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Nothing answered in time, or nothing listens yet: waiting may help.
    Silent,
    /// A connection broke (reset, closed mid-call). After the coordinator has answered once, it went
    /// away; before, something else most likely listens there (a TLS endpoint, for a plaintext worker)
    /// and waiting would only delay the error.
    Broken,
    /// An answer: the coordinator's own status, or a TLS handshake that failed. Waiting cannot help.
    Answered,
}

/// What the transport failure at the bottom of `err`'s source chain was, by its type and kind.
fn classify(err: &(dyn Error + 'static)) -> Failure {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<tonic::TimeoutExpired>() {
            return Failure::Silent;
        }
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            // The keepalive PING went unanswered.
            return Failure::Silent;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            return match io.kind() {
                ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable
                | AddrNotAvailable => Failure::Silent,
                ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected | UnexpectedEof => {
                    Failure::Broken
                }
                // InvalidData is how TLS handshake failures (certificates) surface.
                _ => Failure::Answered,
            };
        }
        next = e.source();
    }
    match err.downcast_ref::<Status>() {
        Some(s) if s.code() == Code::DeadlineExceeded => Failure::Silent,
        // A status made here from a transport failure carries that failure as its source (a closed
        // connection, an HTTP/2 error); the coordinator's own statuses carry none.
        Some(s) if s.source().is_some() => Failure::Broken,
        _ => Failure::Answered,
    }
}

/// `err` and its causes, each said once.
fn describe(err: &(dyn Error + 'static)) -> String {
    match err.downcast_ref::<Status>() {
        Some(s) => crate::agent::status_text(s),
        None => tresnet_common::error_text::with_causes(err.to_string(), err.source()),
    }
}

/// The coordinator stayed silent for the whole patience: the worker gives up on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "coordinator {url} did not answer for {:.1} s (--coordinator-patience-ms {}); giving up; last error: {last}",
    waited.as_secs_f64(),
    patience.as_millis()
)]
pub struct Unreachable {
    pub url: String,
    pub waited: Duration,
    pub patience: Duration,
    pub last: String,
}

/// Why [`Link::call`] has no answer.
#[derive(Debug)]
pub enum CallError<E> {
    /// The coordinator (or whatever listens at its address) answered with an error; retrying cannot
    /// change that.
    Refused(E),
    Unreachable(Unreachable),
}

/// The worker's connection state to one coordinator, shared by all its tasks: whether the coordinator
/// has ever answered, and whether the worker has given up on it (then every call fails at once).
#[derive(Debug, Clone)]
pub struct Link {
    url: Arc<str>,
    policy: LinkPolicy,
    answered: Arc<AtomicBool>,
    /// Set by SIGTERM: a worker told to stop does not wait out an outage.
    draining: Arc<AtomicBool>,
    lost: Arc<Mutex<Option<Unreachable>>>,
}

impl Link {
    pub fn new(url: &str, policy: LinkPolicy, draining: Arc<AtomicBool>) -> Self {
        Link {
            url: url.into(),
            policy,
            answered: Arc::new(AtomicBool::new(false)),
            draining,
            lost: Arc::new(Mutex::new(None)),
        }
    }

    pub fn policy(&self) -> &LinkPolicy {
        &self.policy
    }

    /// Why the worker gave up on the coordinator, once it has.
    pub fn lost(&self) -> Option<Unreachable> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether `err` is worth retrying, given what the coordinator has done so far.
    fn retryable(&self, err: &(dyn Error + 'static)) -> bool {
        match classify(err) {
            Failure::Silent => true,
            Failure::Broken => self.answered.load(Ordering::SeqCst),
            Failure::Answered => {
                self.answered.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// Runs the RPC `attempt` until the coordinator answers, retrying failures that mean it is silent
    /// or gone with backoff for at most the patience (counted from the first failure). A call that
    /// gives up makes every later call give up at once, so all of the worker's tasks stop together.
    pub async fn call<T, E, F, Fut>(&self, what: &str, attempt: F) -> Result<T, CallError<E>>
    where
        E: Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry(what, attempt, true).await
    }

    /// Like [`Link::call`] for opening the connection, whose success is no answer from the coordinator
    /// (whatever listens at its address accepts it: maybe a TLS endpoint for a plaintext worker).
    pub async fn connect<T, E, F, Fut>(&self, attempt: F) -> Result<T, CallError<E>>
    where
        E: Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.retry("connect", attempt, false).await
    }

    async fn retry<T, E, F, Fut>(
        &self,
        what: &str,
        mut attempt: F,
        success_is_an_answer: bool,
    ) -> Result<T, CallError<E>>
    where
        E: Error + 'static,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut failing_since: Option<Instant> = None;
        let mut pause = BACKOFF_FIRST;
        loop {
            if let Some(lost) = self.lost() {
                return Err(CallError::Unreachable(lost));
            }
            let started = Instant::now();
            let err = match attempt().await {
                Ok(v) => {
                    if success_is_an_answer {
                        self.answered.store(true, Ordering::SeqCst);
                    }
                    return Ok(v);
                }
                Err(e) => e,
            };
            if !self.retryable(&err) {
                return Err(CallError::Refused(err));
            }
            let waited = failing_since.get_or_insert(started).elapsed();
            if waited >= self.policy.patience || self.draining.load(Ordering::SeqCst) {
                return Err(CallError::Unreachable(self.give_up(waited, &err)));
            }
            tracing::warn!(
                coordinator = %self.url,
                call = what,
                waited_s = %format_args!("{:.1}", waited.as_secs_f64()),
                error = %describe(&err),
                "coordinator not answering; retrying"
            );
            tokio::time::sleep(pause.min(self.policy.patience - waited)).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }

    fn give_up(&self, waited: Duration, err: &(dyn Error + 'static)) -> Unreachable {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.get_or_insert_with(|| Unreachable {
            url: self.url.to_string(),
            waited,
            patience: self.policy.patience,
            last: describe(err),
        })
        .clone()
    }
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// A shard's Submit call, fed from `rx` as the shard's batches finish. Every message is kept, so a
/// stream that the transport cuts (a frozen or restarting coordinator) is sent again whole within the
/// patience: the coordinator keeps the first complete result of a shard and drops any later one as a
/// duplicate, so sending twice never counts twice. Dropping the submission before its stream has
/// ended cancels the call, so a shard abandoned halfway is never submitted.
pub struct Submission(AbortOnDrop<Result<Response<SubmitResponse>, Status>>);

impl Submission {
    pub fn start(link: Link, client: Client, rx: mpsc::Receiver<SubmitRequest>) -> Self {
        Submission(AbortOnDrop(tokio::spawn(submit(link, client, rx))))
    }
}

impl Future for Submission {
    type Output = Result<Result<Response<SubmitResponse>, Status>, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

async fn submit(
    link: Link,
    client: Client,
    mut rx: mpsc::Receiver<SubmitRequest>,
) -> Result<Response<SubmitResponse>, Status> {
    let (live_tx, live_rx) = mpsc::channel(SUBMIT_QUEUE);
    let mut first_client = client.clone();
    let stream =
        futures::stream::unfold(
            live_rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
    let mut first = AbortOnDrop(tokio::spawn(
        async move { first_client.submit(stream).await },
    ));
    let mut live = Some(live_tx);
    let mut kept = Vec::new();
    // The first attempt's outcome, if it ended while the stream was still being fed.
    let mut ended: Option<Result<Response<SubmitResponse>, Status>> = None;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { break };
                if let Some(tx) = &live
                    && tx.send(m.clone()).await.is_err()
                {
                    // The call is over; its outcome is picked up below.
                    live = None;
                }
                kept.push(m);
            }
            r = &mut first, if ended.is_none() => {
                let r = r.unwrap_or_else(|e| Err(Status::internal(format!("submit task failed: {e}"))));
                match &r {
                    // Cut by the transport: keep the messages coming, to send them again whole.
                    Err(s) if link.retryable(s) => {
                        live = None;
                        ended = Some(r);
                    }
                    // Answered before the end (a malformed batch, a job that is over): dropping `rx`
                    // stops the shard, which has nowhere to go.
                    _ => return r,
                }
            }
        }
    }
    drop(live);
    let outcome = match ended {
        Some(r) => r,
        // The stream is whole: what is left is the coordinator's check and journal write.
        None => match tokio::time::timeout(link.policy().rpc_timeout, first).await {
            Ok(r) => {
                r.unwrap_or_else(|e| Err(Status::internal(format!("submit task failed: {e}"))))
            }
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer to the shard's results within {:?} of sending them",
                link.policy().rpc_timeout
            ))),
        },
    };
    let err = match outcome {
        Ok(r) => return Ok(r),
        Err(e) if !link.retryable(&e) => return Err(e),
        Err(e) => e,
    };
    tracing::warn!(error = %describe(&err), "submitting a shard's results failed on the transport; sending them again");
    let deadline = link.policy().rpc_timeout;
    let again = link
        .call("submit", || {
            let mut client = client.clone();
            let mut req = Request::new(futures::stream::iter(kept.clone()));
            req.set_timeout(deadline);
            async move { client.submit(req).await }
        })
        .await;
    match again {
        Ok(r) => Ok(r),
        Err(CallError::Refused(s)) => Err(s),
        Err(CallError::Unreachable(u)) => Err(Status::unavailable(u.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_type_not_text() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify(&refused), Failure::Silent);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(classify(&reset), Failure::Broken);
        let tls = std::io::Error::new(std::io::ErrorKind::InvalidData, "UnknownIssuer");
        assert_eq!(classify(&tls), Failure::Answered);
        assert_eq!(classify(&tonic::TimeoutExpired(())), Failure::Silent);
        // The coordinator's own answers carry no transport cause.
        assert_eq!(
            classify(&Status::failed_precondition("not registered")),
            Failure::Answered
        );
        assert_eq!(classify(&Status::unavailable("busy")), Failure::Answered);
        assert_eq!(
            classify(&Status::deadline_exceeded("late")),
            Failure::Silent
        );
        // A status made from a transport failure keeps it as its source.
        let from_transport = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::BrokenPipe,
        )));
        assert_eq!(classify(&from_transport), Failure::Broken);
    }

    #[tokio::test]
    async fn a_silent_coordinator_is_retried_for_the_patience_then_given_up_on() {
        let policy = LinkPolicy {
            rpc_timeout: Duration::from_millis(100),
            patience: Duration::from_secs(1),
        };
        let link = Link::new("http://x:1", policy, Arc::new(AtomicBool::new(false)));
        let start = Instant::now();
        let mut attempts = 0;
        let r: Result<(), CallError<std::io::Error>> = link
            .call("probe", || {
                attempts += 1;
                async { Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) }
            })
            .await;
        let Err(CallError::Unreachable(u)) = r else {
            panic!("expected to give up");
        };
        assert!(u.waited >= policy.patience, "{u}");
        // The last pause is cut to what is left of the patience.
        assert!(start.elapsed() < policy.patience * 2, "{u}");
        assert!(attempts > 3, "{attempts} attempts");
        let msg = u.to_string();
        assert!(msg.contains("http://x:1") && msg.contains("1000"), "{msg}");
        // Every later call gives up at once.
        let again: Result<(), CallError<std::io::Error>> =
            link.call("probe", || async { Ok(()) }).await;
        assert!(matches!(again, Err(CallError::Unreachable(_))));
    }

    #[tokio::test]
    async fn a_broken_connection_is_retried_only_after_a_first_answer() {
        let link = Link::new(
            "http://x:1",
            LinkPolicy::default(),
            Arc::new(AtomicBool::new(false)),
        );
        let reset =
            || async { Err::<(), _>(std::io::Error::from(std::io::ErrorKind::ConnectionReset)) };
        assert!(matches!(
            link.call("probe", reset).await,
            Err(CallError::Refused(_))
        ));
        link.call("probe", || async { Ok::<_, std::io::Error>(()) })
            .await
            .map_err(|_| ())
            .unwrap();
        let mut failures = 2;
        let flaky = link
            .call("probe", || {
                failures -= 1;
                let fail = failures >= 0;
                async move {
                    if fail {
                        Err(std::io::Error::from(std::io::ErrorKind::ConnectionReset))
                    } else {
                        Ok(7)
                    }
                }
            })
            .await;
        assert!(matches!(flaky, Ok(7)));
    }
}
