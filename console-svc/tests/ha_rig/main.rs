//! High availability end to end: several `console-svc` processes (the
//! built binary) coordinating through the rig's real etcd, serving a rig
//! BMC's serial console.
//!
//! ```sh
//! cargo build -p console-svc && PORTHOLE_RIG_JSON=/tmp/rigrun/rig.json \
//!     cargo test -p console-svc --test ha_rig -- --test-threads 1
//! ```
//!
//! The rig is `shared/rig` (`rig-up.sh`; one etcd member and one BMC are
//! enough). Without `PORTHOLE_RIG_JSON` every scenario skips, unless
//! `PORTHOLE_REQUIRE_PEERS` is set. The 3-member scenario starts a rig of
//! its own (`RIG_ETCD_MEMBERS=3`, base port 33000).
//!
//! Each replica has its own loopback address (127.0.0.2, .3, .4) for gRPC
//! and console ports, so replicas never collide on a port and the checker
//! can tell who serves: it samples the listening sockets (`ss`) of the
//! console port throughout, counting only the replicas' own addresses, and
//! fails if two replicas ever listen at once. Each test has its own etcd
//! prefix and a console port range leased free (`PORTHOLE_HA_PORT_BASE`,
//! default 27000), and leases its BMC with the `flock` the other rig tests
//! use. Every BMC action of every replica is recorded (an ipmitool wrapper)
//! and judged against what the test did to the replicas and what etcd
//! showed: a scenario fails if a replica acted past its lease deadline.
//!
//! The scenarios, one module a group: [`takeover`] (kill -9 and SIGTERM of
//! the owner), [`paused`] (the owner SIGSTOPped past the TTL, both backends;
//! kill -9 of a socat owner), [`fencing`] (cut off from etcd, etcd gone,
//! nobody can serve),
//! [`drain`], [`three_members`] (3-member etcd: a follower stopped, the
//! leader killed, quorum lost) and [`bench`] (ignored, by hand).
//! [`replicas`] (shared with `cluster_api`) starts the replicas; [`support`]
//! has this suite's options and watches who listens; [`rig3`] is the
//! 3-member rig.

#[path = "../support/bmc_recorder.rs"]
mod bmc_recorder;
#[path = "../common/mod.rs"]
mod common;
#[path = "../support/etcd_proxy.rs"]
mod etcd_proxy;
#[path = "../support/replicas.rs"]
mod replicas;
mod rig3;
mod support;

mod bench;
mod drain;
mod fencing;
mod paused;
mod takeover;
mod three_members;
