//! A TCP relay put between pgfleet and a node, which can hold back what pgfleet's connections send to the node
//! (`Relay::close`), then let it through one read at a time (`Relay::permit`) or all at once (`Relay::open`).
//! Cancel connections (a `CancelRequest` as their first message) are never held, and the relay counts those
//! the node has closed: PostgreSQL signals the backend before it closes the cancel connection. Tests use it to
//! order what a backend sees, which timing alone cannot do on a busy machine.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::wait_until;

/// The codes of a CancelRequest, an SSLRequest and a GSSENCRequest (protocol.html, "Message Formats").
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// Whether connections' bytes to the node pass, and how many reads may pass while closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Open,
    Closed { permits: usize },
}

struct State {
    gate: watch::Sender<Gate>,
    /// Reads from pgfleet waiting at the closed gate.
    held: AtomicUsize,
    /// Cancel connections the node has closed.
    cancels_done: AtomicUsize,
}

/// A relay listening on 127.0.0.1, forwarding every connection to `target`; stops with the test's runtime.
pub(crate) struct Relay {
    /// The port to give pgfleet as the node's.
    pub port: u16,
    state: Arc<State>,
}

impl Relay {
    /// Starts relaying 127.0.0.1:<port> to `target` (`host:port`), open.
    pub(crate) async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let (gate, _) = watch::channel(Gate::Open);
        let state = Arc::new(State {
            gate,
            held: AtomicUsize::new(0),
            cancels_done: AtomicUsize::new(0),
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let node = match TcpStream::connect(&target).await {
                    Ok(node) => node,
                    Err(_) => continue,
                };
                tokio::spawn(relay_one(client, node, shared.clone()));
            }
        });
        Relay { port, state }
    }

    /// From now on, what pgfleet sends on its connections waits (new connections' included).
    pub(crate) fn close(&self) {
        self.state.gate.send_replace(Gate::Closed { permits: 0 });
    }

    /// Everything passes again, what waited first.
    pub(crate) fn open(&self) {
        self.state.gate.send_replace(Gate::Open);
    }

    /// While closed: one more read of what waits may pass.
    pub(crate) fn permit(&self) {
        self.state.gate.send_modify(|g| {
            if let Gate::Closed { permits } = g {
                *permits += 1;
            }
        });
    }

    /// Waits (up to 10 s) until `n` reads of pgfleet's wait at the closed gate; whether they came.
    pub(crate) async fn wait_held(&self, n: usize) -> bool {
        wait_until(Duration::from_secs(10), async || {
            self.state.held.load(Ordering::SeqCst) >= n
        })
        .await
        .is_some()
    }

    /// Waits (up to 10 s) until the node has closed `n` cancel connections in all; whether it did.
    pub(crate) async fn wait_cancels_done(&self, n: usize) -> bool {
        wait_until(Duration::from_secs(10), async || {
            self.state.cancels_done.load(Ordering::SeqCst) >= n
        })
        .await
        .is_some()
    }
}

async fn relay_one(client: TcpStream, node: TcpStream, state: Arc<State>) {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_node, mut to_node) = node.into_split();
    // The first message, past any SSLRequest or GSSENCRequest the node refuses (pgfleet may ask first).
    let mut first = [0u8; 8];
    let cancel = loop {
        if from_client.read_exact(&mut first).await.is_err() || to_node.write_all(&first).await.is_err() {
            return;
        }
        let (len, code) = (&first[..4], &first[4..]);
        if len == 8u32.to_be_bytes()
            && (code == SSL_REQUEST_CODE.to_be_bytes() || code == GSSENC_REQUEST_CODE.to_be_bytes())
        {
            let mut answer = [0u8; 1];
            if from_node.read_exact(&mut answer).await.is_err() || to_client.write_all(&answer).await.is_err()
            {
                return;
            }
            if answer[0] == b'N' {
                continue;
            }
            // Encrypted from here: relayed like the rest.
            break false;
        }
        break len == 16u32.to_be_bytes() && code == CANCEL_REQUEST_CODE.to_be_bytes();
    };
    if cancel {
        let mut rest = [0u8; 8];
        if from_client.read_exact(&mut rest).await.is_err() || to_node.write_all(&rest).await.is_err() {
            return;
        }
        // The node answers nothing and closes once it has signalled the backend.
        let mut sink = [0u8; 64];
        while matches!(from_node.read(&mut sink).await, Ok(n) if n > 0) {}
        state.cancels_done.fetch_add(1, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_node, &mut to_client).await;
    });
    let mut gate = state.gate.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut counted = false;
        loop {
            gate.borrow_and_update();
            // Taking a permit and reading the gate are one step, so that two reads never take one permit.
            let mut took = false;
            state.gate.send_if_modified(|g| match g {
                Gate::Open => {
                    took = true;
                    false
                }
                Gate::Closed { permits } if *permits > 0 => {
                    *permits -= 1;
                    took = true;
                    true
                }
                Gate::Closed { .. } => false,
            });
            if took {
                break;
            }
            if !counted {
                counted = true;
                state.held.fetch_add(1, Ordering::SeqCst);
            }
            if gate.changed().await.is_err() {
                return;
            }
        }
        if counted {
            state.held.fetch_sub(1, Ordering::SeqCst);
        }
        if to_node.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
