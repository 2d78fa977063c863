//! Test harness: real peers from ../shared/rig, console-svc processes, clients.
