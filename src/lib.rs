//! regcache: a site appliance that makes container image pulls go through one place.
//!
//! Clients keep their image names (`nvcr.io/nvidia/x:tag`); they point DNS at the appliance and
//! trust its CA. The appliance answers registry names with its own address, terminates TLS with a
//! leaf issued on the fly by a name-constrained local CA, and forwards to the real registry.
//!
//! # Layout
//! - [`config`]: raw TOML (`raw`) → validated [`config::Config`] (`types`): `validate`, `limits`,
//!   `registry` (and the embedded default list), `credentials`, `values`; `problem` prints each
//!   problem as `file:line: why`.
//! - [`app`]: the only module that sees every subsystem: bind, load, run, drain.
//! - [`dns`]: the hickory request handler: intercept table and forwarding.
//! - [`ca`]: CA load-or-create, leaf issuance, the rustls certificate resolver. No networking.
//! - [`cache`]: content-addressed store: verify while writing, atomic rename, LRU, tag map.
//! - [`proxy`]: TLS accept, routing by host, the upstream client, redirects, the access log.
//! - [`admin`]: `/healthz` and `/ca.crt` over plain HTTP.
//! - [`metrics`]: the metric handles and their recorders; `labels`, every name with its HELP text
//!   (`register`), the Prometheus text format (`text`); encoded at `/metrics`.
//! - [`status`]: the status page's figures (`/`, `/api/status`).
//! - [`conn`]: connection bounds shared by the TCP listeners (cap, first-byte and idle timeouts).
//! - [`access`], [`names`]: leaves shared by DNS, CA and proxy (who is served; which names are
//!   ours), so that those three cannot disagree.
//! - [`install`]: `regcache ca install|uninstall` for docker, containerd, podman, the system store.
//! - [`maintenance`]: `regcache cache …` (list, usage, purge, verify) printed for people.
//! - [`cli`]: clap definitions only.
//! - [`sync`]: lock helpers that recover from poisoning (`m.locked()`).
#![forbid(unsafe_code)]

pub mod access;
pub mod admin;
pub mod app;
pub mod ca;
pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod dns;
#[doc(hidden)]
pub mod fuzz_api;
pub mod install;
pub mod maintenance;
pub mod metrics;
pub mod names;
pub mod proxy;
pub mod status;
pub mod sync;
