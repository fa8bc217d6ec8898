//! The data plane's listeners: one thread per core, each with its own event loop, its
//! own listening socket on the same port (SO_REUSEPORT: the kernel spreads connections)
//! and its own upstream connection pool, so a request never hops between threads.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::shutdown::Shutdown;

/// A non-blocking listening socket with SO_REUSEPORT, so several threads can accept
/// on the same port.
pub fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Starts `n` data-plane threads serving `app` on `first`'s address until shutdown;
/// open connections then finish their requests for up to `grace`.
pub fn spawn_threads(
    first: std::net::TcpListener,
    n: usize,
    app: Router,
    shutdown: &Shutdown,
    grace: Duration,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let addr = first.local_addr()?;
    let mut listeners = vec![first];
    for _ in 1..n {
        listeners.push(reuseport_listener(addr)?);
    }
    let mut threads = Vec::with_capacity(n);
    for (i, std_listener) in listeners.into_iter().enumerate() {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        let thread = std::thread::Builder::new()
            .name(format!("switchyard-{i}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("building a data-plane runtime");
                rt.block_on(async move {
                    let listener =
                        TcpListener::from_std(std_listener).expect("registering the listener");
                    serve(listener, app, shutdown, grace).await;
                });
            })?;
        threads.push(thread);
    }
    Ok(threads)
}

/// One thread's accept loop. On shutdown it stops accepting at once and lets open
/// connections finish their requests for up to `grace`.
async fn serve(listener: TcpListener, app: Router, shutdown: Shutdown, grace: Duration) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                // Every request of the connection carries the client's address.
                let addr = crate::pipeline::ClientAddr(peer.ip());
                let app = app.clone();
                let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(addr);
                    tower::ServiceExt::oneshot(app.clone(), req)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// Serves `app` on `listener` (admin, metrics) until shutdown, tracked by it.
pub fn spawn_aux(listener: TcpListener, app: Router, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    });
}
