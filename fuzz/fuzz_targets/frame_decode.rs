//! Fuzz target `frame_decode`: arbitrary bytes, cut into arbitrary reads, through the typed-message framing
//! (`FrameBuffer::next_frame` and `FrameBuffer::take_whole_frames`, under an arbitrary size limit), the
//! field readers of `protocol::messages`, and the request assembly that turns client frames into a routing
//! plan (`Request::push`, `Plan::for_request`).
//!
//! Input layout: 2 bytes of size limit (big-endian u16, so tiny limits below a header's 5 bytes happen
//! too), 1 byte seeding the read sizes, then the byte stream a socket would deliver.
//!
//! Invariants (besides "never panics, never loops"):
//! - frames taken one by one re-assemble to exactly the consumed prefix of the stream, each with a
//!   length field that matches its size and a size within the limit; nothing is lost or duplicated:
//!   consumed + still buffered = everything fed;
//! - `take_whole_frames` consumes exactly what `next_frame` does, read by read, reports each frame it
//!   passes over as (type, body) matching its block, leaves no whole frame behind, and fails at the same
//!   read with the same error;
//! - a field reader's answer is literally in the body, NUL-terminated, where the protocol says;
//! - what the proxy builds (Query, ErrorResponse) reads back unchanged;
//! - a request ends exactly at Q, S or H (or the buffering cap) and re-encodes to its frames' bytes.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pgfleet::frontend::request::{End, MAX_BUFFERED_REQUEST, Plan, Request};
use pgfleet::frontend::state::Statements;
use pgfleet::protocol::frame::{FrameBuffer, FrameError};
use pgfleet::protocol::messages::{
    ProxyError, bind_names, command_tag, cstr, error_field, parse_fields, query, query_text, target_name,
};
use pgfleet::router::classify::Target;
use pgfleet::router::functions::FunctionRules;

fuzz_target!(|data: &[u8]| {
    let [hi, lo, seed, stream @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_be_bytes([*hi, *lo]));
    let reads = Reads::new(*seed, stream);

    let mut one_by_one = FrameBuffer::new(limit);
    let mut blocks = FrameBuffer::new(limit);
    let mut fed = 0usize;
    let mut consumed_a = Vec::new();
    let mut consumed_b = Vec::new();
    let mut frames = Vec::new();

    for read in reads {
        fed += read.len();
        one_by_one.read_target().extend_from_slice(read);
        blocks.read_target().extend_from_slice(read);

        // Path A: frame by frame, as the client side reads.
        let error_a = loop {
            match one_by_one.next_frame() {
                Ok(Some(frame)) => {
                    let raw = &frame.raw[..];
                    assert!(raw.len() >= 5 && raw.len() <= limit, "frame size {}", raw.len());
                    assert_eq!(raw[0], frame.kind);
                    let len = i32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
                    assert_eq!(usize::try_from(len).ok(), Some(raw.len() - 1));
                    assert_eq!(frame.body(), &raw[5..]);
                    consumed_a.extend_from_slice(raw);
                    frames.push(frame);
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        assert_eq!(&consumed_a[..], &stream[..consumed_a.len()]);

        // Path B: whole blocks, as the server side streams its output.
        let mut inspected = Vec::new();
        let error_b = match blocks.take_whole_frames(|kind, body| inspected.push((kind, body.to_vec()))) {
            Ok(Some(block)) => {
                check_block(&block, &inspected);
                consumed_b.extend_from_slice(&block);
                // Every whole frame was taken: another call finds none.
                let again = blocks.take_whole_frames(|_, _| {});
                assert!(matches!(again, Ok(None)), "a whole frame was left behind");
                None
            }
            Ok(None) => {
                assert!(inspected.is_empty());
                None
            }
            Err(e) => Some(e),
        };

        check_same_outcome(error_a.as_ref(), error_b.as_ref());
        if error_a.is_some() {
            // A session closes on a framing error; nothing after it is read.
            break;
        }
        assert_eq!(consumed_a, consumed_b);
        assert_eq!(consumed_a.len() + one_by_one.buffered(), fed);
        assert_eq!(blocks.buffered(), one_by_one.buffered());
    }

    for frame in &frames {
        check_readers(frame.body());
    }
    check_builders(stream);
    check_requests(&frames);
});

/// Socket reads of pseudo-random sizes (0 to 66 bytes, empty reads included) chosen by `seed`.
struct Reads<'a> {
    rest: &'a [u8],
    state: u32,
}

impl<'a> Reads<'a> {
    fn new(seed: u8, stream: &'a [u8]) -> Self {
        Reads {
            rest: stream,
            state: u32::from(seed).wrapping_mul(2_654_435_761) | 1,
        }
    }
}

impl<'a> Iterator for Reads<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        // xorshift32: cheap, deterministic, and never stuck at zero since the state starts odd.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let n = (self.state % 67) as usize;
        let (read, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        Some(read)
    }
}

/// The block is exactly the inspected frames, each with its header, back to back.
fn check_block(block: &[u8], inspected: &[(u8, Vec<u8>)]) {
    let mut at = 0;
    for (kind, body) in inspected {
        assert_eq!(block[at], *kind);
        let len = i32::from_be_bytes([block[at + 1], block[at + 2], block[at + 3], block[at + 4]]);
        assert_eq!(usize::try_from(len).ok(), Some(body.len() + 4));
        assert_eq!(&block[at + 5..at + 5 + body.len()], &body[..]);
        at += 5 + body.len();
    }
    assert_eq!(at, block.len());
}

fn check_same_outcome(a: Option<&FrameError>, b: Option<&FrameError>) {
    assert_eq!(a, b, "next_frame and take_whole_frames disagree");
}

/// `s` followed by a NUL sits at `at` in `body`.
fn is_cstr_at(body: &[u8], at: usize, s: &str) -> bool {
    let end = at + s.len();
    !s.contains('\0') && body.get(at..end) == Some(s.as_bytes()) && body.get(end) == Some(&0)
}

fn check_readers(body: &[u8]) {
    for at in [0, 1, 5, body.len().saturating_sub(1), body.len(), body.len() + 1] {
        if let Some((s, next)) = cstr(body, at) {
            assert!(is_cstr_at(body, at, s));
            assert_eq!(next, at + s.len() + 1);
        }
    }
    if let Some(text) = query_text(body) {
        assert!(is_cstr_at(body, 0, text));
    }
    assert_eq!(command_tag(body), query_text(body));
    if let Some((name, text)) = parse_fields(body) {
        assert!(is_cstr_at(body, 0, name) && is_cstr_at(body, name.len() + 1, text));
    }
    if let Some((portal, stmt)) = bind_names(body) {
        assert!(is_cstr_at(body, 0, portal) && is_cstr_at(body, portal.len() + 1, stmt));
    }
    if let Some((kind, name)) = target_name(body) {
        assert_eq!(body.first(), Some(&kind));
        assert!(is_cstr_at(body, 1, name));
    }
    for field in [b'S', b'V', b'C', b'M', b'D', b'H', 0, 0xff] {
        if let Some(value) = error_field(body, field) {
            // Each field is its code byte followed by a C string; the value must be one of those.
            let found = (1..=body.len()).any(|at| body[at - 1] == field && is_cstr_at(body, at, value));
            assert!(found, "error_field({field}) = {value:?} is not in the body");
        }
    }
}

/// Texts taken from the input survive the proxy's own builders and its readers.
fn check_builders(stream: &[u8]) {
    let text = String::from_utf8_lossy(stream).replace('\0', "");
    let frame = query(&text);
    let mut fb = FrameBuffer::new(frame.len());
    fb.read_target().extend_from_slice(&frame);
    let Ok(Some(read)) = fb.next_frame() else {
        panic!("a built Query does not frame");
    };
    assert_eq!(read.kind, b'Q');
    assert_eq!(query_text(read.body()), Some(text.as_str()));

    let mut parts = text.splitn(4, '|');
    let code = parts.next().unwrap_or_default();
    let message = parts.next().unwrap_or_default();
    let mut error = ProxyError::error(code, message);
    if let Some(detail) = parts.next() {
        error = error.with_detail(detail);
    }
    if let Some(hint) = parts.next() {
        error = error.with_hint(hint);
    }
    let encoded = error.encode();
    assert_eq!(encoded[0], b'E');
    let body = &encoded[5..];
    assert_eq!(error_field(body, b'S'), Some("ERROR"));
    assert_eq!(error_field(body, b'C'), Some(code));
    assert_eq!(error_field(body, b'M'), Some(message));
    assert_eq!(error_field(body, b'D'), error.detail.as_deref());
    assert_eq!(error_field(body, b'H'), error.hint.as_deref());
}

/// The frames as the session buffers them into requests and plans them.
fn check_requests(frames: &[pgfleet::protocol::Frame]) {
    let rules = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
    let mut statements = Statements::default();
    let mut request = Request::default();
    for frame in frames {
        let end = request.push(frame.clone());
        let expected = match frame.kind {
            // A function call is answered as a simple query is: its result, then ReadyForQuery.
            b'Q' | b'F' => Some(End::Query),
            b'S' => Some(End::Sync),
            b'H' => Some(End::Open),
            _ if request.bytes > MAX_BUFFERED_REQUEST => Some(End::Open),
            _ => None,
        };
        assert_eq!(end, expected);
        if end.is_none() {
            continue;
        }
        let done = std::mem::take(&mut request);
        let mut scratch = Vec::new();
        let encoded = done.encode(&mut scratch);
        let joined: Vec<u8> = done.frames.iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(&encoded[..], &joined[..]);
        assert_eq!(encoded.len(), done.bytes);
        let plan = Plan::for_request(&done, &statements, &rules);
        let parses = done.frames.iter().filter(|f| f.kind == b'P').count();
        assert_eq!(plan.parses.len(), parses);
        if done.frames.iter().any(|f| f.kind == b'F') {
            assert_eq!(
                plan.target,
                Target::Primary,
                "a function call message went to a replica"
            );
        }
        // As if every Parse succeeded: later Binds and Describes find the statements.
        for (name, statement) in plan.parses {
            statements.insert(&name, statement);
        }
    }
}
