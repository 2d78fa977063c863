//! The console API of a cluster of replicas (etcd coordination), end to
//! end: several `console-svc` processes (the built binary) on the rig's real
//! etcd and BMCs. What any replica must answer the same way:
//!
//! - GetConsoleLog on a replica that does not own the console (forwarded to
//!   the owner; UNAVAILABLE naming the owner when it does not answer);
//! - grpc.health.v1 NOT_SERVING once a replica is drained (it still answers);
//! - created_at / updated_at: when the spec was first written and last
//!   changed, the same from every replica and every call;
//! - a replica that lost etcd and rejoins claims consoles in rank order.
//!
//! ```sh
//! RIG_RUN_DIR=/tmp/capi-rig RIG_BASE_PORT=37000 bash ../shared/rig/rig-up.sh
//! cargo build -p console-svc && PORTHOLE_RIG_JSON=/tmp/capi-rig/rig.json \
//!     cargo test -p console-svc --test cluster_api
//! ```
//!
//! Replicas listen on 127.0.0.12 and up; each scenario leases 20 free console
//! ports (see `bmc_recorder::PortLease`), has its own etcd prefix and leases
//! the BMC it uses with the `flock` the other rig tests use; every BMC action
//! is recorded and judged as in `ha_rig`. Without
//! `PORTHOLE_RIG_JSON` every scenario skips (unless `PORTHOLE_REQUIRE_PEERS`).
//! [`replicas`] (shared with `ha_rig`) starts the replicas; [`support`] has
//! this suite's options and probes.

#[path = "../support/bmc_recorder.rs"]
mod bmc_recorder;
#[path = "../common/mod.rs"]
mod common;
#[path = "../support/etcd_proxy.rs"]
mod etcd_proxy;
#[path = "../support/replicas.rs"]
mod replicas;
mod support;

mod health;
mod log;
mod placement;
mod ports;
mod times;
