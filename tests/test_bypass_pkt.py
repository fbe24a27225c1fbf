"""Packet parse/build of the bypass engines (csrc/pkt.c) with frames the tests build.

Checksums are checked against an independent RFC 1071 sum written here, and every
kind of bad or foreign frame must land in its own drop counter.
"""

import ipaddress
import struct

import pytest
from aiolowlat._native._bypass import ffi, lib
from hypothesis import given, settings
from hypothesis import strategies as st

OUR_MAC, PEER_MAC = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
OUR_IP, PEER_IP, OTHER_IP = "10.0.0.1", "10.0.0.2", "10.0.0.9"
GROUP = "239.1.2.3"
PORT = 30001


def ip4(text):
    return int(ipaddress.IPv4Address(text))


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_frame(payload=b"hi", *, dst_mac=OUR_MAC, src=PEER_IP, dst=OUR_IP, sport=4000,
              dport=PORT, options=b"", frag=0x4000, proto=17, vlan=None, bad_ip_sum=False,
              bad_udp_sum=False, zero_udp_sum=False, total_extra=0, ulen_extra=0):
    """Ethernet [802.1Q] / IPv4 (with options) / UDP, checksums computed here."""
    udp_len = 8 + len(payload) + ulen_extra
    pseudo = struct.pack("!4s4sBBH", ipaddress.IPv4Address(src).packed,
                         ipaddress.IPv4Address(dst).packed, 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    usum = 0 if zero_udp_sum else (csum(pseudo + udp) or 0xFFFF)
    if bad_udp_sum:
        usum ^= 0x0101
    udp = udp[:6] + struct.pack("!H", usum) + udp[8:]
    ihl = 5 + len(options) // 4
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp) + total_extra, 7,
                         frag, 64, proto, 0, ipaddress.IPv4Address(src).packed,
                         ipaddress.IPv4Address(dst).packed) + options
    isum = csum(header) ^ (0x0F0F if bad_ip_sum else 0)
    header = header[:10] + struct.pack("!H", isum) + header[12:]
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return dst_mac + PEER_MAC + tag + b"\x08\x00" + header + udp


def arp_frame(op, target_ip, *, sender_ip=PEER_IP, sender_mac=PEER_MAC, dst=b"\xff" * 6):
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sender_mac,
                       ipaddress.IPv4Address(sender_ip).packed, bytes(6),
                       ipaddress.IPv4Address(target_ip).packed)
    return dst + sender_mac + b"\x08\x06" + body + bytes(18)


class Ctx:
    """A pkt_ctx plus the call buffers of pkt_classify."""

    def __init__(self, mac=OUR_MAC, ip=OUR_IP, port=PORT):
        self.c = ffi.new("struct pkt_ctx *")
        lib.pkt_init(self.c, mac, ip4(ip), port)
        self.udp = ffi.new("struct pkt_udp *")
        self.reply = ffi.new("uint8_t[128]")
        self.reply_len = ffi.new("uint32_t *")

    def classify(self, frame):
        return lib.pkt_classify(self.c, frame, len(frame), self.udp, self.reply, self.reply_len)

    def payload(self):
        return bytes(ffi.buffer(self.udp.payload, self.udp.len))

    def drops(self):
        return list(self.c.drops)

    def build(self, payload, dst_ip=PEER_IP, dst_mac=PEER_MAC, sport=PORT, dport=4000):
        frame = ffi.new("uint8_t[2048]")
        n = lib.pkt_build_udp(self.c, frame, 2048, dst_mac, ip4(dst_ip), sport, dport, payload,
                              len(payload))
        assert n > 0
        return bytes(ffi.buffer(frame, n))


def test_a_valid_datagram_is_delivered_with_its_addresses():
    ctx = Ctx()
    assert ctx.classify(udp_frame(b"market data")) == lib.PKT_UDP
    assert ctx.payload() == b"market data"
    u = ctx.udp
    assert (u.src_ip, u.src_port, u.dst_ip, u.dst_port) == (ip4(PEER_IP), 4000, ip4(OUR_IP), PORT)
    assert ctx.c.rx_udp == 1 and not any(ctx.drops())


def test_ip_options_are_skipped_by_the_real_header_length():
    ctx = Ctx()
    options = b"\x01" * 8  # eight NOPs: IHL 7
    assert ctx.classify(udp_frame(b"after options", options=options)) == lib.PKT_UDP
    assert ctx.payload() == b"after options"


def test_ethernet_padding_after_the_ip_packet_is_ignored():
    ctx = Ctx()
    assert ctx.classify(udp_frame(b"x") + bytes(20)) == lib.PKT_UDP
    assert ctx.payload() == b"x"


def test_a_zero_udp_checksum_means_none_and_is_accepted():
    ctx = Ctx()
    assert ctx.classify(udp_frame(b"no sum", zero_udp_sum=True)) == lib.PKT_UDP


@pytest.mark.parametrize("frame, reason", [
    (udp_frame(bad_ip_sum=True), "PKT_DROP_IP_CHECKSUM"),
    (udp_frame(bad_udp_sum=True), "PKT_DROP_UDP_CHECKSUM"),
    (udp_frame(frag=0x2000), "PKT_DROP_FRAGMENT"),          # more fragments
    (udp_frame(frag=0x0010), "PKT_DROP_FRAGMENT"),          # a later fragment
    (udp_frame(dst_mac=bytes.fromhex("02aabbccddee")), "PKT_DROP_MAC"),
    (udp_frame(dst=OTHER_IP), "PKT_DROP_IP_DST"),
    (udp_frame(dport=PORT + 1), "PKT_DROP_PORT"),
    (udp_frame(proto=6), "PKT_DROP_PROTOCOL"),
    (udp_frame(vlan=5), "PKT_DROP_VLAN"),
    (udp_frame(ulen_extra=4), "PKT_DROP_UDP_LENGTH"),
    (udp_frame(total_extra=40), "PKT_DROP_SHORT"),
    (udp_frame()[:30], "PKT_DROP_SHORT"),
    (OUR_MAC + PEER_MAC + b"\x86\xdd" + bytes(60), "PKT_DROP_ETHERTYPE"),
    (OUR_MAC + PEER_MAC + b"\x08\x00" + b"\x65" + bytes(40), "PKT_DROP_IP_HEADER"),
    (OUR_MAC + PEER_MAC + b"\x08\x00" + b"\x44" + bytes(40), "PKT_DROP_IP_HEADER"),
    (arp_frame(1, OTHER_IP), "PKT_DROP_ARP"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_and_foreign_frames_are_dropped_by_reason(frame, reason):
    ctx = Ctx()
    assert ctx.classify(frame) == lib.PKT_DROPPED
    expected = [0] * lib.PKT_DROP_COUNT
    expected[getattr(lib, reason)] = 1
    assert ctx.drops() == expected and ctx.c.rx_udp == 0


def test_vlan_tagged_frames_of_our_vlan_are_delivered_and_tx_is_tagged():
    ctx = Ctx()
    ctx.c.vlan = 42
    assert ctx.classify(udp_frame(b"tagged", vlan=42)) == lib.PKT_UDP
    assert ctx.payload() == b"tagged"
    assert ctx.classify(udp_frame(b"untagged")) == lib.PKT_DROPPED
    assert ctx.drops()[lib.PKT_DROP_VLAN] == 1
    frame = ctx.build(b"out")
    assert frame[12:16] == struct.pack("!HH", 0x8100, 42) and frame[16:18] == b"\x08\x00"


def test_multicast_needs_the_group_joined():
    ctx = Ctx()
    group_mac = bytes.fromhex("01005e010203")
    frame = udp_frame(b"tick", dst_mac=group_mac, dst=GROUP)
    assert ctx.classify(frame) == lib.PKT_DROPPED and ctx.drops()[lib.PKT_DROP_MAC] == 1
    assert lib.pkt_join(ctx.c, ip4(GROUP)) == 0
    assert ctx.classify(frame) == lib.PKT_UDP and ctx.payload() == b"tick"
    other = udp_frame(b"tick", dst_mac=bytes.fromhex("01005e010204"), dst="239.1.2.4")
    assert ctx.classify(other) == lib.PKT_DROPPED
    assert lib.pkt_join(ctx.c, ip4(OTHER_IP)) == -1  # not a group
    assert lib.pkt_leave(ctx.c, ip4(GROUP)) == 0
    assert ctx.classify(frame) == lib.PKT_DROPPED


def test_built_frames_have_correct_checksums_and_parse_back():
    ours, peer = Ctx(), Ctx(mac=PEER_MAC, ip=PEER_IP, port=4000)
    for payload in (b"", b"x", b"odd length!", bytes(range(256)) * 5):
        frame = ours.build(payload)
        eth, ip, udp = frame[:14], frame[14:34], frame[34:42]
        assert eth[:6] == PEER_MAC and eth[6:12] == OUR_MAC and eth[12:] == b"\x08\x00"
        assert csum(ip) == 0  # a correct header sums to 0xffff
        assert struct.unpack("!H", ip[2:4])[0] == 28 + len(payload)
        assert len(frame) == max(60, 42 + len(payload))  # padded to the Ethernet minimum
        udp_len = 8 + len(payload)
        pseudo = ip[12:20] + struct.pack("!BBH", 0, 17, udp_len)
        assert csum(pseudo + frame[34:34 + udp_len]) == 0
        assert struct.unpack("!HH", udp[:4]) == (PORT, 4000)
        assert peer.classify(frame) == lib.PKT_UDP and peer.payload() == payload


def test_a_frame_too_large_for_the_buffer_is_refused():
    ctx = Ctx()
    frame = ffi.new("uint8_t[100]")
    assert lib.pkt_build_udp(ctx.c, frame, 100, PEER_MAC, ip4(PEER_IP), 1, 2, bytes(59), 59) == -1
    assert lib.pkt_build_udp(ctx.c, frame, 100, PEER_MAC, ip4(PEER_IP), 1, 2, bytes(58), 58) == 100


def test_an_arp_request_for_our_ip_is_answered_and_the_asker_learned():
    ctx = Ctx()
    assert ctx.classify(arp_frame(1, OUR_IP)) == lib.PKT_REPLY
    reply = bytes(ffi.buffer(ctx.reply, ctx.reply_len[0]))
    assert len(reply) == 60 and reply[:6] == PEER_MAC and reply[6:12] == OUR_MAC
    assert reply[12:14] == b"\x08\x06"
    hw, proto, hlen, plen, op, smac, sip, tmac, tip = struct.unpack("!HHBBH6s4s6s4s",
                                                                    reply[14:42])
    assert (hw, proto, hlen, plen, op) == (1, 0x0800, 6, 4, 2)
    assert (smac, sip, tmac, tip) == (OUR_MAC, ipaddress.IPv4Address(OUR_IP).packed, PEER_MAC,
                                      ipaddress.IPv4Address(PEER_IP).packed)
    mac = ffi.new("uint8_t[6]")
    assert lib.pkt_resolve(ctx.c, ip4(PEER_IP), mac) == 1 and bytes(mac) == PEER_MAC
    assert ctx.c.arp_replies == 1


def test_arp_replies_are_learned_but_static_entries_win():
    ctx = Ctx()
    mac = ffi.new("uint8_t[6]")
    assert lib.pkt_resolve(ctx.c, ip4(PEER_IP), mac) == 0
    frame = ffi.new("uint8_t[64]")
    n = lib.pkt_build_arp_request(ctx.c, frame, ip4(PEER_IP))
    request = bytes(ffi.buffer(frame, n))
    assert request[:6] == b"\xff" * 6 and request[20:22] == b"\x00\x01"
    assert request[38:42] == ipaddress.IPv4Address(PEER_IP).packed
    assert ctx.classify(arp_frame(2, OUR_IP, dst=OUR_MAC)) == lib.PKT_ARP_LEARNED
    assert lib.pkt_resolve(ctx.c, ip4(PEER_IP), mac) == 1 and bytes(mac) == PEER_MAC
    pinned = bytes.fromhex("02000000abcd")
    lib.pkt_arp_set(ctx.c, ip4(PEER_IP), pinned, 1)
    ctx.classify(arp_frame(2, OUR_IP, dst=OUR_MAC))  # the wire cannot move a static entry
    assert lib.pkt_resolve(ctx.c, ip4(PEER_IP), mac) == 1 and bytes(mac) == pinned
    assert lib.pkt_resolve(ctx.c, ip4(GROUP), mac) == 1 and bytes(mac) == bytes.fromhex(
        "01005e010203")


def test_a_full_arp_table_replaces_dynamic_entries_only():
    ctx = Ctx()
    lib.pkt_arp_set(ctx.c, ip4("10.1.0.0"), PEER_MAC, 1)
    for i in range(1, 200):
        lib.pkt_arp_set(ctx.c, ip4(f"10.1.{i // 256}.{i % 256}"), PEER_MAC, 0)
    mac = ffi.new("uint8_t[6]")
    assert lib.pkt_resolve(ctx.c, ip4("10.1.0.0"), mac) == 1
    assert lib.pkt_resolve(ctx.c, ip4("10.1.0.199"), mac) == 1  # the newest is there


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", OUR_MAC + PEER_MAC + b"\x08\x00",
                                                 b"\xff" * 6 + PEER_MAC + b"\x08\x06",
                                                 OUR_MAC + PEER_MAC + b"\x81\x00\x00\x00"]))
def test_garbage_is_classified_once_and_never_crashes(tail, head):
    ctx = Ctx()
    lib.pkt_join(ctx.c, ip4(GROUP))
    verdict = ctx.classify(head + tail)
    counted = sum(ctx.drops()) + ctx.c.rx_udp + ctx.c.arp_learned
    assert counted == 1
    if verdict == lib.PKT_UDP:
        assert ctx.udp.len <= len(head + tail)
