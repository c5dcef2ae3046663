//! Who may send webhooks. Each check is optional; every configured one must
//! pass. The checks that need only the connection and the headers run before
//! the body is read ([`Guard::check_request`]); the signature, which covers
//! the raw body, runs after ([`Guard::check_body`]).
//!
//! A refusal tells the sender only "401" or "403", never which check failed,
//! so probing one check at a time teaches an attacker nothing; the
//! [`Denial`] goes to the logs and to a metric for the operator.

pub mod config;
pub mod reload;

mod basic;
mod shared_secret;
mod signature;
mod source;

use std::net::IpAddr;
use std::time::SystemTime;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use basic::BasicAuth;
pub use reload::{AuthReloader, LiveGuard, SecretFiles};
pub use shared_secret::SharedSecret;
pub use signature::{Signature, SignatureEncoding};
pub use source::{Cidr, SourceFilter};

named_enum! {
    /// Why a request was refused. Bounded: also the `reason` label of
    /// `apizee_bridge_auth_failures_total`.
    pub enum Denial {
        /// The client address is outside `--allow-cidr`.
        SourceNotAllowed => "source_not_allowed",
        /// The User-Agent is not the one `--require-user-agent` names.
        UserAgent => "user_agent",
        /// The shared-secret header is missing or holds no configured token.
        SharedSecret => "shared_secret",
        /// HTTP Basic credentials are missing or wrong.
        BasicAuth => "basic_auth",
        /// The HMAC signature is missing, malformed or does not match the body.
        Signature => "signature",
        /// The signed timestamp is missing, malformed or outside the tolerance.
        Timestamp => "timestamp",
    }
}

impl Denial {
    /// 403 for who the client is (where it connects from, what it says it
    /// is), 401 for credentials it could correct.
    pub fn is_forbidden(self) -> bool {
        matches!(self, Denial::SourceNotAllowed | Denial::UserAgent)
    }
}

/// Every configured check; the default allows everything.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub source: Option<SourceFilter>,
    /// The User-Agent must start with this text.
    pub user_agent: Option<String>,
    pub shared_secret: Option<SharedSecret>,
    pub basic: Option<BasicAuth>,
    pub signature: Option<Signature>,
}

impl Guard {
    /// The checks that need no body, cheapest first, so a refused request
    /// costs as little as possible.
    pub fn check_request(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Denial> {
        if let Some(source) = &self.source
            && !source.allows(peer, headers)
        {
            return Err(Denial::SourceNotAllowed);
        }
        if let Some(expected) = &self.user_agent {
            let sent = headers
                .get(http::header::USER_AGENT)
                .map_or(&b""[..], |v| v.as_bytes());
            if !sent.starts_with(expected.as_bytes()) {
                return Err(Denial::UserAgent);
            }
        }
        if let Some(secret) = &self.shared_secret
            && !secret.allows(headers)
        {
            return Err(Denial::SharedSecret);
        }
        if let Some(basic) = &self.basic
            && !basic.allows(headers)
        {
            return Err(Denial::BasicAuth);
        }
        Ok(())
    }

    /// The signature over the raw body, if one is required.
    pub fn check_body(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: SystemTime,
    ) -> Result<(), Denial> {
        match &self.signature {
            Some(signature) => signature.verify(headers, body, now),
            None => Ok(()),
        }
    }

    /// True when the only credential is the signature over the body: a
    /// request is then unauthenticated until its whole body is in, which
    /// anyone can make slow.
    pub fn authenticates_only_with_body(&self) -> bool {
        self.signature.is_some() && self.shared_secret.is_none() && self.basic.is_none()
    }

    /// The `WWW-Authenticate` challenge a 401 must carry, when there is one
    /// to give: only Basic has a standard scheme here. Sent on every 401, so
    /// it says nothing about which check failed.
    pub fn challenge(&self) -> Option<&'static str> {
        self.basic
            .as_ref()
            .map(|_| r#"Basic realm="apizee-bridge", charset="UTF-8""#)
    }
}

/// Secrets kept only as SHA-256 digests, matched in constant time: neither
/// the content nor the length of a secret leaks through timing, and every
/// digest is compared on every call, so their number does not leak either.
#[derive(Clone)]
struct Digests(Vec<[u8; 32]>);

impl Digests {
    fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self(secrets.into_iter().map(digest).collect())
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn matches(&self, presented: &[u8]) -> subtle::Choice {
        let presented = digest(presented);
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |found, expected| {
                found | presented.ct_eq(expected)
            })
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests;
