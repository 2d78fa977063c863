"""nova 34's real ironic virt driver against a Porthole conductor.

Driven by conductor/tests/nova_ironic.rs (which starts the conductor and
enrolls the node); run with the Python of the venv that scripts/venv.sh
creates (nova==34.0.0, openstacksdk). What is real and what is stubbed:

- real: ``nova.virt.ironic.driver.IronicDriver`` and everything below it
  (openstacksdk's baremetal proxy, keystoneauth, nova's config drive builder
  running ``mkisofs_cmd``), configured only through nova's own options in a
  nova.conf this script writes (``[ironic] auth_type = none`` and
  ``endpoint_override``); nova's own database code on a sqlite file made by
  nova's own ``db_sync`` (instances, services), as nova-compute has it.
- stubbed: Glance (the image is an ``ImageMeta`` built here, what Glance
  would have answered), Neutron (the ``NetworkInfo`` of one port is built
  here; security groups are an empty list) and Placement (the
  ``ProviderTree`` that ``update_provider_tree`` fills is made here, with
  the compute node's provider in it, as the resource tracker makes it from
  Placement's answer).

The steps are nova-compute's, in its order: the periodic resource update
(``get_available_nodes``, ``get_available_resource``,
``update_provider_tree``), then a build (``prepare_for_spawn`` reserves the
node by ``instance_uuid``, ``prepare_networks_before_block_device_mapping``
attaches the VIF, ``spawn`` with a config drive), the periodic update again,
``destroy``, and (once the node is ``available`` again) the periodic update
once more. A failed VIF attach or spawn
is followed by ``failed_spawn_cleanup``, as the compute manager does.

Output: one JSON object in the file ``--out`` names (nova logs to stderr): ``steps`` (what each step saw, in order;
a failed step has ``error`` and is the last one) and ``http`` (every request
the driver made and the answer's status and body, so a failure names the
exact request). Usage:

    nova_ironic.py --ironic URL --node UUID --workdir DIR --out FILE
                   [--step-timeout S] [--mkisofs CMD]
"""

import argparse
import json
import os
import signal
import traceback
import uuid


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--ironic", required=True)
    p.add_argument("--node", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--step-timeout", type=int, default=60)
    p.add_argument("--mkisofs", default="genisoimage")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--trait",
        action="append",
        default=[],
        help="a trait the flavor requires (trait:NAME=required)",
    )
    return p.parse_args()


def write_conf(args):
    """nova.conf: nova-compute's own options, nothing set from code."""
    path = os.path.join(args.workdir, "nova.conf")
    db = os.path.join(args.workdir, "nova.sqlite")
    api_db = os.path.join(args.workdir, "nova_api.sqlite")
    with open(path, "w") as f:
        f.write(f"""[DEFAULT]
host = porthole-compute
state_path = {args.workdir}
compute_driver = ironic.IronicDriver
mkisofs_cmd = {args.mkisofs}
transport_url = fake://
debug = true
use_stderr = true

[ironic]
auth_type = none
endpoint_override = {args.ironic}
api_retry_interval = 1
api_max_retries = {args.step_timeout}

[database]
connection = sqlite:///{db}

[api_database]
connection = sqlite:///{api_db}

[oslo_concurrency]
lock_path = {args.workdir}/locks
""")
    return path


class HttpLog:
    """Every request the driver's session sends, with the answer."""

    def __init__(self):
        self.entries = []

    def install(self):
        import requests

        orig = requests.Session.request
        log = self.entries

        def request(session, method, url, *a, **kw):
            body = kw.get("data") or kw.get("json")
            if isinstance(body, bytes):
                body = body.decode("utf-8", "replace")
            entry = {"method": method, "url": url}
            if body is not None:
                entry["body"] = short(body)
            headers = kw.get("headers") or {}
            mv = headers.get("X-OpenStack-Ironic-API-Version") or headers.get(
                "OpenStack-API-Version"
            )
            if mv:
                entry["microversion"] = mv
            try:
                resp = orig(session, method, url, *a, **kw)
            except Exception as e:  # the conductor did not answer
                entry["exception"] = repr(e)
                log.append(entry)
                raise
            entry["status"] = resp.status_code
            entry["answer"] = short(resp.text)
            log.append(entry)
            return resp

        requests.Session.request = request


def short(text, limit=1500):
    if not isinstance(text, str):
        text = json.dumps(text)
    if "configdrive" in text and len(text) > limit:
        # the gzipped ISO is long and says nothing to a reader
        try:
            obj = json.loads(text)
            if isinstance(obj, dict) and "configdrive" in obj:
                obj["configdrive"] = "<%d base64 chars>" % len(obj["configdrive"])
                text = json.dumps(obj)
        except ValueError:
            pass
    return text if len(text) <= limit else text[:limit] + "...<cut>"


class StepTimeout(Exception):
    pass


def on_alarm(signum, frame):
    raise StepTimeout("step took longer than its timeout")


def main():
    args = parse()
    os.makedirs(os.path.join(args.workdir, "locks"), exist_ok=True)
    conf_path = write_conf(args)
    http = HttpLog()
    http.install()
    out = {"steps": [], "http": http.entries}
    try:
        run(args, conf_path, out["steps"])
    except BaseException:  # reported below, as the last step's error
        pass
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1, default=str)


def run(args, conf_path, steps):
    def step(name, fn):
        signal.signal(signal.SIGALRM, on_alarm)
        signal.alarm(args.step_timeout)
        entry = {"step": name}
        steps.append(entry)
        try:
            entry["saw"] = fn()
        except BaseException as e:
            entry["error"] = "%s: %s" % (type(e).__name__, e)
            entry["traceback"] = traceback.format_exc()[-3000:]
            raise
        finally:
            signal.alarm(0)
        return entry["saw"]

    ctx = {}
    step("setup", lambda: setup(conf_path, ctx))
    step("periodic_before", lambda: periodic(ctx, args.node))
    step("prepare_for_spawn", lambda: prepare(ctx, args.node, args.trait))
    try:
        step("plug_vifs", lambda: plug(ctx))
        step("spawn", lambda: spawn(ctx))
    except BaseException:
        # the compute manager's answer to a failed build
        step(
            "failed_spawn_cleanup",
            lambda: ctx["driver"].failed_spawn_cleanup(ctx["instance"]),
        )
        raise
    step("periodic_active", lambda: periodic(ctx, args.node))
    step("destroy", lambda: destroy(ctx))
    # destroy returns once the node is cleaning or available (nova's own
    # rule); nova-compute's next periodic pass comes later, with it available
    step("wait_available", lambda: wait_available(ctx, args.node))
    step("periodic_after", lambda: periodic(ctx, args.node))


def setup(conf_path, ctx):
    from oslo_log import log as logging

    from nova import config
    import nova.conf
    from nova import context as nova_context
    from nova.db import migration
    from nova import objects

    CONF = nova.conf.CONF
    # nova-compute's own start-up; the bus is oslo.messaging's fake://
    # driver and notifications are off (no driver), as nova's defaults
    config.parse_args(["nova-compute", "--config-file", conf_path])
    logging.setup(CONF, "nova")  # to stderr, which the Rust test shows
    objects.register_all()
    migration.db_sync(database="api")
    migration.db_sync(database="main")

    # Neutron's part of the config drive: the instance's security groups.
    from nova.network import security_group_api

    security_group_api.get_instance_security_groups = lambda c, i: []

    from nova.virt.ironic import driver as ironic_driver
    from nova.virt import fake as fake_virt

    ctx["CONF"] = CONF
    ctx["context"] = nova_context.get_admin_context()
    ctx["driver"] = ironic_driver.IronicDriver(fake_virt.FakeVirtAPI())
    ctx["driver"].init_host(CONF.host)
    return {"host": CONF.host}


def periodic(ctx, node_id):
    """What the resource tracker's update_available_resource asks."""
    from nova.compute import provider_tree

    d = ctx["driver"]
    nodes = d.get_available_nodes()
    saw = {"available_nodes": nodes}
    if node_id not in nodes:
        return saw
    res = d.get_available_resource(node_id)
    if "compute_node" not in ctx:
        ctx["compute_node"] = compute_node(ctx, res)
    saw["resource"] = {
        k: res.get(k)
        for k in (
            "uuid",
            "hypervisor_hostname",
            "hypervisor_type",
            "resource_class",
            "vcpus",
            "memory_mb",
            "local_gb",
            "supported_instances",
            "stats",
        )
    }
    # Placement's side: the provider the resource tracker found there.
    pt = provider_tree.ProviderTree()
    pt.new_root(node_id, node_id)
    d.update_provider_tree(pt, node_id)
    data = pt.data(node_id)
    saw["inventory"] = data.inventory
    saw["traits"] = sorted(data.traits)
    saw["instance_uuids"] = d.list_instance_uuids()
    return saw


def compute_node(ctx, res):
    """The service and compute node records the resource tracker creates
    on its first pass (``_init_compute_node``) from the driver's answer."""
    from nova import objects

    svc = objects.Service(ctx["context"])
    svc.host = ctx["CONF"].host
    svc.binary = "nova-compute"
    svc.topic = "compute"
    svc.report_count = 0
    svc.create()
    cn = objects.ComputeNode(ctx["context"])
    cn.host = ctx["CONF"].host
    cn.service_id = svc.id
    cn.update_from_virt_driver(res)
    cn.cpu_info = cn.cpu_info or "{}"  # ironic's None; the column is NOT NULL
    cn.free_ram_mb = cn.memory_mb - cn.memory_mb_used
    cn.free_disk_gb = cn.local_gb - cn.local_gb_used
    cn.current_workload = 0
    cn.running_vms = 0
    cn.stats = res.get("stats") or {}
    cn.create()
    return cn


def prepare(ctx, node_id, traits):
    from nova import objects
    from nova.compute import vm_states

    flavor = objects.Flavor(
        id=7,
        flavorid="bm-gold",
        name="bm.gold",
        memory_mb=1024,
        vcpus=1,
        root_gb=10,
        ephemeral_gb=0,
        swap=0,
        rxtx_factor=1.0,
        vcpu_weight=0,
        disabled=False,
        is_public=True,
        description=None,
        extra_specs={
            "resources:CUSTOM_BAREMETAL_GOLD": "1",
            "resources:VCPU": "0",
            "resources:MEMORY_MB": "0",
            "resources:DISK_GB": "0",
            **{"trait:" + t: "required" for t in traits},
        },
    )
    image_id = str(uuid.uuid4())
    # Glance's answer for the image, as nova keeps it in system_metadata.
    inst = objects.Instance(
        context=ctx["context"],
        uuid=str(uuid.uuid4()),
        display_name="porthole-nova-1",
        hostname="porthole-nova-1",
        host=ctx["CONF"].host,
        node=node_id,
        compute_id=ctx["compute_node"].id,
        project_id="project-1",
        user_id="user-1",
        image_ref=image_id,
        config_drive="True",
        vm_state=vm_states.BUILDING,
        task_state="spawning",
        flavor=flavor,
        old_flavor=None,
        new_flavor=None,
        system_metadata={
            "image_disk_format": "qcow2",
            "image_container_format": "bare",
            "image_min_disk": "0",
            "image_min_ram": "0",
            "owner_project_name": "demo",
            "owner_user_name": "demo",
        },
        metadata={"purpose": "porthole"},
        user_data=None,
        key_data=None,
        launched_at=None,
        availability_zone="nova",
    )
    inst.create()
    ctx["instance"] = inst
    ctx["image_meta"] = objects.ImageMeta.from_dict(
        {
            "id": image_id,
            "name": "porthole-image",
            "disk_format": "qcow2",
            "container_format": "bare",
            "properties": {},
        }
    )
    ctx["network_info"] = network_info()
    ctx["driver"].prepare_for_spawn(inst)
    return {"instance_uuid": inst.uuid, "image": image_id}


def network_info():
    """Neutron's port for the instance, as nova's network API renders it."""
    from nova.network import model

    subnet = model.Subnet(
        cidr="192.0.2.0/24",
        gateway=model.IP(address="192.0.2.1", type="gateway"),
        ips=[model.FixedIP(address="192.0.2.20")],
        dns=[model.IP(address="192.0.2.53", type="dns")],
        routes=[],
    )
    net = model.Network(
        id=str(uuid.uuid4()),
        bridge=None,
        label="provision",
        subnets=[subnet],
        meta={"mtu": 1500},
    )
    vif = model.VIF(
        id=str(uuid.uuid4()),
        address="52:54:00:aa:bb:01",
        network=net,
        type=model.VIF_TYPE_OTHER,
        vnic_type=model.VNIC_TYPE_BAREMETAL,
        active=True,
    )
    return model.NetworkInfo([vif])


def plug(ctx):
    inst = ctx["instance"]
    ctx["driver"].prepare_networks_before_block_device_mapping(
        inst, ctx["network_info"]
    )
    return {"vif": ctx["network_info"][0]["id"]}


def spawn(ctx):
    inst = ctx["instance"]
    ctx["driver"].spawn(
        ctx["context"],
        inst,
        ctx["image_meta"],
        injected_files=[("/etc/porthole", b"hello from nova")],
        admin_password="s3cret-admin",
        allocations={},
        network_info=ctx["network_info"],
        block_device_info=None,
    )
    info = ctx["driver"].get_info(inst, use_cache=False)
    return {
        "power_state": info.state,
        "exists": ctx["driver"].instance_exists(inst),
        "node": node_view(ctx, inst.node),
    }


def destroy(ctx):
    inst = ctx["instance"]
    inst.task_state = "deleting"
    inst.save()
    ctx["driver"].destroy(ctx["context"], inst, ctx["network_info"])
    return {
        "exists": ctx["driver"].instance_exists(inst),
        "node": node_view(ctx, inst.node),
    }


def wait_available(ctx, node_id):
    import time

    conn = ctx["driver"].ironic_connection
    while True:
        n = conn.get_node(node_id)
        if n.provision_state == "available" and not n.target_provision_state:
            return node_view(ctx, node_id)
        time.sleep(0.5)  # the step's alarm ends a wait that never ends


def node_view(ctx, node_id):
    """The node as the driver's own connection sees it now."""
    conn = ctx["driver"].ironic_connection
    n = conn.get_node(node_id)
    try:
        vifs = [v["id"] if isinstance(v, dict) else v for v in conn.list_node_vifs(node_id)]
    except Exception as e:  # shown, not fatal: the step's own call passed
        vifs = "error: %s" % e
    return {
        "provision_state": n.provision_state,
        "target_provision_state": n.target_provision_state,
        "power_state": n.power_state,
        "instance_uuid": n.instance_id,
        "instance_info": n.instance_info,
        "last_error": n.last_error,
        "vifs": vifs,
    }


if __name__ == "__main__":
    main()
