//! Wire-protocol codecs.
pub mod postgres;
