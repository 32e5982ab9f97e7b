//! The integration tests: one binary. Each module starts the appliance in-process on port 0 with a
//! temp state dir, against an in-process fake upstream registry (TLS, CA minted at test time) and a
//! fake upstream resolver.

mod support;

mod binary;
mod cache;
mod cli_json;
mod dns;
mod fallback;
mod fallback_outage;
mod fleet;
mod listeners;
mod metrics;
mod mirror;
mod onboarding;
mod private_cache;
mod proxy;
mod rules;
mod shared_tier;
mod shared_tier_s3;
mod status_page;
mod trust;
mod upstream_proxy;
mod warm;
