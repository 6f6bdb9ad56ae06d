//! Authentication and authorization of the metrics endpoint's callers against the
//! manager's own cluster, as controller-runtime's
//! `filters.WithAuthenticationAndAuthorization` and kube-rbac-proxy do.
//!
//! A caller sends `Authorization: Bearer <token>`. The token goes to a TokenReview;
//! the user it names (name, uid, groups, extra) to a SubjectAccessReview for the
//! request's verb (`get` for `GET` and `HEAD`) on the non-resource URL of its path.
//! No token, or one the apiserver does not accept: 401. Not allowed: 403. A review
//! that cannot be made (the apiserver is down, the manager may not create reviews):
//! 401 for the TokenReview and 500 for the SubjectAccessReview, as kube-apiserver's
//! own filters answer.
//!
//! # Cache
//!
//! A decision about an authenticated caller (allowed or forbidden) is kept for the
//! [TTL](super::MetricsEndpoint::review_cache_ttl) (10 s by default; zero turns the
//! cache off), keyed by a SHA-256 of the token, the verb and the path, never the
//! token itself. A revoked token or a removed binding thus takes effect within the
//! TTL. Rejected tokens are not cached, so a flood of made-up tokens cannot fill the
//! cache; at most [`CACHE_ENTRIES`] decisions are kept, and when it is full (after
//! dropping the expired ones) new decisions are not cached until some expire.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// At most this many decisions are cached per endpoint.
pub const CACHE_ENTRIES: usize = 1024;

/// How long one TokenReview or SubjectAccessReview may take.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// No token, or the apiserver does not accept it (401).
    Unauthenticated,
    /// Authenticated, but not allowed (403).
    Forbidden,
    /// The SubjectAccessReview could not be made (500).
    Failed,
}

/// Asks the manager's cluster who a caller is and what it may do.
pub(crate) struct Reviewer {
    client: kube::Client,
    ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, Admission)>>,
}

impl Reviewer {
    pub fn new(client: kube::Client, ttl: Duration) -> Self {
        Reviewer {
            client,
            ttl,
            cache: Mutex::default(),
        }
    }

    /// Whether the bearer of `headers` may `verb` the non-resource URL `path`.
    pub async fn admit(&self, headers: &HeaderMap, verb: &str, path: &str) -> Admission {
        let Some(token) = bearer(headers) else {
            return Admission::Unauthenticated;
        };
        let key = cache_key(token, verb, path);
        if let Some(cached) = self.cached(&key) {
            return cached;
        }
        let admission = self.review(token, verb, path).await;
        if matches!(admission, Admission::Allowed | Admission::Forbidden) {
            self.remember(key, admission);
        }
        admission
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Admission> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, admission)| *admission)
    }

    fn remember(&self, key: [u8; 32], admission: Admission) {
        if self.ttl.is_zero() {
            return;
        }
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
        }
        if cache.len() < CACHE_ENTRIES {
            cache.insert(key, (Instant::now(), admission));
        }
    }

    async fn review(&self, token: &str, verb: &str, path: &str) -> Admission {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_owned(),
                audiences: None,
            },
            ..TokenReview::default()
        };
        let reviews: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(REVIEW_TIMEOUT, reviews.create(&PostParams::default(), &review)).await;
        let status = match reviewed {
            Ok(Ok(reviewed)) => reviewed.status.unwrap_or_default(),
            Ok(Err(err)) => {
                tracing::warn!(error = %crate::redact::describe(&err), "metrics endpoint: TokenReview failed; caller not authenticated");
                return Admission::Unauthenticated;
            }
            Err(_) => {
                tracing::warn!(timeout = ?REVIEW_TIMEOUT, "metrics endpoint: TokenReview timed out; caller not authenticated");
                return Admission::Unauthenticated;
            }
        };
        let Some(user) = status.user.filter(|_| status.authenticated == Some(true)) else {
            tracing::debug!("metrics endpoint: token not accepted by the apiserver");
            return Admission::Unauthenticated;
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(path.to_owned()),
                    verb: Some(verb.to_owned()),
                }),
                resource_attributes: None,
            },
            ..SubjectAccessReview::default()
        };
        let accesses: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let decided =
            tokio::time::timeout(REVIEW_TIMEOUT, accesses.create(&PostParams::default(), &access)).await;
        let username = user.username.unwrap_or_default();
        match decided {
            Ok(Ok(decided)) => {
                let status = decided.status.unwrap_or_default();
                if status.allowed && status.denied != Some(true) {
                    Admission::Allowed
                } else {
                    tracing::debug!(
                        user = username,
                        verb,
                        path,
                        "metrics endpoint: caller not allowed"
                    );
                    Admission::Forbidden
                }
            }
            Ok(Err(err)) => {
                tracing::warn!(user = username, error = %crate::redact::describe(&err), "metrics endpoint: SubjectAccessReview failed");
                Admission::Failed
            }
            Err(_) => {
                tracing::warn!(user = username, timeout = ?REVIEW_TIMEOUT, "metrics endpoint: SubjectAccessReview timed out");
                Admission::Failed
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; `None` without one, or
/// with an empty token.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What the cache knows a decision by: the token is never kept.
fn cache_key(token: &str, verb: &str, path: &str) -> [u8; 32] {
    use crate::serving::crypto::digest;
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [token, verb, path] {
        context.update(part.as_bytes());
        context.update(&[0]);
    }
    let mut key = [0; 32];
    key.copy_from_slice(context.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_non_empty_bearer_token_is_taken() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
            bearer(&headers).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc"), Some("abc".into()));
        assert_eq!(with("bearer  abc "), Some("abc".into()));
        assert_eq!(with("Bearer "), None);
        assert_eq!(with("Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn the_cache_key_tells_tokens_verbs_and_paths_apart() {
        let key = cache_key("t", "get", "/metrics");
        assert_ne!(key, cache_key("u", "get", "/metrics"));
        assert_ne!(key, cache_key("t", "head", "/metrics"));
        assert_ne!(key, cache_key("t", "get", "/metrics/x"));
        // The separator keeps "ab"+"c" apart from "a"+"bc".
        assert_ne!(cache_key("ab", "c", ""), cache_key("a", "bc", ""));
    }
}
