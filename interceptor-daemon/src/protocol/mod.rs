//! Wire-protocol codecs.
pub mod http;
#[cfg(test)]
pub(crate) mod mutate;
pub mod mysql;
pub mod postgres;
pub mod redis;
pub mod sniff;
