//! The log filter: which events and spans `log.level` (or `RUST_LOG`) lets through, replaceable while pgfleet
//! runs (SIGHUP, admin RELOAD).
//!
//! Every client session runs inside its own `tracing` span. tracing-subscriber's `EnvFilter` behind its
//! reload layer takes two read locks and a map lookup on each enter and exit of a span, whatever the filter
//! says. A filter made only of levels and targets (`info`, `pgfleet=debug,warn`) never needs to know which
//! span is entered, so it is kept as a `Targets` filter and the span hooks return at once; sessions then only
//! note their span on each poll and it is entered when something is logged (`log_scope`). A filter with span
//! or field directives (`[session]=debug`) is an `EnvFilter`: only then do the hooks pass every enter and exit
//! to it, and sessions enter their span on every poll so that it can decide by it.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use tracing::Metadata;
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::{Interest, Subscriber};
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::{Context, Layer};

/// A `log.level` value pgfleet cannot filter by.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a level or filter such as \"info\": {reason}")]
pub struct FilterError {
    text: String,
    reason: String,
}

/// What one directive string filters by.
enum Rules {
    /// Levels per target only: decided from an event's or span's metadata alone.
    Plain(Box<Targets>),
    /// Anything else `EnvFilter` accepts, span and field directives included.
    Env(Box<EnvFilter>),
}

impl Rules {
    fn parse(text: &str) -> Result<Rules, FilterError> {
        // Span and field directives are the bracketed ones; an empty list means ERROR to EnvFilter and nothing
        // at all to Targets, so it stays EnvFilter's.
        if !text.contains('[')
            && !text.trim().is_empty()
            && let Ok(targets) = Targets::from_str(text)
        {
            return Ok(Rules::Plain(Box::new(targets)));
        }
        EnvFilter::try_new(text)
            .map(|e| Rules::Env(Box::new(e)))
            .map_err(|e| FilterError {
                text: text.to_owned(),
                reason: e.to_string(),
            })
    }

    fn watches_spans(&self) -> bool {
        matches!(self, Rules::Env(_))
    }
}

struct Current {
    rules: RwLock<Rules>,
    /// Whether `rules` needs to see spans entered and left; read without the lock on every enter and exit.
    watches_spans: AtomicBool,
}

impl Current {
    fn rules(&self) -> std::sync::RwLockReadGuard<'_, Rules> {
        // A panic while the rules were replaced leaves them whole (the swap is one assignment).
        self.rules.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Passes a span hook to an EnvFilter in force; a plain filter's hooks stop at the flag, without the lock.
    fn with_env(&self, hook: impl FnOnce(&EnvFilter)) {
        if self.watches_spans.load(Ordering::Acquire)
            && let Rules::Env(e) = &*self.rules()
        {
            hook(e);
        }
    }
}

/// The filtering layer; install it once, over the formatting subscriber.
pub struct LogFilter {
    current: Arc<Current>,
}

/// Replaces the rules of the installed `LogFilter`.
#[derive(Clone)]
pub struct FilterHandle {
    current: Arc<Current>,
}

impl LogFilter {
    /// A filter for `text` (`log.level` syntax: EnvFilter's directives) and the handle that replaces it.
    pub fn new(text: &str) -> Result<(LogFilter, FilterHandle), FilterError> {
        let rules = Rules::parse(text)?;
        let current = Arc::new(Current {
            watches_spans: AtomicBool::new(rules.watches_spans()),
            rules: RwLock::new(rules),
        });
        Ok((
            LogFilter {
                current: current.clone(),
            },
            FilterHandle { current },
        ))
    }

    /// Whether the rules decide by span, so that sessions must enter theirs on every poll
    /// ([`crate::log_scope`]).
    pub fn watches_spans(&self) -> bool {
        self.current.watches_spans.load(Ordering::Acquire)
    }
}

impl FilterHandle {
    /// Filters by `text` from now on; on an error the old rules stay.
    pub fn set(&self, text: &str) -> Result<(), FilterError> {
        let rules = Rules::parse(text)?;
        let watches = rules.watches_spans();
        // Sessions enter their span on every poll before a filter that decides by span is in force, and stop
        // only once it is gone.
        if watches {
            crate::log_scope::enter_each_poll(true);
        }
        {
            let mut guard = self.current.rules.write().unwrap_or_else(PoisonError::into_inner);
            // Stop passing span hooks before an EnvFilter goes, start only once the new one is in place.
            if !watches {
                self.current.watches_spans.store(false, Ordering::Release);
            }
            *guard = rules;
            if watches {
                self.current.watches_spans.store(true, Ordering::Release);
            }
        }
        if !watches {
            crate::log_scope::enter_each_poll(false);
        }
        // Callsites cache whether they are enabled; ask them all again, as tracing-subscriber's reload does.
        tracing::callsite::rebuild_interest_cache();
        Ok(())
    }
}

impl<S: Subscriber> Layer<S> for LogFilter {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        match &*self.current.rules() {
            Rules::Plain(t) => <Targets as Layer<S>>::register_callsite(t, metadata),
            Rules::Env(e) => <EnvFilter as Layer<S>>::register_callsite(e, metadata),
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        match &*self.current.rules() {
            Rules::Plain(t) => <Targets as Layer<S>>::max_level_hint(t),
            Rules::Env(e) => <EnvFilter as Layer<S>>::max_level_hint(e),
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        match &*self.current.rules() {
            Rules::Plain(t) => t.would_enable(metadata.target(), metadata.level()),
            Rules::Env(e) => <EnvFilter as Layer<S>>::enabled(e, metadata, ctx),
        }
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.current.with_env(|e| e.on_new_span(attrs, id, ctx));
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.current.with_env(|e| e.on_record(id, values, ctx));
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.current.with_env(|e| e.on_enter(id, ctx));
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.current.with_env(|e| e.on_exit(id, ctx));
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.current.with_env(|e| e.on_close(id, ctx));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing::Event;
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach it, by message.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            self.0
                .lock()
                .expect("seen")
                .push(crate::log_scope::message_of(event));
        }
    }

    /// One event per (target, level) pair below, emitted inside a `session` span, named `target:level`.
    fn emit_all() {
        let span = tracing::info_span!("session");
        let _in = span.enter();
        tracing::trace!(target: "pgfleet::frontend", "pgfleet::frontend:trace");
        tracing::debug!(target: "pgfleet::frontend", "pgfleet::frontend:debug");
        tracing::info!(target: "pgfleet::frontend", "pgfleet::frontend:info");
        tracing::debug!(target: "pgfleet::cluster", "pgfleet::cluster:debug");
        tracing::info!(target: "pgfleet::cluster", "pgfleet::cluster:info");
        tracing::warn!(target: "pgfleet::cluster", "pgfleet::cluster:warn");
        tracing::info!(target: "tokio_postgres", "tokio_postgres:info");
        tracing::error!(target: "tokio_postgres", "tokio_postgres:error");
        tracing::debug!(target: "other", "other:debug");
        drop(_in);
        tracing::debug!(target: "pgfleet::frontend", "outside:debug");
    }

    fn seen_with(layer: impl Layer<tracing_subscriber::Registry> + Send + Sync + 'static) -> Vec<String> {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(layer).with(seen.clone());
        tracing::subscriber::with_default(subscriber, emit_all);
        seen.0.lock().expect("seen").clone()
    }

    #[test]
    fn lets_through_what_env_filter_lets_through() {
        // (log.level, whether it is kept as a plain Targets filter)
        let table = [
            ("info", true),
            ("warn", true),
            ("debug", true),
            ("trace", true),
            ("off", true),
            ("pgfleet=debug", true),
            ("pgfleet::cluster=debug,warn", true),
            ("info,tokio_postgres=error", true),
            ("pgfleet::frontend=trace,pgfleet=info", true),
            ("INFO", true),
            ("pgfleet=Debug,Warn", true),
            ("pgfleet::cluster", true),
            ("2", true),
            ("", false),
            ("[session]=debug", false),
            ("info,[session]=trace", false),
            ("warn,pgfleet[session]=debug", false),
        ];
        for (text, plain) in table {
            let env = EnvFilter::try_new(text).expect("EnvFilter accepts it");
            let (ours, _) = LogFilter::new(text).expect("accepted");
            assert_eq!(
                ours.current.rules().watches_spans(),
                !plain,
                "{text}: plain filter expected {plain}"
            );
            assert_eq!(seen_with(ours), seen_with(env), "{text}");
        }
    }

    #[test]
    fn a_new_filter_takes_over_and_a_bad_one_changes_nothing() {
        let _mode = crate::log_scope::MODE_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (filter, handle) = LogFilter::new("info").expect("info");
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(filter).with(seen.clone());
        tracing::subscriber::with_default(subscriber, || {
            emit_all();
            let at_info = seen.0.lock().expect("seen").len();
            assert_eq!(at_info, 5, "{:?}", seen.0.lock().expect("seen"));

            handle.set("[session]=debug").expect("span directive");
            seen.0.lock().expect("seen").clear();
            emit_all();
            assert_eq!(
                *seen.0.lock().expect("seen"),
                [
                    "pgfleet::frontend:debug",
                    "pgfleet::frontend:info",
                    "pgfleet::cluster:debug",
                    "pgfleet::cluster:info",
                    "pgfleet::cluster:warn",
                    "tokio_postgres:info",
                    "tokio_postgres:error",
                    "other:debug",
                ],
                "debug inside the session span only"
            );

            let err = handle.set("pgfleet=loud").expect_err("not a level");
            assert!(err.to_string().contains("pgfleet=loud"), "{err}");
            handle.set("warn").expect("warn");
            seen.0.lock().expect("seen").clear();
            emit_all();
            assert_eq!(
                *seen.0.lock().expect("seen"),
                ["pgfleet::cluster:warn", "tokio_postgres:error"]
            );
        });
    }
}
