//! A bare TCP relay: every accepted client gets its own connection to the upstream server, and bytes are
//! copied both ways unchanged (no parsing, no pooling). On a tokio current-thread runtime, as pgfleet's session
//! workers are, so that its CPU per transaction is the floor of any proxy built on that runtime: what the
//! runtime, the sockets and the wake-ups cost, without anything pgfleet decides.
//!
//! Usage: relay LISTEN_ADDR UPSTREAM_ADDR

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
    let upstream: SocketAddr = upstream.parse().map_err(std::io::Error::other)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await?;
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                loop {
                    let (mut client, _) = listener.accept().await?;
                    tokio::task::spawn_local(async move {
                        let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            })
            .await
    })
}
