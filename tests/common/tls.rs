//! TLS for tests: certificates from a private CA (made with the openssl command), and a TLS
//! front that ends TLS and passes the bytes on to a plain port.
//!
//! Tansu 0.6 serves no TLS itself (it refuses its own `--cert` with `--key`), so a Kafka broker
//! "over TLS" here is Tansu behind a front, advertising the front's port: every connection a
//! client makes, bootstrap and partition leaders alike, is TLS to the front. The front uses
//! rustls, a TLS stack independent of the OpenSSL inside librdkafka.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

/// A CA, a server certificate for localhost and 127.0.0.1, and a client certificate, as PEM
/// files in a temporary directory: `ca.pem`, `server.pem` and `.key`, `client.pem` and `.key`.
pub struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    pub fn new() -> Certificates {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=tiendo test CA",
            ],
        );
        // Version 3 certificates, as rustls requires: each with its extensions.
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for name in ["server", "client"] {
            let (key, csr, pem, ext) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            let subject = format!("/CN={name}");
            openssl(
                d,
                &[
                    "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj",
                    &subject,
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "2",
                    "-extfile",
                    &ext,
                ],
            );
        }
        Certificates { dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One of the files, by name (`ca.pem`, `server.key`, …).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ends TLS (the server certificate of `Certificates`) on a port and forwards each connection
/// to a plain port, on a thread of its own until dropped.
pub struct TlsFront {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsFront {
    /// Serves `listener`, bound by the caller so that a broker can advertise its port before
    /// the front runs, forwarding to `127.0.0.1:upstream`.
    pub fn start(listener: std::net::TcpListener, certs: &Certificates, upstream: u16) -> TlsFront {
        let chain = CertificateDer::pem_file_iter(certs.path("server.pem"))
            .expect("server.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("server.pem parses");
        let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).expect("server.key");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        listener.set_nonblocking(true).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                tokio::select! {
                    _ = stopped => {}
                    _ = serve(listener, acceptor, upstream) => {}
                }
            });
        });
        TlsFront {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

async fn serve(listener: TcpListener, acceptor: TlsAcceptor, upstream: u16) {
    while let Ok((client, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A client that does not speak TLS fails here, and its connection is closed.
            let Ok(mut tls) = acceptor.accept(client).await else {
                return;
            };
            let Ok(mut plain) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
