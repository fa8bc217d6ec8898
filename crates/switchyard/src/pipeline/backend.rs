//! The pipeline as a classifier's backend: a call to the fleet runs in-process through
//! the same phases as a client's request (worker selection, retries, metrics), on the
//! permit of the request being classified; a call to a remote endpoint is one POST.

use std::time::Instant;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Full, Limited};

use super::{Admitted, Pipeline, RequestContext};
use crate::request::Route;
use crate::selection::classify::{Backend, ClassifyError, Endpoint};
use crate::upstream;

/// Largest answer a classifier reads.
const LIMIT: usize = 16 << 20;

impl Backend for Pipeline {
    fn post<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        route: Route,
        body: Bytes,
    ) -> BoxFuture<'a, Result<Bytes, ClassifyError>> {
        Box::pin(async move {
            let (status, body) = match endpoint {
                Endpoint::Fleet => {
                    let mut headers = HeaderMap::new();
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    let ctx = RequestContext {
                        route,
                        request_id: self.request_id(&HeaderMap::new()),
                        start: Instant::now(),
                        headers,
                        body,
                        admitted: Admitted::on_behalf(),
                        caller: self.tenancy.internal(),
                        trace: crate::telemetry::current(),
                    };
                    let resp = self.run(ctx).await;
                    let status = resp.status();
                    let bytes = Limited::new(resp.into_body(), LIMIT)
                        .collect()
                        .await
                        .map_err(|e| ClassifyError::backend(e.to_string()))?
                        .to_bytes();
                    (status, bytes)
                }
                Endpoint::Remote { url, api_key } => {
                    let mut req = Request::post(url.uri(route.path()))
                        .header(header::CONTENT_TYPE, "application/json");
                    if let Some(k) = api_key {
                        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
                    }
                    let req = req
                        .body(Full::new(body))
                        .map_err(|e| ClassifyError::backend(e.to_string()))?;
                    upstream::fetch(&upstream::local(), req, self.dispatcher.cfg.timeout, LIMIT)
                        .await
                        .map_err(|e| ClassifyError::backend(e.to_string()))?
                }
            };
            if !status.is_success() {
                let excerpt = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(ClassifyError::backend(format!("{status}: {excerpt}")));
            }
            Ok(body)
        })
    }
}
