//! interceptor: a node-level access-governance interceptor for machine identities.
//!
//! Data flows one way through the modules:
//! `redirect` (kernel programs and maps) → `listener` (accept, recover the original
//! destination, attribute to a cgroup via `cgroups`) → `forward` (upstream and byte
//! pump). `config` feeds them all; `daemon` wires them; `testbed` builds real
//! network-namespace + veth + cgroup "pods" for tests, the demo and benchmarks.
pub mod admin;
pub mod admin_socket;
pub mod approvals;
pub mod audit;
pub mod bufpool;
pub mod cgroups;
pub mod config;
pub mod daemon;
pub mod forward;
pub mod handover;
pub mod httpproxy;
pub mod identity;
pub mod kv;
pub mod listener;
pub mod live;
pub mod masking;
pub mod metrics;
pub mod mysqlauth;
pub mod mysqlproxy;
pub mod pgauth;
pub mod pgproxy;
pub mod policy;
pub mod protocol;
pub mod recording;
pub mod redirect;
pub mod redisproxy;
pub mod session;
pub mod sql;
pub mod status;
pub mod telemetry;
pub mod testbed;
