//! HTTP Basic authentication (RFC 7617), for senders and proxies that can
//! only put credentials in the URL (`https://user:password@host/webhooks`).
//!
//! Each accepted `user:password` pair is kept as a [`Digests`] entry and the
//! decoded credentials are matched as a whole, so a right user with a wrong
//! password takes exactly as long as anything else.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;

use super::Digests;
use crate::config::Secret;

#[derive(Clone)]
pub struct BasicAuth {
    credentials: Digests,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("users", &self.credentials.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidCredentials {
    #[error("expected USER:PASSWORD, found no ':' in an entry")]
    MissingColon,
    #[error("the user name is empty in an entry")]
    EmptyUser,
    #[error("the password is empty for user {0:?}")]
    EmptyPassword(String),
}

impl BasicAuth {
    /// `pairs` are `user:password`; the user may not contain ':' (RFC 7617),
    /// the password may.
    pub fn new(pairs: &[Secret]) -> Result<Self, InvalidCredentials> {
        for pair in pairs {
            let (user, password) = pair
                .expose()
                .split_once(':')
                .ok_or(InvalidCredentials::MissingColon)?;
            if user.is_empty() {
                return Err(InvalidCredentials::EmptyUser);
            }
            if password.is_empty() {
                return Err(InvalidCredentials::EmptyPassword(user.to_owned()));
            }
        }
        Ok(Self {
            credentials: Digests::new(pairs.iter().map(|p| p.expose().as_bytes())),
        })
    }

    /// True when an `Authorization: Basic` header carries accepted
    /// credentials. The scheme name is case-insensitive (RFC 7235).
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let mut allowed = subtle::Choice::from(0);
        for value in headers.get_all(http::header::AUTHORIZATION) {
            let value = value.as_bytes();
            let Some(encoded) = value
                .get(..6)
                .filter(|scheme| scheme.eq_ignore_ascii_case(b"basic "))
                .and_then(|_| value.get(6..))
            else {
                continue;
            };
            let encoded = encoded.trim_ascii();
            // Well-formed credentials are short; refuse to decode a huge
            // value only to compare its digest.
            if encoded.len() > 4096 {
                continue;
            }
            if let Ok(decoded) = STANDARD.decode(encoded) {
                allowed |= self.credentials.matches(&decoded);
            }
        }
        allowed.into()
    }
}
