//! Pseudo-terminals for `ipmitool sol activate` (native backend).
