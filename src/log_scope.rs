//! Which client session a log line belongs to, at the cost of a thread-local write per poll of the session.
//!
//! Every client session has its own `tracing` span (client, user, database), and every line it logs carries
//! them. The usual way, entering the span around each poll of the session's future, made the subscriber push
//! and pop its span stack and count the span's references twice per request: about 870 of the 11,100
//! instructions of a pooled `-S` request at the default level, although most requests log nothing. Here a
//! session's poll only notes its span in a thread-local ([`in_session`]), and [`SessionScope`], the
//! outermost subscriber, enters the span for real around the events and spans that are made while that note
//! is set and the session has entered no span of its own: a line costs what it did, a request that logs
//! nothing does not.
//!
//! A filter that decides by span (`[session]=debug` in `log.level`) asks which span is entered before an
//! event exists; while such a filter is in force ([`enter_each_poll`]), sessions enter their span on every
//! poll as before.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tracing::level_filters::LevelFilter;
use tracing::span::{self, Attributes, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Span, Subscriber};
use tracing_subscriber::registry::LookupSpan;

thread_local! {
    /// The span of the session being polled on this thread, as its id's number, and how many spans were
    /// entered on the thread when its poll began.
    static SESSION: Cell<Option<(u64, u32)>> = const { Cell::new(None) };
    /// Spans entered on this thread and not yet left.
    static ENTERED: Cell<u32> = const { Cell::new(0) };
}

/// Whether sessions enter their span on every poll (a filter in force decides by span).
static ENTER_EACH_POLL: AtomicBool = AtomicBool::new(false);

/// Held by the tests that set [`enter_each_poll`], which is process-wide.
#[cfg(test)]
pub(crate) static MODE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sessions enter their span on every poll from now on (`true`), or only note it (`false`). The log filter
/// sets this whenever its rules change.
pub fn enter_each_poll(on: bool) {
    ENTER_EACH_POLL.store(on, Ordering::Release);
}

/// `future`, whose events and spans belong to `span` (see the module's doc).
pub fn in_session<F: Future>(future: F, span: Span) -> InSession<F> {
    InSession {
        id: span.id().map(|id| id.into_u64()),
        span,
        future: Some(Box::pin(future)),
    }
}

/// A session's future with its span; see [`in_session`].
pub struct InSession<F> {
    span: Span,
    /// None when the span is disabled: nothing to note.
    id: Option<u64>,
    /// Taken only to be dropped within the span (see `Drop`).
    future: Option<Pin<Box<F>>>,
}

impl<F> InSession<F> {
    /// Runs `f` inside the span: noted, or entered when sessions enter theirs on every poll.
    fn within<T>(&mut self, f: impl FnOnce(&mut Option<Pin<Box<F>>>) -> T) -> T {
        if self.id.is_none() || ENTER_EACH_POLL.load(Ordering::Acquire) {
            let _entered = self.span.enter();
            return f(&mut self.future);
        }
        // Restored even if `f` panics: the thread goes on polling other tasks.
        struct Restore(Option<(u64, u32)>);
        impl Drop for Restore {
            fn drop(&mut self) {
                SESSION.with(|s| s.set(self.0));
            }
        }
        let noted = self.id.map(|id| (id, ENTERED.with(Cell::get)));
        let _restore = Restore(SESSION.with(|s| s.replace(noted)));
        f(&mut self.future)
    }
}

impl<F: Future> Future for InSession<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.get_mut().within(|future| match future {
            Some(f) => f.as_mut().poll(cx),
            // Only while being dropped, when nothing polls it.
            None => Poll::Pending,
        })
    }
}

/// What a session logs while its future is dropped (a shutdown ending it mid-request) belongs to it too.
impl<F> Drop for InSession<F> {
    fn drop(&mut self) {
        self.within(|future| drop(future.take()));
    }
}

/// The span of the session polled on this thread, if one noted it and the session entered no span of its own
/// since (one it made inside its span already has it as its parent).
fn noted_session() -> Option<span::Id> {
    let (id, entered) = SESSION.with(Cell::get)?;
    (ENTERED.with(Cell::get) == entered).then(|| span::Id::from_u64(id))
}

/// The outermost subscriber: `inner` with the noted session's span entered around what belongs to it.
pub struct SessionScope<S> {
    inner: S,
}

impl<S> SessionScope<S> {
    /// Wraps the subscriber the binary installs.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: Subscriber> SessionScope<S> {
    /// Runs `f` with the noted session's span entered, if there is one.
    fn within<T>(&self, contextual: bool, f: impl FnOnce(&S) -> T) -> T {
        match noted_session().filter(|_| contextual) {
            Some(id) => {
                self.inner.enter(&id);
                let out = f(&self.inner);
                self.inner.exit(&id);
                out
            }
            None => f(&self.inner),
        }
    }
}

impl<S> Subscriber for SessionScope<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> span::Id {
        self.within(attrs.is_contextual(), |inner| inner.new_span(attrs))
    }

    fn record(&self, span: &span::Id, values: &Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }

    fn event(&self, event: &Event<'_>) {
        self.within(event.is_contextual(), |inner| inner.event(event));
    }

    fn enter(&self, span: &span::Id) {
        ENTERED.with(|n| n.set(n.get().saturating_add(1)));
        self.inner.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        ENTERED.with(|n| n.set(n.get().saturating_sub(1)));
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }

    /// `Span::current()` inside a session is the session's span (a task spawned `in_current_span` keeps it).
    fn current_span(&self) -> tracing_core::span::Current {
        match noted_session() {
            Some(id) => match self.inner.span_data(&id) {
                Some(data) => tracing_core::span::Current::new(
                    id,
                    tracing_subscriber::registry::SpanData::metadata(&data),
                ),
                None => self.inner.current_span(),
            },
            None => self.inner.current_span(),
        }
    }
}

/// An event's message, as the log filter's tests and these compare them.
#[cfg(test)]
pub(crate) fn message_of(event: &Event<'_>) -> String {
    struct Message(String);
    impl tracing::field::Visit for Message {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0.push_str(&format!("{value:?}"));
            }
        }
    }
    let mut message = Message(String::new());
    event.record(&mut message);
    message.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt};

    /// An event's message and the names of the spans around it, innermost first.
    type Line = (String, Vec<String>);

    /// Each event as a [`Line`].
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<Line>>>);

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, ctx: LayerContext<'_, S>) {
            let message = message_of(event);
            let spans = ctx
                .event_scope(event)
                .map(|scope| scope.map(|s| s.name().to_owned()).collect())
                .unwrap_or_default();
            self.0.lock().expect("seen").push((message, spans));
        }
    }

    fn poll_once<F: Future>(future: &mut Pin<&mut F>) -> Poll<F::Output> {
        let waker = std::task::Waker::noop();
        future.as_mut().poll(&mut Context::from_waker(waker))
    }

    fn run(each_poll: bool) -> Vec<Line> {
        let _mode = MODE_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = Seen::default();
        let subscriber = SessionScope::new(tracing_subscriber::registry().with(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            enter_each_poll(each_poll);
            struct LogsOnDrop;
            impl Drop for LogsOnDrop {
                fn drop(&mut self) {
                    tracing::info!("dropped with the session");
                }
            }
            let span = tracing::info_span!("session");
            let mut yielded = false;
            let on_drop = LogsOnDrop;
            let session = in_session(
                std::future::poll_fn(move |_| {
                    let _keep = &on_drop;
                    tracing::info!("in the session");
                    let child = tracing::info_span!("child");
                    child.in_scope(|| tracing::info!("in a span the session made"));
                    assert_eq!(
                        Span::current().metadata().map(|m| m.name()),
                        Some("session"),
                        "Span::current() inside the session"
                    );
                    if yielded {
                        Poll::Ready(())
                    } else {
                        yielded = true;
                        Poll::Pending
                    }
                }),
                span,
            );
            let mut session = Box::pin(session);
            assert!(poll_once(&mut session.as_mut()).is_pending());
            tracing::info!("between polls");
            // A span entered around the poll (a worker's, say) does not hide the session's.
            let outer = tracing::info_span!("outer");
            assert!(outer.in_scope(|| poll_once(&mut session.as_mut()).is_ready()));
            drop(session);
            tracing::info!("after the session");
        });
        enter_each_poll(false);
        seen.0.lock().expect("seen").clone()
    }

    #[test]
    fn events_and_spans_made_in_a_session_belong_to_it_and_nothing_else_does() {
        let session = || vec!["session".to_owned()];
        let child = || vec!["child".to_owned(), "session".to_owned()];
        let expected = vec![
            ("in the session".to_owned(), session()),
            ("in a span the session made".to_owned(), child()),
            ("between polls".to_owned(), vec![]),
            ("in the session".to_owned(), session()),
            ("in a span the session made".to_owned(), child()),
            ("dropped with the session".to_owned(), session()),
            ("after the session".to_owned(), vec![]),
        ];
        // Noted per poll, and entered per poll (a filter that decides by span): the same lines.
        assert_eq!(run(false), expected);
        assert_eq!(run(true), expected);
    }
}
