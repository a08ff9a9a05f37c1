//! tiendo: live, exact progress of Vietnam's provinces on Đề án 06.
//!
//! The pipeline, one module a stage, data flowing one way:
//! [`source`] (Kafka) → [`wire`] (plain, framed or JSON) → [`decode`] (validation; bad input to [`deadletter`]) →
//! [`aggregate`] (per batch, in memory) → [`store`] (Redis, atomically with offsets) →
//! [`rules`] (stall detection, alert states in a Redis ledger) → [`notify`] (chat, Kafka) →
//! [`serve`] (metrics, health, the API and the status page).
//! [`pipeline`] runs that loop; [`status`] reads the figures back per province against
//! [`targets`]. Around it: [`config`], [`telemetry`], [`clock`], the code tables in
//! [`provinces`], and for the demo and tests [`embedded`] infrastructure and a [`generator`].

pub mod aggregate;
pub mod buckets;
pub mod catchup;
pub mod chat;
pub mod clock;
pub mod config;
pub mod csv_line;
pub mod deadletter;
pub mod decode;
pub mod demo;
pub mod embedded;
pub mod events;
pub mod generator;
pub mod history;
pub mod jsonschema;
pub mod malloc;
pub mod notify;
pub mod pipeline;
pub mod provinces;
pub mod publish;
pub mod registry;
pub mod report;
pub mod rules;
pub mod run;
pub mod scenario;
pub mod serve;
pub mod source;
pub mod sources;
pub mod status;
pub mod store;
pub mod targets;
pub mod telemetry;
pub mod wire;
