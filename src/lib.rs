//! regcache: a site appliance that makes container image pulls go through one place.
//!
//! Clients keep their image names (`nvcr.io/nvidia/x:tag`); they point DNS at the appliance and
//! trust its CA. The appliance answers registry names with its own address, terminates TLS with a
//! leaf issued on the fly by a name-constrained local CA, and forwards to the real registry.
//!
//! # Layout
//! - [`config`]: raw TOML (`raw`) → validated [`config::Config`] (`types`): `validate`, `limits`,
//!   `registry` (and the embedded default list), `credentials`, `values`, `rules`
//!   (`[[cache.rule]]`, with its matchers `glob` and `tag_regex`), `fleet`; `problem` prints each
//!   problem as `file:line: why`.
//! - [`app`]: the only module that sees every subsystem: bind, load, run, drain.
//! - [`dns`]: the intercept table and forwarding (hickory's request handler), with a fast path
//!   for intercepted names over UDP (answers encoded once per configuration, a task per core).
//! - [`ca`]: the local CA, no networking: `authority` (load or create, name constraints),
//!   `leaf` (issuance, the bounded leaf cache, the wildcard budget, pinned configured leaves),
//!   `resolver` (the rustls certificate resolver).
//! - [`cache`]: content-addressed store in small parts: the index and claims (`store`, `index`),
//!   room and LRU eviction (`room`), fills (`fill`, `writer`), readers, tags (`tags`, `tag_map`,
//!   `tag_files`), maintenance, the write pause (`health`).
//! - [`proxy`]: listeners and TLS accept; each request routed by host and classified once into a
//!   typed endpoint, handled in the endpoint's file, with authorization and offline policy in
//!   files of their own; one `Upstream` for every request to a registry or CDN; the cache outcome
//!   travels with the response to the access log, metrics and status page; `peer` forwards a
//!   cold object to its owner among the fleet's appliances (`[fleet]`) and takes over when it
//!   fails.
//! - [`tier`]: the shared tier (`[storage]`): the fleet's S3-compatible store behind the local
//!   cache, over `object_store`: keys by digest, verified uploads in the background, the
//!   store's health and backoff.
//! - [`admin`]: the admin listener over plain HTTP: status page, `/healthz`, `/metrics`,
//!   `/ca.crt`, `/registries`; its connections bounded by [`conn`] like the proxy's.
//! - [`metrics`]: the metric handles and their recorders; `labels`, every name with its HELP text
//!   (`register`), the Prometheus text format (`text`); encoded at `/metrics`.
//! - [`status`]: the status page's figures (`/`, `/api/status`), with each freshness rule's
//!   tag counts (`tag_rules`).
//! - [`conn`]: connection bounds shared by the TCP listeners: `slots` (the cap; the idlest gives
//!   way and its slot is handed over once it closes), `activity` (first-byte, idle and stall
//!   timeouts), `io` (the IO wrapper and body guard that feed them).
//! - [`access`], [`names`]: leaves shared by DNS, CA and proxy (who is served; which names are
//!   ours), so that those three cannot disagree.
//! - [`install`]: `regcache ca install|uninstall` for docker, containerd, podman, the system store.
//! - [`reference`]: image references and platforms as `docker pull` reads them (a leaf).
//! - [`warm`]: `regcache warm`: a registry client of the appliance that pulls images into its
//!   cache (through a running appliance, or one of its own on loopback).
//! - [`maintenance`]: `regcache cache …` (list, usage, purge, verify) printed for people or as JSON;
//!   [`output`]: `--json` documents and the JSON error object; [`progress`]: the live progress line.
//! - [`cli`]: clap definitions only (`--config` also from `$REGCACHE_CONFIG`).
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
pub mod output;
pub mod progress;
pub mod proxy;
pub mod reference;
pub mod status;
pub mod sync;
pub mod tier;
pub mod warm;
