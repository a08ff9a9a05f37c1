//! One connection type for a single Redis or a Redis Cluster, so the rest of the store is
//! written once. Both variants reconnect by themselves after Redis comes back.

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ClientTlsConfig, Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
use std::time::Duration;

use crate::config::RedisSettings;

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// The certificates `rediss://` connections use, when configured (else the public roots).
fn certificates(settings: &RedisSettings) -> redis::RedisResult<Option<TlsCertificates>> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot read a Redis TLS file",
                format!("{}: {e}", path.display()),
            ))
        })
    };
    let client_tls = match (&settings.tls_cert_file, &settings.tls_key_file) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        _ => None,
    };
    let root_cert = settings.tls_ca_file.as_deref().map(read).transpose()?;
    Ok(
        (client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// The client of a single Redis or of a cluster, as configured; connected to nothing yet.
// Made once at start-up and consumed at once: its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// The client as configured: cluster seeds if given, else the single URL.
fn client(settings: &RedisSettings) -> redis::RedisResult<Client> {
    let certs = certificates(settings)?;
    if settings.cluster_urls.is_empty() {
        return Ok(Client::Single(match certs {
            Some(certs) => redis::Client::build_with_tls(settings.url.expose(), certs)?,
            None => redis::Client::open(settings.url.expose())?,
        }));
    }
    let seeds: Vec<&str> = settings.cluster_urls.iter().map(|u| u.expose()).collect();
    let mut builder = ClusterClient::builder(seeds)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(10));
    if let Some(certs) = certs {
        builder = builder.certs(certs);
    }
    Ok(Client::Cluster(builder.build()?))
}

/// Whether the settings could connect: the URLs parse and the TLS files read (`tiendo
/// check`). Connects to nothing.
pub fn check(settings: &RedisSettings) -> redis::RedisResult<()> {
    client(settings).map(drop)
}

/// Connects as configured: cluster seeds if given, else the single URL.
pub async fn connect(settings: &RedisSettings) -> redis::RedisResult<RedisConn> {
    match client(settings)? {
        Client::Single(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_secs(2)))
                .set_response_timeout(Some(Duration::from_secs(10)))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            // Lazy: tiendo starts while Redis is down and connects when it comes.
            Ok(RedisConn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
        Client::Cluster(client) => Ok(RedisConn::Cluster(client.get_async_connection().await?)),
    }
}

impl RedisConn {
    /// A cluster takes one slot per script call; a single Redis takes a whole batch in one.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
