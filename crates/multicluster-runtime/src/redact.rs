//! Error text without credentials: the one describer every log line, error message,
//! readiness report and Event of the library goes through.
//!
//! kube's errors can quote what must never leave the process: an exec credential
//! plugin's command line (with its environment values) and its output, which may
//! hold a live token; a fragment of a response that failed to decode; a proxy URL
//! with a password. Such an error need not be on top: after a token refresh fails,
//! kube returns `Error::Service` wrapping the auth error, and a watcher error wraps
//! that again. [`describe`] walks the whole chain of sources, prints each error's
//! own words once, and replaces an auth or decoding error by a fixed description.
//!
//! ```
//! use multicluster_runtime::redact::describe;
//!
//! let io = std::io::Error::other("connection refused");
//! assert_eq!(describe(&io), "connection refused");
//! ```

use std::error::Error as StdError;

use kube::client::AuthError;

/// The error and its sources, `: `-separated, each error's own words once, without
/// anything that may hold credentials:
///
/// - an authentication error (an exec plugin's failure, a token file, a bearer
///   token) is replaced by a fixed description, and its sources are not read;
/// - a response that kube could not decode is described by position, never quoted;
/// - the user information of every URL (`scheme://user:password@`) becomes `***`;
/// - the text is at most [`MAX_DESCRIPTION`] bytes: a cluster's error is kept for
///   readiness and logged, and a hostile server can make it as long as it likes.
///
/// Above an authentication error, an error whose text does not contain its source's
/// text verbatim may quote it in another form (e.g. `Debug`): its words are left out.
pub fn describe(error: &(dyn StdError + 'static)) -> String {
    let sensitive_below = chain(error).any(|e| withheld(e).is_some());
    let mut parts: Vec<String> = Vec::new();
    for level in chain(error) {
        if let Some(fixed) = withheld(level) {
            parts.push(fixed);
            break;
        }
        let Some(own) = own_words(level, sensitive_below) else {
            continue;
        };
        if !own.is_empty() && parts.last() != Some(&own) {
            parts.push(own);
        }
    }
    bounded(redact_userinfo(&parts.join(": ")))
}

/// The longest description [`describe`] returns, in bytes.
pub const MAX_DESCRIPTION: usize = 2048;

/// `text` cut to at most [`MAX_DESCRIPTION`] bytes (on a character boundary), with
/// a mark that it was.
///
/// ```
/// use multicluster_runtime::redact::{MAX_DESCRIPTION, bounded};
///
/// assert_eq!(bounded("short".into()), "short");
/// assert!(bounded("x".repeat(1 << 20)).len() <= MAX_DESCRIPTION);
/// ```
pub fn bounded(mut text: String) -> String {
    const MARK: &str = " … (cut short)";
    if text.len() <= MAX_DESCRIPTION {
        return text;
    }
    let mut end = MAX_DESCRIPTION - MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(MARK);
    text
}

/// `error` and its sources, outermost first.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

/// The words of `level` without its source's text. `None` when that text cannot be
/// taken out and something below must not be quoted.
fn own_words(level: &(dyn StdError + 'static), sensitive_below: bool) -> Option<String> {
    let text = level.to_string();
    let Some(source) = level.source() else {
        return Some(text);
    };
    let inner = source.to_string();
    if inner.is_empty() {
        return Some(text);
    }
    if !text.contains(&inner) {
        return (!sensitive_below).then_some(text);
    }
    let own = text.replace(&inner, "");
    Some(
        own.trim_end_matches(|c: char| c == ':' || c.is_whitespace())
            .trim_start_matches(|c: char| c == ':' || c.is_whitespace())
            .to_owned(),
    )
}

/// A fixed description for an error whose text may hold credentials or quote a
/// document; `None` for any other error.
fn withheld(error: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(auth) = error.downcast_ref::<AuthError>() {
        return Some(describe_auth(auth));
    }
    match error.downcast_ref::<kube::Error>()? {
        kube::Error::Auth(auth) => Some(describe_auth(auth)),
        kube::Error::SerdeError(e) => Some(describe_json(e)),
        _ => None,
    }
    .or_else(|| error.downcast_ref::<serde_json::Error>().map(describe_json))
}

fn describe_json(error: &serde_json::Error) -> String {
    format!(
        "a response could not be decoded at line {}, column {} ({:?})",
        error.line(),
        error.column(),
        error.classify()
    )
}

fn describe_auth(error: &AuthError) -> String {
    match error {
        AuthError::AuthExecRun { out, .. } => {
            format!("the exec credential plugin failed ({})", out.status)
        }
        AuthError::AuthExecStart(e) => {
            format!("the exec credential plugin could not be started ({})", e.kind())
        }
        AuthError::AuthExecParse(_) => {
            "the output of the exec credential plugin is not an ExecCredential".into()
        }
        AuthError::AuthExecSerialize(_) => "the exec credential plugin's input could not be written".into(),
        AuthError::AuthExec(_) => "the exec credential plugin failed".into(),
        AuthError::ExecPluginFailed => "the exec credential plugin's answer has no status".into(),
        AuthError::ExecMissingClusterInfo => {
            "the exec credential plugin wants cluster information and the kubeconfig has none".into()
        }
        AuthError::MissingCommand => "the exec credential plugin has no command".into(),
        AuthError::UnrefreshableTokenResponse => "a refreshed token cannot be refreshed again".into(),
        AuthError::MalformedTokenExpirationDate(_) => "a token's expiration date cannot be parsed".into(),
        AuthError::ReadTokenFile(e, _) => format!("a token file cannot be read ({})", e.kind()),
        AuthError::ParseTokenKey(_) => "a token cannot be parsed".into(),
        AuthError::InvalidBasicAuth(_) => "the user name and password are not a valid header value".into(),
        AuthError::InvalidBearerToken(_) => "the bearer token is not a valid header value".into(),
        AuthError::NoValidNativeRootCA(e) => format!("no valid native root CA certificate ({})", e.kind()),
        #[allow(unreachable_patterns)] // kube's optional auth providers
        _ => "authentication failed".into(),
    }
}

/// An authentication failure, described without credentials: what a client built
/// with [`ClientOptions::build`](crate::cluster::ClientOptions::build) returns (as
/// the source of `kube::Error::Service`) instead of kube's own auth error, whose text
/// and `Debug` quote an exec plugin's command line, environment and output.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{description}")]
pub struct AuthFailed {
    description: String,
}

impl AuthFailed {
    /// `error` (an auth error, or one with an auth error among its sources),
    /// [described](describe).
    pub fn from_error(error: &(dyn StdError + 'static)) -> Self {
        AuthFailed {
            description: describe(error),
        }
    }

    /// What failed, e.g. `the exec credential plugin failed (exit status: 1)`.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// `text` with the user information of every URL in it (`scheme://user:password@`)
/// replaced by `***`.
///
/// ```
/// use multicluster_runtime::redact::redact_userinfo;
///
/// assert_eq!(
///     redact_userinfo("proxy http://u:s3cret@proxy:3128/ is not supported"),
///     "proxy http://***@proxy:3128/ is not supported"
/// );
/// ```
pub fn redact_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'<>`".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str("***");
                out.push_str(&authority[user_end..]);
                rest = &tail[end..];
            }
            // Nothing to hide here; scan on from the separator, since another URL
            // may begin inside what looked like this one's authority (`a://b://u:p@h`).
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    const MARKER: &str = "x01-marker-b4c9";

    #[test]
    fn x04_an_error_as_long_as_a_hostile_server_makes_it_is_cut_short() {
        // E.g. an apiserver's Status message of a megabyte, kept for readiness.
        let huge = std::io::Error::other(format!("denied: {}", "é".repeat(1 << 20)));
        let text = describe(&huge);
        assert!(text.len() <= MAX_DESCRIPTION, "{}", text.len());
        assert!(
            text.starts_with("denied: é") && text.ends_with("(cut short)"),
            "{text}"
        );
        assert_eq!(describe(&std::io::Error::other("short")), "short");
    }

    fn exec_failure() -> AuthError {
        AuthError::AuthExecRun {
            cmd: format!("sh -c 'echo {MARKER}' SECRET={MARKER}"),
            out: Box::new(std::process::Output {
                status: std::process::ExitStatus::from_raw(256),
                stdout: MARKER.as_bytes().to_vec(),
                stderr: MARKER.as_bytes().to_vec(),
            }),
        }
    }

    #[test]
    fn x01_an_exec_failure_inside_a_service_error_is_withheld() {
        // What kube returns when a token refresh fails: the auth error boxed inside
        // `Error::Service`, inside a watcher error.
        let service = kube::Error::Service(Box::new(exec_failure()));
        assert!(service.to_string().contains(MARKER), "kube quotes it");
        let watch = kube::runtime::watcher::Error::WatchStartFailed(service);
        let text = describe(&watch);
        assert!(!text.contains(MARKER), "{text}");
        assert!(
            text.ends_with("ServiceError: the exec credential plugin failed (exit status: 1)"),
            "{text}"
        );
        let direct = kube::Error::Auth(exec_failure());
        assert_eq!(
            describe(&direct),
            "the exec credential plugin failed (exit status: 1)"
        );
    }

    #[test]
    fn x01_a_wrapper_quoting_a_withheld_source_in_another_form_is_left_out() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapped: {0:?}")]
        struct Wrapper(#[source] AuthError);
        let text = describe(&Wrapper(exec_failure()));
        assert_eq!(text, "the exec credential plugin failed (exit status: 1)");
    }

    #[test]
    fn each_error_says_its_own_words_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Outer(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("failed to list")]
        struct Terse(#[source] std::io::Error);
        let io = || std::io::Error::other("connection refused to https://u:p@h/");
        assert_eq!(
            describe(&Outer(io())),
            "outer: connection refused to https://***@h/"
        );
        assert_eq!(
            describe(&Terse(io())),
            "failed to list: connection refused to https://***@h/"
        );
    }

    #[test]
    fn a_document_that_failed_to_decode_is_never_quoted() {
        let error = serde_json::from_str::<u32>(&format!("\"{MARKER}\"")).unwrap_err();
        let text = describe(&kube::Error::SerdeError(error));
        assert!(!text.contains(MARKER), "{text}");
        assert!(
            text.starts_with("a response could not be decoded at line 1"),
            "{text}"
        );
    }

    #[test]
    fn user_information_is_redacted_from_urls() {
        assert_eq!(redact_userinfo("no url"), "no url");
        assert_eq!(
            redact_userinfo("a https://x:y@h/p and socks5://only@h, then http://h:1/"),
            "a https://***@h/p and socks5://***@h, then http://h:1/"
        );
        assert_eq!(redact_userinfo("cut http://u:p@"), "cut http://***@");
        assert_eq!(redact_userinfo("\"http://u:p@h\""), "\"http://***@h\"");
    }

    #[test]
    fn a_url_starting_inside_another_is_redacted_too() {
        let text = "://+://u:p@host.example/x";
        assert_eq!(redact_userinfo(text), "://+://***@host.example/x");
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        #[test]
        fn p05_fuzz_userinfo_redaction(
            before in "\\PC{0,20}",
            scheme in "[a-z0-9+]{1,8}",
            user in "[^@/?#\\s\"'<>`]{0,10}",
            after in "\\PC{0,20}",
        ) {
            let password = "MARKERpassword91c2";
            let text = format!("{before}{scheme}://{user}:{password}@host.example/x{after}");
            proptest::prop_assert!(!redact_userinfo(&text).contains(password));
        }
    }
}
