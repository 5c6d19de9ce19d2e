//! The bare TCP relay of `relay`, on an io_uring runtime (monoio, one thread): the same connection per client
//! and the same bytes copied both ways, but each read and write is a submission to the kernel's ring, and
//! one `io_uring_enter` per turn of the loop submits them all and collects their completions, where the
//! epoll relay makes a system call per read, per write and per wait. Side by side with `relay`, its CPU per
//! transaction says what a thread-per-core io_uring design could save before any of pgfleet's own work.
//!
//! Usage: relay-uring LISTEN_ADDR UPSTREAM_ADDR (RELAY_URING_SETUP=coop, the default, plain or defer)

use std::net::SocketAddr;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt, Splitable};
use monoio::net::{TcpListener, TcpStream};

/// Bytes read at a time: pgbench's requests and answers are far smaller, as pgfleet's reads are.
const BUF_SIZE: usize = 16 * 1024;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: relay-uring LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(std::io::Error::other)?;
    let upstream: SocketAddr = upstream.parse().map_err(std::io::Error::other)?;
    // Without these flags the kernel interrupts the thread to run each completion's work, which cost more
    // CPU per transaction than the epoll relay; with them completions run when the thread enters the kernel
    // anyway. RELAY_URING_SETUP=plain or =defer measures the other choices.
    let mut ring = io_uring::IoUring::builder();
    match std::env::var("RELAY_URING_SETUP").as_deref() {
        Ok("plain") => {}
        Ok("defer") => {
            ring.setup_single_issuer().setup_defer_taskrun();
        }
        _ => {
            ring.setup_coop_taskrun().setup_single_issuer();
        }
    }
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(1024)
        .uring_builder(ring)
        .build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen)?;
        loop {
            let (client, _) = listener.accept().await?;
            monoio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = monoio::spawn(async move { copy(&mut client_read, &mut server_write).await });
                copy(&mut server_read, &mut client_write).await;
                up.await;
            });
        }
    })
}

/// Copies until either side closes or fails, reusing one buffer.
async fn copy<R: AsyncReadRent, W: AsyncWriteRentExt>(from: &mut R, to: &mut W) {
    let mut buf = Vec::with_capacity(BUF_SIZE);
    loop {
        let (read, filled) = from.read(buf).await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let (written, mut emptied) = to.write_all(filled).await;
        if written.is_err() {
            return;
        }
        emptied.clear();
        buf = emptied;
    }
}
