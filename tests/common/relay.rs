//! A TCP relay in front of a server whose client-to-server direction can be held: what clients
//! send while it is held reaches the server only on release, after whatever other clients sent
//! meanwhile. That is a write delayed on its way, as a paused process's write can be.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Relay {
    port: u16,
    held: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Relay {
    /// Relays a free local port to `upstream` on 127.0.0.1, passing everything on until held.
    pub async fn start(upstream: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("relay binds");
        let port = listener.local_addr().expect("relay address").port();
        let (held, _) = watch::channel(false);
        let gate = held.subscribe();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, upstream, gate.clone()));
            }
        });
        Relay {
            port,
            held,
            accepting,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From now on, what clients send waits in the relay (and is lost if the relay is
    /// dropped before [`Relay::release`]).
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Passes on what waited, in order, and everything after it.
    pub fn release(&self) {
        self.held.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn relay(client: TcpStream, upstream: u16, mut gate: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Read while held, or held since: the bytes wait here until release.
            let open = gate.wait_for(|held| !*held).await.is_ok();
            if !open || to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}
