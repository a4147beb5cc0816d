//! Best-effort notification of approval events to a Slack-compatible webhook:
//! one HTTP/1.1 POST of JSON (`text` for chat tools, plus the structured
//! request). Deliveries run on their own task with a short timeout; a failure
//! is logged and never delays or changes a decision.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, Uri, body::Bytes, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Request;

pub struct Webhook {
    uri: Uri,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("the webhook answered {0}")]
    Status(hyper::StatusCode),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The chat line for an event.
pub fn text(event: &str, r: &Request) -> String {
    match event {
        "approval_requested" => format!(
            "interceptor: approval needed ({id}): {who} wants to run `{op}` on {target} (rule `{rule}`: {reason}). \
             Approve: `interceptor approvals approve {id}`; deny: `interceptor approvals deny {id} --reason ...`",
            id = r.id,
            who = r.identity,
            op = r.operation,
            target = r.target,
            rule = r.rule,
            reason = r.rule_reason,
        ),
        _ => format!(
            "interceptor: approval {} {} by {}{}: `{}` by {} on {}",
            r.id,
            r.state.as_str(),
            r.decided_by.as_deref().unwrap_or("the daemon"),
            r.reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            r.operation,
            r.identity,
            r.target,
        ),
    }
}

impl Webhook {
    pub fn new(uri: Uri, timeout: Duration) -> Self {
        Webhook { uri, timeout }
    }

    /// Sends the event in the background.
    pub fn notify(&self, event: &'static str, r: &Request) {
        let body = serde_json::json!({
            "text": text(event, r),
            "event": event,
            "request": r,
        })
        .to_string();
        let uri = self.uri.clone();
        let timeout = self.timeout;
        let id = r.id.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(timeout, deliver(&uri, body)).await {
                Ok(Ok(())) => debug!(id, event, "webhook delivered"),
                Ok(Err(e)) => {
                    warn!(id, event, webhook = %uri, error = %e, "webhook delivery failed")
                }
                Err(_) => warn!(
                    id,
                    event,
                    webhook = %uri,
                    error = %DeliveryError::Timeout(timeout),
                    "webhook delivery failed"
                ),
            }
        });
    }
}

async fn deliver(uri: &Uri, body: String) -> Result<(), DeliveryError> {
    // Checked when the configuration was read: http with an authority.
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let port = uri.port_u16().unwrap_or(80);
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(DeliveryError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "webhook connection");
        }
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = HttpRequest::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    // Read the answer so the server sees a complete exchange.
    let _ = resp.into_body().collect().await;
    if !status.is_success() {
        return Err(DeliveryError::Status(status));
    }
    Ok(())
}
