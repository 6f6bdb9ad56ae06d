//! Caps on how much of one answer a cluster's client holds.
//!
//! kube reads a whole response into memory before decoding it, and splits a watch
//! into lines without a length limit: an apiserver (or anything posing as one) that
//! answers with an endless body, or a watch line with no newline, grows the
//! controller's memory until the pod is killed, and every cluster's work with it.
//! A layer under kube's client counts the bytes of each response body and fails it
//! once it passes its limit: the whole body of an ordinary request, or one line of a
//! watch (one event). The reader sees an error that names the limit; what was read
//! is dropped.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use kube::client::DynBody;
use tower::{BoxError, Layer, Service};

/// How many bytes of one response a cluster's client reads before it gives up on
/// it (see [`ClientOptions::response_limits`](super::ClientOptions::response_limits)).
///
/// ```
/// use multicluster_runtime::cluster::{ClientOptions, ResponseLimits};
///
/// // Lists of large custom resources, a page at a time: a larger body allowance.
/// let options = ClientOptions::default().response_limits(ResponseLimits::default().body(256 << 20));
/// assert_eq!(options.response_limits.body, 256 << 20);
/// assert_eq!(options.response_limits.watch_event, 16 << 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseLimits {
    /// The body of a response that is not a watch (a list page, a get, a probe's
    /// answer), in bytes. Default: 64 MiB, about 130 KiB an object for a page of
    /// 500 (the page size of the library's informers).
    pub body: usize,
    /// One line of a watch, that is one event with its object, in bytes. Default:
    /// 16 MiB; the apiserver refuses objects over about 3 MiB.
    pub watch_event: usize,
}

impl ResponseLimits {
    /// Sets [`body`](Self::body), in bytes.
    #[must_use]
    pub fn body(mut self, bytes: usize) -> Self {
        self.body = bytes;
        self
    }

    /// Sets [`watch_event`](Self::watch_event), in bytes.
    #[must_use]
    pub fn watch_event(mut self, bytes: usize) -> Self {
        self.watch_event = bytes;
        self
    }
}

impl Default for ResponseLimits {
    fn default() -> Self {
        ResponseLimits {
            body: 64 << 20,
            watch_event: 16 << 20,
        }
    }
}

/// A response body passed its limit. Its text names the limit and the option that
/// sets it; the cluster is named by whoever reports the error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is longer than {limit} bytes, the limit of ClientOptions::response_limits.{field}")]
pub struct ResponseTooLarge {
    what: &'static str,
    field: &'static str,
    limit: usize,
}

/// The layer that caps the response bodies of a client's service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LimitLayer(pub(crate) ResponseLimits);

impl<S> Layer<S> for LimitLayer {
    type Service = Limited<S>;

    fn layer(&self, inner: S) -> Limited<S> {
        Limited {
            inner,
            limits: self.0,
        }
    }
}

/// A client service whose response bodies are capped.
#[derive(Clone)]
pub(crate) struct Limited<S> {
    inner: S,
    limits: ResponseLimits,
}

impl<S, B> Service<Request<B>> for Limited<S>
where
    S: Service<Request<B>, Response = Response<Box<DynBody>>>,
    S::Future: Send + 'static,
{
    type Response = Response<Box<DynBody>>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let cap = if is_watch(request.uri()) {
            Cap::Line(self.limits.watch_event)
        } else {
            Cap::Body(self.limits.body)
        };
        let responding = self.inner.call(request);
        Box::pin(async move {
            let response = responding.await?;
            Ok(response.map(|body| Box::new(Capped { body, cap, seen: 0 }) as Box<DynBody>))
        })
    }
}

/// Whether the request asks for a watch (`?watch=true`, `?watch=1`).
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| matches!(pair, "watch=true" | "watch=1" | "watch=True"))
    })
}

/// What a body is held to.
#[derive(Clone, Copy, Debug)]
enum Cap {
    /// The whole body.
    Body(usize),
    /// The bytes between two newlines.
    Line(usize),
}

/// A body that fails once it passes its cap.
struct Capped {
    body: Box<DynBody>,
    cap: Cap,
    /// Bytes counted against the cap: of the body, or since the last newline.
    seen: usize,
}

impl Capped {
    /// Counts `data`, and says whether the body is still within its cap.
    fn count(&mut self, data: &[u8]) -> Result<(), ResponseTooLarge> {
        match self.cap {
            Cap::Body(limit) => {
                self.seen = self.seen.saturating_add(data.len());
                if self.seen > limit {
                    return Err(ResponseTooLarge {
                        what: "the response",
                        field: "body",
                        limit,
                    });
                }
            }
            Cap::Line(limit) => {
                // The first piece goes on with the line the last frame ended in;
                // the last one goes on in the next frame.
                let mut pieces = data.split(|&b| b == b'\n');
                let mut run = self.seen.saturating_add(pieces.next().map_or(0, <[u8]>::len));
                let mut longest = run;
                for piece in pieces {
                    run = piece.len();
                    longest = longest.max(run);
                }
                self.seen = run;
                if longest > limit {
                    return Err(ResponseTooLarge {
                        what: "a watch event",
                        field: "watch_event",
                        limit,
                    });
                }
            }
        }
        Ok(())
    }
}

impl Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Err(too_large) = this.count(data)
        {
            return Poll::Ready(Some(Err(too_large.into())));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use proptest::prelude::Just;

    use super::*;

    fn capped(cap: Cap) -> Capped {
        Capped {
            body: Box::new(
                http_body_util::Empty::<Bytes>::new().map_err(|never| -> BoxError { match never {} }),
            ),
            cap,
            seen: 0,
        }
    }

    #[test]
    fn x04_a_body_passes_its_cap_across_frames() {
        let mut body = capped(Cap::Body(10));
        assert!(body.count(b"12345").is_ok());
        assert!(body.count(b"67890").is_ok());
        let error = body.count(b"1").expect_err("over");
        assert_eq!(
            error.to_string(),
            "the response is longer than 10 bytes, the limit of ClientOptions::response_limits.body"
        );
    }

    #[test]
    fn x04_a_watch_line_is_capped_not_the_watch() {
        let mut watch = capped(Cap::Line(4));
        // Many short lines: a watch of any length.
        for _ in 0..100 {
            assert!(watch.count(b"ab\ncd\n").is_ok());
        }
        // A line split across frames counts as one.
        assert!(watch.count(b"ab").is_ok());
        assert!(watch.count(b"cd").is_ok());
        assert!(watch.count(b"e").is_err());
        // A long line wholly inside one frame.
        let mut watch = capped(Cap::Line(4));
        assert!(watch.count(b"a\nabcdefgh\nb").is_err());
        // A long line at the end of a frame.
        let mut watch = capped(Cap::Line(4));
        assert!(watch.count(b"a\nabcdefgh").is_err());
    }

    #[test]
    fn x04_a_line_that_goes_on_from_the_last_frame_counts_whole() {
        let mut watch = capped(Cap::Line(4));
        assert!(watch.count(b"abc").is_ok());
        assert!(watch.count(b"de\nx").is_err(), "abcde is one line of 5");
    }

    /// The longest line of `frames` joined (without its newlines), or the whole
    /// length: what the cap must compare, computed the plain way.
    fn oracle(frames: &[Vec<u8>], cap: Cap) -> usize {
        let joined = frames.concat();
        match cap {
            Cap::Body(_) => joined.len(),
            Cap::Line(_) => joined.split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap_or(0),
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// x08: frames of any size and newlines anywhere, watch or not: the body
        /// fails exactly when, and as soon as, what has arrived passes the cap.
        #[test]
        fn x08_fuzz_response_caps(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::prop_oneof![Just(b'\n'), Just(b'x')], 0..40),
                0..12,
            ),
            limit in 0usize..48,
            watch in proptest::prelude::any::<bool>(),
        ) {
            let cap = if watch { Cap::Line(limit) } else { Cap::Body(limit) };
            let mut body = capped(cap);
            for (index, _) in frames.iter().enumerate() {
                let over = oracle(&frames[..=index], cap) > limit;
                let counted = body.count(&frames[index]);
                proptest::prop_assert_eq!(counted.is_err(), over, "frame {}", index);
                if over {
                    break;
                }
            }
        }
    }

    #[test]
    fn watches_are_told_from_other_requests() {
        assert!(is_watch(
            &"/api/v1/pods?watch=true&resourceVersion=1".parse().unwrap()
        ));
        assert!(is_watch(
            &"/api/v1/pods?resourceVersion=1&watch=1".parse().unwrap()
        ));
        assert!(!is_watch(&"/api/v1/pods?limit=500".parse().unwrap()));
        assert!(!is_watch(&"/api/v1/namespaces/watch=true/pods".parse().unwrap()));
    }
}
