"""Raw Ethernet frames for the spoofing suite (tests/spoofing.rs), with the stdlib's AF_PACKET.

  frames.py cases PARAMS_JSON            print the cases as JSON: {case: [observers...]}
  frames.py send IFACE PARAMS_JSON       send every case once, then the legitimate END frame
  frames.py get IFACE PARAMS_JSON TAG AS  as B: an HTTP GET of the metadata service's instance-id
                                         over a hand-made TCP connection from B's address, in
                                         encapsulation TAG (see TAGS), from A's MAC after telling
                                         the gateway by ARP that B's address is there (AS=arp),
                                         or from B's MAC (AS=mac); print what came back
  frames.py listen IFACE IP PORT NONCE   sniff IFACE (AF_PACKET) and a UDP socket on IP:PORT;
                                         print "ready", then, once END was seen on both (or
                                         after 60 s), one JSON line {"frames": [...], "udp": [...]}

PARAMS_JSON: {"a_mac", "a_ip", "b_mac", "b_ip", "gw_mac", "gw_ip", "port", "nonce"}.
Every frame carries the marker "SPOOF<nonce>:<case>;" so observers can tell which arrived.
A case's observers are those its destination would reach on a plain bridge: "host" (the
gateway's br0) and/or "b" (instance B's eth0). Cases named "legit/..." are what an instance
may send; every other case is forged.
"""

import json
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
MD = "169.254.169.254"


def mac(s):
    return bytes.fromhex(s.replace(":", ""))


def ip4(s):
    return socket.inet_aton(s)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4_udp(src, dst, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64, 17, 0, ip4(src), ip4(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return 0x0800, hdr + udp


def arp(op, sha, spa, tha, tpa, marker):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac(sha), ip4(spa), mac(tha), ip4(tpa))
    return 0x0806, body + marker  # the marker rides in the padding after the ARP body


def ipv6_icmp(src_mac, dst_ip6, icmp_type, body, marker):
    """ICMPv6 from A's link-local address with an unknown option carrying the marker."""
    src6 = socket.inet_pton(socket.AF_INET6, "fe80::" + src_mac_suffix(src_mac))
    dst6 = socket.inet_pton(socket.AF_INET6, dst_ip6)
    pad = (-(2 + len(marker))) % 8
    opt = struct.pack("!BB", 254, (2 + len(marker) + pad) // 8) + marker + b"\0" * pad
    msg = struct.pack("!BBH", icmp_type, 0, 0) + body + opt
    pseudo = src6 + dst6 + struct.pack("!I3xB", len(msg), 58)
    msg = msg[:2] + struct.pack("!H", csum(pseudo + msg)) + msg[4:]
    hdr = struct.pack("!IHBB16s16s", 6 << 28, len(msg), 58, 255, src6, dst6)
    return 0x86DD, hdr + msg


def src_mac_suffix(m):
    b = mac(m)
    return "%02x%02x:%02xff:fe%02x:%02x%02x" % (b[0] ^ 2, b[1], b[2], b[3], b[4], b[5])


TAGS = {
    "untagged": [],
    "dot1q-0": [(0x8100, 0)],
    "dot1q-0-prio5": [(0x8100, 5 << 13)],
    "dot1q-7": [(0x8100, 7)],
    "dot1ad-0": [(0x88A8, 0)],
    "qinq-0-0": [(0x88A8, 0), (0x8100, 0)],
    "dot1q-dot1q-0": [(0x8100, 0), (0x8100, 0)],
}


def frame(dst, src, tags, ethertype, body):
    out = mac(dst) + mac(src)
    for tpid, tci in tags:
        out += struct.pack("!HH", tpid, tci)
    out += struct.pack("!H", ethertype) + body
    return out + b"\0" * max(0, 60 - len(out))


def cases(p):
    """{case: (observers, frame bytes)}"""
    a_mac, a_ip, b_mac, b_ip = p["a_mac"], p["a_ip"], p["b_mac"], p["b_ip"]
    gw_mac, gw_ip, port = p["gw_mac"], p["gw_ip"], p["port"]
    bcast = "ff:ff:ff:ff:ff:ff"
    out = {}

    def marker(name):
        return ("SPOOF%s:%s;" % (p["nonce"], name)).encode()

    for tag, tags in TAGS.items():
        ip_forms = {
            "own": (a_mac, a_ip),
            "src-ip-b": (a_mac, b_ip),
            "src-ip-gateway": (a_mac, gw_ip),
            "src-ip-metadata": (a_mac, MD),
            "src-mac-b-ip-b": (b_mac, b_ip),
            "src-mac-b-ip-own": (b_mac, a_ip),
        }
        for form, (smac, sip) in ip_forms.items():
            for who, (dmac, dip) in {"host": (gw_mac, gw_ip), "b": (b_mac, b_ip)}.items():
                kind = "legit" if (form == "own" and tag == "untagged") else "forged"
                name = "%s/ip-%s/%s/to-%s" % (kind, form, tag, who)
                if smac == b_mac and who == "b":
                    dmac = bcast  # a bridge does not send a frame back out of the port it came in by
                et, body = ipv4_udp(sip, dip, 40000, port, marker(name))
                out[name] = ([who], frame(dmac, smac, tags, et, body))
        arp_forms = {
            # (eth src, op, sha, spa, eth dst, tha, tpa, observers)
            "own-request": (a_mac, 1, a_mac, a_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
            "request-as-b-to-host": (a_mac, 1, a_mac, b_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
            "request-as-gateway-to-b": (a_mac, 1, a_mac, gw_ip, bcast, "00:00:00:00:00:00", b_ip, ["host", "b"]),
            "gratuitous-as-b": (a_mac, 1, a_mac, b_ip, bcast, "00:00:00:00:00:00", b_ip, ["host", "b"]),
            "gratuitous-as-gateway": (a_mac, 1, a_mac, gw_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
            "reply-as-b-to-host": (a_mac, 2, a_mac, b_ip, gw_mac, gw_mac, gw_ip, ["host"]),
            "reply-as-gateway-to-b": (a_mac, 2, a_mac, gw_ip, b_mac, b_mac, b_ip, ["b"]),
            "sender-mac-b": (a_mac, 1, b_mac, a_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
            "eth-src-b": (b_mac, 1, a_mac, b_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
            "sender-mac-other": (a_mac, 1, "02:aa:bb:cc:dd:ee", a_ip, bcast, "00:00:00:00:00:00", gw_ip, ["host", "b"]),
        }
        for form, (smac, op, sha, spa, dmac, tha, tpa, obs) in arp_forms.items():
            kind = "legit" if (form == "own-request" and tag == "untagged") else "forged"
            name = "%s/arp-%s/%s" % (kind, form, tag)
            et, body = arp(op, sha, spa, tha, tpa, marker(name))
            out[name] = (obs, frame(dmac, smac, tags, et, body))
        v6_forms = {
            # neighbour advertisement (solicited=0, override=1) for the gateway's and B's
            # link-local addresses, with A's MAC as the target link-layer address
            "ndp-na-as-gateway": (136, struct.pack("!I", 0x20000000)
                                  + socket.inet_pton(socket.AF_INET6, "fe80::" + src_mac_suffix(gw_mac))
                                  + struct.pack("!BB", 2, 1) + mac(a_mac)),
            "ndp-na-as-b": (136, struct.pack("!I", 0x20000000)
                            + socket.inet_pton(socket.AF_INET6, "fe80::" + src_mac_suffix(b_mac))
                            + struct.pack("!BB", 2, 1) + mac(a_mac)),
            "ndp-ns": (135, b"\0" * 4 + socket.inet_pton(socket.AF_INET6, "fe80::" + src_mac_suffix(b_mac))
                       + struct.pack("!BB", 1, 1) + mac(a_mac)),
            # router advertisement: default router, lifetime 1800 s, prefix 2001:db8::/64
            "ndp-ra": (134, struct.pack("!BBHII", 64, 0, 1800, 0, 0)
                       + struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0)
                       + socket.inet_pton(socket.AF_INET6, "2001:db8::")),
        }
        for form, (icmp_type, body) in v6_forms.items():
            name = "forged/ipv6-%s/%s" % (form, tag)
            et, b = ipv6_icmp(a_mac, "ff02::1", icmp_type, body, marker(name))
            out[name] = (["host", "b"], frame("33:33:00:00:00:01", a_mac, tags, et, b))
        name = "forged/ethertype-88b5/%s" % tag
        out[name] = (["host", "b"], frame(bcast, a_mac, tags, 0x88B5, marker(name)))
    return out


def end_frames(p):
    """Legitimate datagrams from A to the host and to B: the listeners stop when they see them."""
    m = ("SPOOF%s:END;" % p["nonce"]).encode()
    out = []
    # To B by broadcast: a control run moves B's MAC to A's port in the bridge's table.
    for dmac, dip in ((p["gw_mac"], p["gw_ip"]), ("ff:ff:ff:ff:ff:ff", p["b_ip"])):
        et, body = ipv4_udp(p["a_ip"], dip, 40000, p["port"], m)
        out.append(frame(dmac, p["a_mac"], [], et, body))
    return out


def send(iface, p):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    # Frames with B's source MAC last: without the rules they move B's MAC to A's port.
    for _, (_, f) in sorted(cases(p).items(), key=lambda kv: (kv[1][1][6:12] == mac(p["b_mac"]), kv[0])):
        s.send(f)
    time.sleep(0.2)  # not a correctness wait: the END frames below are what listeners wait for
    for _ in range(3):
        for f in end_frames(p):
            s.send(f)
        time.sleep(0.2)


def markers(data, nonce):
    prefix = ("SPOOF%s:" % nonce).encode()
    found, i = [], data.find(prefix)
    while i >= 0:
        j = data.find(b";", i)
        if j < 0:
            break
        found.append(data[i + len(prefix):j].decode())
        i = data.find(prefix, j)
    return found


def listen(iface, ip, port, nonce):
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    raw.bind((iface, 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    udp.bind((ip, port))
    print("ready", flush=True)
    frames, datagrams, end_raw, end_udp = set(), [], False, False
    deadline = time.monotonic() + 60
    while not (end_raw and end_udp) and time.monotonic() < deadline:
        ready, _, _ = select.select([raw, udp], [], [], 1)
        if raw in ready:
            data, addr = raw.recvfrom(65535)
            if addr[2] != socket.PACKET_OUTGOING:
                for m in markers(data, nonce):
                    end_raw |= m == "END"
                    frames.add(m)
        if udp in ready:
            data, (src, _) = udp.recvfrom(65535)
            for m in markers(data, nonce):
                end_udp |= m == "END"
                datagrams.append([src, m])
    print(json.dumps({"frames": sorted(frames), "udp": datagrams, "complete": end_raw and end_udp}), flush=True)


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b""):
    hdr = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0)
    pseudo = ip4(src) + ip4(dst) + struct.pack("!BBH", 0, 6, len(hdr) + len(payload))
    hdr = hdr[:16] + struct.pack("!H", csum(pseudo + hdr + payload)) + hdr[18:]
    seg = hdr + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(seg), 0x4321, 0, 64, 6, 0, ip4(src), ip4(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return ip + seg


def get_as_b(iface, p, tag, how):
    """A's attempt at B's metadata. Prints the bytes the service sent back (nothing if none)."""
    tags = TAGS[tag]
    smac = p["a_mac"] if how == "arp" else p["b_mac"]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((iface, 0))
    if how == "arp":
        et, body = arp(1, p["a_mac"], p["b_ip"], "00:00:00:00:00:00", p["gw_ip"], b"")
        s.send(frame("ff:ff:ff:ff:ff:ff", p["a_mac"], tags, et, body))
    sport, seq = 40000 + (int(p["nonce"], 16) % 20000), 1000

    def out(flags, ack, payload=b""):
        s.send(frame(p["gw_mac"], smac, tags, 0x0800, tcp(p["b_ip"], MD, sport, 80, seq, ack, flags, payload)))

    def segments(until):
        while time.monotonic() < until:
            r, _, _ = select.select([s], [], [], 0.2)
            if not r:
                continue
            data, addr = s.recvfrom(65535)
            if addr[2] == socket.PACKET_OUTGOING or data[12:14] != b"\x08\x00":
                continue
            ip = data[14:]
            ihl = (ip[0] & 15) * 4
            if ip[9] != 6 or ip[12:16] != ip4(MD) or ip[16:20] != ip4(p["b_ip"]):
                continue
            t = ip[ihl:]
            if struct.unpack("!H", t[2:4])[0] != sport:
                continue
            total = struct.unpack("!H", ip[2:4])[0]
            yield struct.unpack("!I", t[4:8])[0], t[13], t[(t[12] >> 4) * 4 : total - ihl]

    deadline = time.monotonic() + 5
    synack = None
    while synack is None and time.monotonic() < deadline:
        out(0x02, 0)  # SYN, again every second until answered
        for rseq, flags, _ in segments(min(deadline, time.monotonic() + 1)):
            if flags & 0x12 == 0x12:
                synack = rseq
                break
    if synack is None:
        return
    seq += 1
    request = b"GET /latest/meta-data/instance-id HTTP/1.0\r\n\r\n"
    out(0x18, synack + 1, request)
    seq += len(request)
    got, expect = b"", synack + 1
    for rseq, flags, payload in segments(time.monotonic() + 5):
        if rseq == expect and payload:
            got += payload
            expect += len(payload)
        if flags & 0x01:  # FIN
            out(0x11, expect + 1)
            break
        out(0x10, expect)
    sys.stdout.write(got.decode(errors="replace"))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "cases":
        print(json.dumps({k: v[0] for k, v in cases(json.loads(sys.argv[2])).items()}))
    elif cmd == "send":
        send(sys.argv[2], json.loads(sys.argv[3]))
    elif cmd == "get":
        get_as_b(sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], sys.argv[5])
    elif cmd == "listen":
        listen(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
