//! Shared-secret authentication: the Apizee console adds a custom header to
//! each webhook, and the bridge accepts the request only if that header holds
//! one of the configured tokens.
//! Tokens are compared as [`Digests`], in constant time.

use http::{HeaderMap, HeaderName};

use super::Digests;
use crate::config::Secret;

#[derive(Clone)]
pub struct SharedSecret {
    header: HeaderName,
    digests: Digests,
}

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSecret")
            .field("header", &self.header)
            .field("tokens", &self.digests.len())
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid HTTP header name")]
pub struct InvalidHeaderName(String);

impl SharedSecret {
    pub fn new(header: &str, tokens: Vec<Secret>) -> Result<Self, InvalidHeaderName> {
        let header = HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| InvalidHeaderName(header.to_owned()))?;
        let digests = Digests::new(tokens.iter().map(|t| t.expose().as_bytes()));
        Ok(Self { header, digests })
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// True when the request carries one of the tokens in the auth header.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let bearer = self.header == http::header::AUTHORIZATION;
        let mut allowed = subtle::Choice::from(0);
        for value in headers.get_all(&self.header) {
            let mut presented = value.as_bytes();
            if bearer && presented.len() > 7 && presented[..7].eq_ignore_ascii_case(b"bearer ") {
                presented = &presented[7..];
            }
            allowed |= self.digests.matches(presented);
        }
        allowed.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn auth(header: &str, tokens: &[&str]) -> SharedSecret {
        SharedSecret::new(
            header,
            tokens.iter().map(|t| Secret::new((*t).into())).collect(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn accepts_any_configured_token_for_rotation() {
        let auth = auth("X-Apizee-Secret", &["old", "new"]);
        assert!(auth.allows(&headers(&[("x-apizee-secret", "old")])));
        assert!(auth.allows(&headers(&[("x-apizee-secret", "new")])));
    }

    #[test]
    fn refuses_missing_wrong_or_prefixed_tokens() {
        let auth = auth("X-Apizee-Secret", &["s3cret"]);
        assert!(!auth.allows(&headers(&[])));
        assert!(!auth.allows(&headers(&[("x-apizee-secret", "nope")])));
        assert!(!auth.allows(&headers(&[("x-apizee-secret", "s3cret2")])));
        assert!(!auth.allows(&headers(&[("x-apizee-secret", "s3cre")])));
        assert!(!auth.allows(&headers(&[("x-other", "s3cret")])));
    }

    #[test]
    fn bearer_prefix_only_on_authorization() {
        let bearer = auth("Authorization", &["tok"]);
        assert!(bearer.allows(&headers(&[("authorization", "Bearer tok")])));
        assert!(bearer.allows(&headers(&[("authorization", "tok")])));
        let custom = auth("X-Token", &["tok"]);
        assert!(!custom.allows(&headers(&[("x-token", "Bearer tok")])));
    }

    #[test]
    fn debug_never_shows_tokens() {
        let shown = format!("{:?}", auth("X-Token", &["very-secret"]));
        assert!(!shown.contains("very-secret"));
    }

    #[test]
    fn rejects_invalid_header_names() {
        assert!(SharedSecret::new("bad header", vec![Secret::new("x".into())]).is_err());
    }
}
