#!/usr/bin/env python3
"""Drive real RFB clients through console-svc's VNC proxy.

Modes:

nova       nova 34.0.0's own nova.console.securityproxy.rfb.RFBSecurityProxy
           (with nova.console.rfb.authvencrypt for --auth-schemes vencrypt)
           negotiates with the proxy exactly as nova-novncproxy does: a
           thread plays the browser on the tenant side of a socketpair, the
           proxy's port is the "compute" side. After connect() returns, this
           script reads the SecurityResult, sends ClientInit, reads
           ServerInit and one whole Raw framebuffer, and writes its pixels to
           --dump.
vncdotool  vncdotool captures a screenshot through the proxy (security None)
           into --png.

Prints one JSON object on stdout; exits non-zero on any failure.
Run it with the venv from scripts/venv.sh.
"""

import argparse
import json
import socket
import struct
import sys
import threading


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def browser(sock, seen):
    """The tenant (noVNC in a browser): RFB 3.8, picks None."""
    try:
        seen["version"] = recv_exact(sock, 12).decode()
        sock.sendall(b"RFB 003.008\n")
        seen["types"] = list(recv_exact(sock, 2))
        sock.sendall(b"\x01")
    except Exception as e:  # reported by the main thread
        seen["error"] = repr(e)


def configure_nova(args):
    import nova.conf

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[])
    conf.set_override("auth_schemes", args.auth_schemes.split(","), group="vnc")
    if args.client_cert:
        conf.set_override("vencrypt_client_cert", args.client_cert, group="vnc")
        conf.set_override("vencrypt_client_key", args.client_key, group="vnc")
        conf.set_override("vencrypt_ca_certs", args.ca_certs, group="vnc")


def read_frame(sock):
    sock.sendall(b"\x01")  # ClientInit, shared
    width, height = struct.unpack("!HH", recv_exact(sock, 4))
    pixel_format = recv_exact(sock, 16)
    bypp = pixel_format[0] // 8
    (name_len,) = struct.unpack("!I", recv_exact(sock, 4))
    name = recv_exact(sock, name_len).decode(errors="replace")
    sock.sendall(struct.pack("!BBHi", 2, 0, 1, 0))  # SetEncodings [Raw]
    sock.sendall(struct.pack("!BBHHHH", 3, 0, 0, 0, width, height))
    pixels = bytearray(width * height * bypp)
    covered = 0
    while covered < width * height:
        (kind,) = struct.unpack("!B", recv_exact(sock, 1))
        if kind == 2:  # Bell
            continue
        if kind == 3:  # ServerCutText
            (length,) = struct.unpack("!3xI", recv_exact(sock, 7))
            recv_exact(sock, length)
            continue
        if kind != 0:
            raise ValueError(f"unexpected server message {kind}")
        (rects,) = struct.unpack("!xH", recv_exact(sock, 3))
        for _ in range(rects):
            x, y, w, h, enc = struct.unpack("!HHHHi", recv_exact(sock, 12))
            if enc != 0:
                raise ValueError(f"unexpected encoding {enc}")
            for row in range(h):
                start = ((y + row) * width + x) * bypp
                pixels[start:start + w * bypp] = recv_exact(sock, w * bypp)
            covered += w * h
    return width, height, bypp, name, bytes(pixels)


def run_nova(args):
    configure_nova(args)
    from nova.console.securityproxy import rfb

    tenant_nova, tenant_browser = socket.socketpair()
    seen = {}
    thread = threading.Thread(target=browser, args=(tenant_browser, seen))
    thread.start()
    compute = socket.create_connection((args.host, args.port), timeout=30)
    proxy = rfb.RFBSecurityProxy()
    secured = proxy.connect(tenant_nova, compute)
    thread.join(10)
    if "error" in seen:
        raise RuntimeError(f"browser side: {seen['error']}")
    (result,) = struct.unpack("!I", recv_exact(secured, 4))
    out = {
        "mode": "nova",
        "auth_schemes": args.auth_schemes,
        "tls": type(secured).__name__,
        "tenant_saw": seen,
        "security_result": result,
    }
    if result != 0:
        (length,) = struct.unpack("!I", recv_exact(secured, 4))
        out["reason"] = recv_exact(secured, length).decode(errors="replace")
        print(json.dumps(out))
        return 1
    width, height, bypp, name, pixels = read_frame(secured)
    if args.dump:
        with open(args.dump, "wb") as f:
            f.write(pixels)
    out.update(width=width, height=height, bytes_per_pixel=bypp, name=name)
    print(json.dumps(out))
    secured.close()
    return 0


def run_vncdotool(args):
    from PIL import Image
    from vncdotool import api

    client = api.connect(f"{args.host}::{args.port}", password=None, timeout=30)
    try:
        client.captureScreen(args.png)
    finally:
        client.disconnect()
        api.shutdown()
    with Image.open(args.png) as img:
        width, height = img.size
        colors = img.getcolors(maxcolors=1 << 16)
    out = {
        "mode": "vncdotool",
        "png": args.png,
        "width": width,
        "height": height,
        "colors": len(colors) if colors else None,
    }
    print(json.dumps(out))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["nova", "vncdotool"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--auth-schemes", default="none")
    p.add_argument("--client-cert")
    p.add_argument("--client-key")
    p.add_argument("--ca-certs")
    p.add_argument("--dump", help="nova: write the raw framebuffer here")
    p.add_argument("--png", help="vncdotool: screenshot path")
    args = p.parse_args()
    if args.mode == "nova":
        return run_nova(args)
    return run_vncdotool(args)


if __name__ == "__main__":
    sys.exit(main())
