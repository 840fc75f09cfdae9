//! The loopback transport: how the control loops that run inside `skiff server` (scheduler,
//! controller manager) reach its API. A request goes to the same router, authorization,
//! admission, validation and watch code as any client's, as a fixed user; only the socket, TLS
//! and HTTP framing are skipped, which on a busy control plane were a third of the server's
//! CPU. It is a `tower::Service`, so `kube::Client::new` takes it as its transport.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Limited};

use crate::auth::UserInfo;
use crate::error::ApiError;
use crate::http::{Body, MAX_BODY, Req, error};
use crate::server::ApiServer;

/// A transport into `server` as `user`, sending `user_agent` when a request has none (upstream
/// derives the default field manager from it).
#[derive(Clone)]
pub struct Loopback {
    server: Arc<ApiServer>,
    user: UserInfo,
    user_agent: http::HeaderValue,
}

impl Loopback {
    /// A transport for the component `name` (e.g. `kube-scheduler`), authenticated as
    /// `system:<name>` like upstream's component identities.
    pub fn new(server: Arc<ApiServer>, name: &str) -> Self {
        let user = UserInfo {
            name: format!("system:{name}"),
            uid: String::new(),
            groups: vec!["system:authenticated".into()],
        };
        let user_agent = http::HeaderValue::from_str(&format!("{name}/v1.33.0 (skiff)"))
            .unwrap_or_else(|_| http::HeaderValue::from_static("skiff"));
        Loopback {
            server,
            user,
            user_agent,
        }
    }

    async fn handle<B>(self, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (mut parts, body) = req.into_parts();
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return if e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    error(&ApiError::too_large())
                } else {
                    error(&ApiError::bad_request(format!(
                        "reading the request body failed: {e}"
                    )))
                };
            }
        };
        if !parts.headers.contains_key(header::USER_AGENT) {
            parts
                .headers
                .insert(header::USER_AGENT, self.user_agent.clone());
        }
        let req = Req {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: crate::request::Query::parse(parts.uri.query()),
            headers: parts.headers,
            body,
            user: self.user.clone(),
            upgrade: None,
        };
        self.server.route(req).await
    }
}

impl<B> tower_service::Service<Request<B>> for Loopback
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}
