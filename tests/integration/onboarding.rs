//! Onboarding: `regcache ca cert --fingerprint`, `ca install` without a CA, and scripts/client-setup.sh.
