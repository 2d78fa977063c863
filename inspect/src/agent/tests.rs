//! The `agent` processing on hand-made inventories: the properties and the
//! overwrite policy, the root disk (hints and the smallest disk ≥ 4 GiB)
//! and local_gb, add_ports / keep_ports, and the refusals.

use serde_json::json;

use super::*;

const U: &str = "1be26c0b-03f2-4d2e-ae87-c02d7f33c123";
const G: u64 = 1 << 30;

fn inventory() -> Dict {
    let v = json!({
        "interfaces": [
            {"name": "lo", "mac_address": "00:00:00:00:00:00", "ipv4_address": "127.0.0.1"},
            {"name": "eth0", "mac_address": "52:54:00:AA:00:01", "ipv4_address": "192.0.2.10"},
            {"name": "eth1", "mac_address": "52:54:00:aa:00:02", "ipv4_address": null},
            {"name": "ib0", "mac_address": "52:54:00:aa:00:03", "ipv4_address": "192.0.2.11",
             "client_id": "ff:00:00:00:00:00:02:00:00:02:c9:00:52:54:00:aa:00:03"},
            {"name": "bad", "mac_address": "not-a-mac"},
        ],
        "cpu": {"count": 4, "architecture": "x86_64", "flags": ["fpu", "vmx", "aes"]},
        "memory": {"physical_mb": 8192, "total": 8589934592_u64},
        "disks": [
            {"name": "/dev/sda", "size": 100 * G, "model": "Big Disk", "rotational": true, "serial": "S1"},
            {"name": "/dev/sdb", "size": 20 * G, "model": "Small SSD", "rotational": false, "serial": "S2"},
            {"name": "/dev/sdc", "size": 2 * G, "model": "tiny", "rotational": false, "serial": "S3"},
        ],
        "boot": {"pxe_interface": "52:54:00:aa:00:01", "current_boot_mode": "bios"},
        "bmc_address": "192.0.2.200",
    });
    v.as_object().unwrap().clone()
}

fn node(props: serde_json::Value, ports: &[(&str, bool)]) -> NodeNow {
    NodeNow {
        uuid: U.into(),
        properties: props.as_object().unwrap().clone(),
        ports: ports
            .iter()
            .map(|(a, pxe)| Port {
                address: (*a).into(),
                pxe_enabled: *pxe,
                client_id: None,
            })
            .collect(),
    }
}

fn run(n: &NodeNow, inv: &Dict, cfg: &AgentConfig) -> Result<Outcome, String> {
    process(n, inv, Dict::new(), cfg)
}

#[test]
fn properties_of_an_empty_node_come_from_the_inventory() {
    let out = run(&node(json!({}), &[]), &inventory(), &AgentConfig::default()).unwrap();
    let p = &out.properties;
    assert_eq!(p["cpus"], 4);
    assert_eq!(p["memory_mb"], 8192);
    assert_eq!(p["cpu_arch"], "x86_64");
    // Smallest disk of at least 4 GiB is sdb (20 GiB): 20 - 1.
    assert_eq!(p["local_gb"], 19);
    assert_eq!(p["capabilities"], "cpu_aes:true,cpu_vt:true,boot_mode:bios");
    assert_eq!(out.plugin_data["root_disk"]["name"], "/dev/sdb");
    assert_eq!(out.plugin_data["local_gb"], 19);
    assert_eq!(out.plugin_data["macs"], json!(["52:54:00:aa:00:01"]));
    assert!(out.plugin_data["all_interfaces"]
        .as_object()
        .unwrap()
        .contains_key("eth1"));
}

#[test]
fn a_property_already_set_is_kept_unless_overwrite_existing() {
    let n = node(
        json!({"cpus": 2, "memory_mb": 1024, "local_gb": "", "capabilities": "boot_mode:uefi,x:y"}),
        &[],
    );
    let cfg = AgentConfig::default();
    let out = run(&n, &inventory(), &cfg).unwrap();
    let p = &out.properties;
    assert!(
        !p.contains_key("cpus") && !p.contains_key("memory_mb"),
        "{p:?}"
    );
    // Empty counts as unset.
    assert_eq!(p["local_gb"], 19);
    assert_eq!(p["cpu_arch"], "x86_64");
    // Existing capability keys keep their values; new ones are added.
    assert_eq!(
        p["capabilities"],
        "boot_mode:uefi,x:y,cpu_aes:true,cpu_vt:true"
    );
    let cfg = AgentConfig {
        overwrite_existing: true,
        ..AgentConfig::default()
    };
    let out = run(&n, &inventory(), &cfg).unwrap();
    assert_eq!(out.properties["cpus"], 4);
    assert_eq!(out.properties["memory_mb"], 8192);
    assert_eq!(
        out.properties["capabilities"],
        "boot_mode:bios,x:y,cpu_aes:true,cpu_vt:true"
    );
    // Nothing that is already equal is sent again.
    let same = node(
        json!({"cpus": 4, "memory_mb": 8192, "cpu_arch": "x86_64", "local_gb": 19,
               "capabilities": "cpu_aes:true,cpu_vt:true,boot_mode:bios"}),
        &[],
    );
    let out = run(&same, &inventory(), &cfg).unwrap();
    assert!(out.properties.is_empty(), "{:?}", out.properties);
}

#[test]
fn root_device_hints_choose_the_disk() {
    let cfg = AgentConfig::default();
    let cases = [
        (json!({"name": "/dev/sda"}), 99),
        (json!({"model": "big disk"}), 99),
        (json!({"size": 100}), 99),
        (json!({"size": ">= 50"}), 99),
        (json!({"size": "<= 30"}), 19),
        (json!({"rotational": false, "size": ">= 4"}), 19),
        (json!({"rotational": "false"}), 19),
        (json!({"serial": "<or> S9 <or> S1"}), 99),
        (json!({"model": "<in> ssd"}), 19),
        // A hinted disk under 1 GiB of whole size still counts: 2 GiB - 1.
        (json!({"serial": "s3"}), 1),
    ];
    for (hints, want) in cases {
        let n = node(json!({ "root_device": hints }), &[]);
        let out = run(&n, &inventory(), &cfg).unwrap_or_else(|e| panic!("{hints}: {e}"));
        assert_eq!(out.properties["local_gb"], want, "{hints}");
    }
    let no_spacing = AgentConfig {
        disk_partitioning_spacing: false,
        ..AgentConfig::default()
    };
    let n = node(json!({"root_device": {"name": "/dev/sda"}}), &[]);
    assert_eq!(
        run(&n, &inventory(), &no_spacing).unwrap().properties["local_gb"],
        100
    );
}

#[test]
fn hints_that_match_nothing_or_are_malformed_fail_the_inspection() {
    let cfg = AgentConfig::default();
    let e = run(
        &node(json!({"root_device": {"serial": "nope"}}), &[]),
        &inventory(),
        &cfg,
    )
    .unwrap_err();
    assert_eq!(
        e,
        format!("No disks satisfied root device hints for node {U}")
    );
    for (bad, says) in [
        (json!({"colour": "red"}), "The hints \"colour\" are invalid"),
        (json!({"size": "big"}), "\"size\" is not an integer value"),
        (json!({"size": 0}), "\"size\" should be a positive integer"),
        (json!({"model": 5}), "\"model\" is not a string value"),
        (
            json!({"rotational": "maybe"}),
            "\"rotational\" is not a Boolean",
        ),
        (json!("sda"), "must be a JSON object"),
    ] {
        let e = run(
            &node(json!({ "root_device": bad }), &[]),
            &inventory(),
            &cfg,
        )
        .unwrap_err();
        assert!(
            e.starts_with("No disks could be found using root device hints") && e.contains(says),
            "{bad}: {e}"
        );
    }
}

#[test]
fn without_a_disk_of_4_gib_the_node_is_diskless() {
    let mut inv = inventory();
    inv.insert("disks".into(), json!([{"name": "/dev/sdc", "size": 3 * G}]));
    let out = run(&node(json!({}), &[]), &inv, &AgentConfig::default()).unwrap();
    assert_eq!(out.properties["local_gb"], 0);
    assert!(!out.plugin_data.contains_key("root_disk"));
    assert_eq!(local_gb(None, true), 0);
    let small = json!({"size": G / 2}).as_object().unwrap().clone();
    assert_eq!(local_gb(Some(&small), true), 0);
}

fn macs(ports: &[Port]) -> Vec<&str> {
    ports.iter().map(|p| p.address.as_str()).collect()
}

#[test]
fn add_ports_chooses_which_macs_become_ports() {
    let n = node(json!({}), &[]);
    let with = |add| AgentConfig {
        add_ports: add,
        ..AgentConfig::default()
    };
    let out = run(&n, &inventory(), &with(AddPorts::Pxe)).unwrap();
    assert_eq!(macs(&out.add_ports), ["52:54:00:aa:00:01"]);
    assert!(out.add_ports[0].pxe_enabled);
    let out = run(&n, &inventory(), &with(AddPorts::Active)).unwrap();
    assert_eq!(
        macs(&out.add_ports),
        ["52:54:00:aa:00:01", "52:54:00:aa:00:03"]
    );
    assert_eq!(
        out.add_ports[1].client_id.as_deref(),
        Some("ff:00:00:00:00:00:02:00:00:02:c9:00:52:54:00:aa:00:03")
    );
    let out = run(&n, &inventory(), &with(AddPorts::All)).unwrap();
    assert_eq!(
        macs(&out.add_ports),
        [
            "52:54:00:aa:00:01",
            "52:54:00:aa:00:02",
            "52:54:00:aa:00:03"
        ]
    );
    assert!(!out.add_ports[1].pxe_enabled);
    let out = run(&n, &inventory(), &with(AddPorts::Disabled)).unwrap();
    assert!(out.add_ports.is_empty());
    // Without boot.pxe_interface, `pxe` cannot tell: every interface.
    let mut inv = inventory();
    inv.remove("boot");
    let out = run(&n, &inv, &with(AddPorts::Pxe)).unwrap();
    assert_eq!(out.add_ports.len(), 3);
    assert!(out.add_ports.iter().all(|p| !p.pxe_enabled));
}

#[test]
fn keep_ports_and_pxe_enabled_updates() {
    // One port the inventory shows (not PXE-flagged yet), one it does not.
    let n = node(
        json!({}),
        &[("52:54:00:aa:00:02", true), ("52:54:00:ff:ff:ff", false)],
    );
    let with = |keep| AgentConfig {
        keep_ports: keep,
        ..AgentConfig::default()
    };
    let out = run(&n, &inventory(), &with(KeepPorts::All)).unwrap();
    assert_eq!(macs(&out.add_ports), ["52:54:00:aa:00:01"]);
    assert!(out.delete_ports.is_empty());
    // eth1 did not PXE boot: its port's pxe_enabled goes false.
    assert_eq!(out.update_ports.len(), 1);
    assert_eq!(out.update_ports[0].address, "52:54:00:aa:00:02");
    assert!(!out.update_ports[0].pxe_enabled);
    let out = run(&n, &inventory(), &with(KeepPorts::Present)).unwrap();
    assert_eq!(out.delete_ports, ["52:54:00:ff:ff:ff"]);
    let out = run(&n, &inventory(), &with(KeepPorts::Added)).unwrap();
    assert_eq!(out.delete_ports, ["52:54:00:aa:00:02", "52:54:00:ff:ff:ff"]);
    let keep_pxe = AgentConfig {
        update_pxe_enabled: false,
        ..AgentConfig::default()
    };
    assert!(run(&n, &inventory(), &keep_pxe)
        .unwrap()
        .update_ports
        .is_empty());
    // A port that exists already is not added again.
    let n = node(json!({}), &[("52:54:00:aa:00:01", true)]);
    let out = run(&n, &inventory(), &AgentConfig::default()).unwrap();
    assert!(out.add_ports.is_empty() && out.update_ports.is_empty());
}

#[test]
fn ramdisk_errors_and_bad_inventories_fail_with_ironics_words() {
    let cfg = AgentConfig::default();
    let n = node(json!({}), &[]);
    let mut pd = Dict::new();
    pd.insert("error".into(), "disk on fire".into());
    assert_eq!(
        process(&n, &inventory(), pd, &cfg).unwrap_err(),
        "Ramdisk reported error: disk on fire"
    );
    let mut inv = inventory();
    inv.remove("interfaces");
    assert!(run(&n, &inv, &cfg)
        .unwrap_err()
        .contains("no interfaces present in inventory"));
    let mut inv = inventory();
    inv.insert(
        "interfaces".into(),
        json!([{"name": "lo", "mac_address": "00:00:00:00:00:00", "ipv4_address": "127.0.0.1"}]),
    );
    let e = run(
        &n,
        &inv,
        &AgentConfig {
            add_ports: AddPorts::Active,
            ..cfg.clone()
        },
    )
    .unwrap_err();
    assert!(
        e.contains("no network interfaces match the configuration (add_ports set to \"active\")"),
        "{e}"
    );
    let mut inv = inventory();
    inv.remove("cpu");
    assert!(run(&n, &inv, &cfg)
        .unwrap_err()
        .contains("malformed or missing CPU architecture"));
    let mut inv = inventory();
    inv.remove("memory");
    assert!(run(&n, &inv, &cfg)
        .unwrap_err()
        .contains("missing memory information"));
    let bad_caps = node(json!({"capabilities": "boot_mode"}), &[]);
    assert!(run(&bad_caps, &inventory(), &cfg)
        .unwrap_err()
        .contains("Invalid capabilities string 'boot_mode'."));
}

#[test]
fn the_ramdisks_logs_are_not_kept() {
    let mut pd = Dict::new();
    pd.insert("logs".into(), "H4sIAAAA".into());
    pd.insert("extra".into(), json!({"k": 1}));
    let out = process(
        &node(json!({}), &[]),
        &inventory(),
        pd,
        &AgentConfig::default(),
    )
    .unwrap();
    assert!(!out.plugin_data.contains_key("logs"));
    assert_eq!(out.plugin_data["extra"], json!({"k": 1}));
}

#[test]
fn pxelinux_style_pxe_interface_is_understood() {
    let mut inv = inventory();
    inv.insert(
        "boot".into(),
        json!({"pxe_interface": "01-52-54-00-aa-00-02"}),
    );
    let out = run(&node(json!({}), &[]), &inv, &AgentConfig::default()).unwrap();
    assert_eq!(macs(&out.add_ports), ["52:54:00:aa:00:02"]);
}
