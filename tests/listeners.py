"""Which TCP ports a set of processes listens on, read from /proc (Linux): for the tests that check every listener
binds the loopback interface only."""

from __future__ import annotations

import os


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (Ray's GCS, raylet, agents and workers descend from the driver)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += children.get(p, [])
    return out


def listeners(pids: set[int]) -> set[tuple[str, str]]:
    """(process name, local address) of every listening TCP socket (IPv4 and IPv6) the processes hold."""
    import ipaddress

    listening = {}  # socket inode -> local address
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            host, port = f[1].split(":")
            raw = bytes.fromhex(host)
            # /proc prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            listening[f[9]] = f"{ipaddress.ip_address(raw)}:{int(port, 16)}"
    out = set()
    for pid in pids:
        try:
            name = open(f"/proc/{pid}/comm").read().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in listening:
                    out.add((name, listening[link[8:-1]]))
        except OSError:  # the process ended meanwhile
            continue
    return out


def is_loopback(addr: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
