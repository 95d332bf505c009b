//! Shared-token authentication of every RPC: `authorization: Bearer <token>` metadata, compared in
//! constant time, checked by a tonic interceptor on the coordinator and attached by one on workers.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// Environment variable holding the shared token (read by coordinator and workers alike).
pub const TOKEN_ENV: &str = "TRESNET_TOKEN";

/// The token from `--token-file` if given, else from `$TRESNET_TOKEN`; `None` means auth is off.
pub fn load_token(file: Option<&Path>) -> Result<Option<String>, String> {
    let token = match file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read token file {}: {e}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()),
    };
    match token {
        Some(t) if t.is_empty() => Err("the shared token is empty".into()),
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            Err("the shared token must be printable ASCII without spaces".into())
        }
        t => Ok(t),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server side: refuses requests without the right bearer token.
#[derive(Clone, Debug)]
pub struct CheckToken {
    pub expected: Option<String>,
}

impl tonic::service::Interceptor for CheckToken {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(req);
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match got {
            Some(t) if constant_time_eq(t.as_bytes(), expected.as_bytes()) => Ok(req),
            Some(_) => Err(Status::unauthenticated(
                "wrong token (check TRESNET_TOKEN / --token-file)",
            )),
            None => Err(Status::unauthenticated(
                "this coordinator requires a token: set TRESNET_TOKEN or pass --token-file",
            )),
        }
    }
}

/// Client side: attaches the bearer token, if any, to every request.
#[derive(Clone, Debug)]
pub struct AttachToken {
    header: Option<MetadataValue<tonic::metadata::Ascii>>,
}

/// A token that cannot travel in an HTTP header (control characters, non-ASCII).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the token is not a valid header value")]
pub struct InvalidToken;

impl AttachToken {
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        let header = token
            .map(|t| format!("Bearer {t}").parse().map_err(|_| InvalidToken))
            .transpose()?;
        Ok(AttachToken { header })
    }
}

impl tonic::service::Interceptor for AttachToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    fn req(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn no_wrong_and_right_tokens() {
        let mut check = CheckToken {
            expected: Some("s3cret".into()),
        };
        let e = check.call(req(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("requires a token"));
        let e = check.call(req(Some("guess"))).unwrap_err();
        assert!(e.message().contains("wrong token"));
        assert!(check.call(req(Some("s3cret"))).is_ok());
        let mut open = CheckToken { expected: None };
        assert!(open.call(req(None)).is_ok());
        let mut attach = AttachToken::new(Some("s3cret")).unwrap();
        assert!(check.call(attach.call(Request::new(())).unwrap()).is_ok());
    }
}
