"""The uTP packet codec: captured utp-native packets, errors, hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txhyperswarm.utp import packet
from txhyperswarm.utp.packet import (
    ST_DATA,
    ST_FIN,
    ST_RESET,
    ST_STATE,
    ST_SYN,
    DecodeError,
    Packet,
    decode,
    encode,
    sack_bits,
    sack_mask,
    seq_less,
)

# (hex, type, id, timestamp, tsdiff, wnd, seq, ack, sack mask, payload) — utp.md section 6
CAPTURED = [
    # 6.1 SYN
    ("41004567755f1942000000000010000023c60000", ST_SYN, 17767, 1969166658, 0, 1048576, 9158, 0, None, b""),
    # 6.2 STATE reply to the SYN
    ("21004567755f27a50000000000100000986923c6", ST_STATE, 17767, 1969170341, 0, 1048576, 39017, 9158, None, b""),
    # 6.3 DATA "hello"
    ("01004568755f2b3b0000027b0010000023c7986868656c6c6f", ST_DATA, 17768, 1969171259, 635, 1048576, 9159, 39016, None, b"hello"),
    # 6.4 STATE acking the DATA
    ("21004567755f2dc5000000b500100000986923c7", ST_STATE, 17767, 1969171909, 181, 1048576, 39017, 9159, None, b""),
    # 6.5 FIN C->S
    ("1100456875622b14000002050010000023c89868", ST_FIN, 17768, 1969367828, 517, 1048576, 9160, 39016, None, b""),
    # 6.6 DATA "pong"
    ("0100456775622ec00000026900100000986923c8706f6e67", ST_DATA, 17767, 1969368768, 617, 1048576, 39017, 9160, None, b"pong"),
    # exchange #7, #8: STATE seq 39019 (FIN queued, held back)
    ("2100456775622f4a0000026900100000986b23c8", ST_STATE, 17767, 0x75622F4A, 617, 1048576, 39019, 9160, None, b""),
    ("2100456775622f5b0000026900100000986b23c8", ST_STATE, 17767, 0x75622F5B, 617, 1048576, 39019, 9160, None, b""),
    # exchange #9
    ("21004568756233db0000047f0010000023c99869", ST_STATE, 17768, 0x756233DB, 0x47F, 1048576, 9161, 39017, None, b""),
    # 6.7 FIN S->C
    ("11004567756235040000012700100000986a23c8", ST_FIN, 17767, 1969370372, 295, 1048576, 39018, 9160, None, b""),
    # exchange #11
    ("2100456875623726000001780010000023c9986a", ST_STATE, 17768, 0x75623726, 0x178, 1048576, 9161, 39018, None, b""),
    # 6.8 STATE with selective ACK
    ("210145678267" "6aff000002ed00100000986923c8000401000000", ST_STATE, 17767, 2187815679, 749, 1048576, 39017, 9160, bytes.fromhex("01000000"), b""),
    # 6.9 RESET sent by utp-native for an unknown id 4242, seq 777
    ("31001092000000000000000000000000" "45670309", ST_RESET, 4242, 0, 0, 0, 17767, 777, None, b""),
]


@pytest.mark.parametrize("hexdata, ptype, cid, ts, tsd, wnd, seq, ack, sack, payload", CAPTURED)
def test_captured_packets_decode_to_their_annotations(hexdata, ptype, cid, ts, tsd, wnd, seq, ack, sack, payload):
    raw = bytes.fromhex(hexdata)
    p = decode(raw)
    assert (p.type, p.connection_id, p.timestamp, p.timestamp_diff, p.wnd_size, p.seq_nr, p.ack_nr) == (
        ptype, cid, ts, tsd, wnd, seq, ack,
    )
    assert p.sack == sack
    assert p.payload == payload
    assert encode(p) == raw


def test_captured_sack_names_the_received_packet():
    p = decode(bytes.fromhex(CAPTURED[11][0]))
    assert sack_bits(p.ack_nr, p.sack) == [9162]  # ack 9160, 9161 missing


def test_sack_mask_bit_order_is_lsb_first_from_ack_plus_two():
    assert sack_mask(100, {102}) == b"\x01\x00\x00\x00"
    assert sack_mask(100, {109}) == b"\x80\x00\x00\x00"
    assert sack_mask(100, {110, 133}) == b"\x00\x01\x00\x80"
    assert sack_mask(65534, {0}) == b"\x01\x00\x00\x00"  # wraps
    assert sack_bits(65534, b"\x0f\x00\x00\x00") == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "short"),
        (bytes.fromhex(CAPTURED[0][0])[:19], "short"),
        (b"\x42" + bytes(19), "version"),
        (b"\x51" + bytes(19), "type"),
        (b"\x21\x01" + bytes(18), "extension"),  # no room for the extension header
        (b"\x21\x01" + bytes(18) + b"\x00\x04\x01", "extension"),  # runs past the end
        (b"\x21\x02" + bytes(18) + b"\x00\x04" + bytes(4), "ext_bits_length"),
    ],
)
def test_malformed_packets_raise_decode_error(raw, reason):
    with pytest.raises(DecodeError) as e:
        decode(raw)
    assert e.value.reason == reason


def test_unknown_extensions_are_skipped_by_length():
    # SACK, then an unknown type 7 of 3 bytes, then payload
    raw = b"\x01\x01" + bytes(18) + b"\x07\x04\x01\x00\x00\x00" + b"\x00\x03abc" + b"data"
    p = decode(raw)
    assert p.sack == b"\x01\x00\x00\x00"
    assert p.extensions == ((1, b"\x01\x00\x00\x00"), (7, b"abc"))
    assert p.payload == b"data"
    assert encode(p) == raw


def test_extension_bits_of_eight_bytes_are_accepted():
    raw = b"\x21\x02" + bytes(18) + b"\x00\x08" + bytes(range(8))
    assert decode(raw).extensions == ((2, bytes(range(8))),)


def test_seq_less_wraps():
    assert seq_less(65535, 0)
    assert seq_less(65000, 100)
    assert not seq_less(100, 65000)
    assert not seq_less(5, 5)


@given(st.binary(max_size=300))
def test_decode_arbitrary_bytes_gives_a_packet_or_decode_error(data):
    try:
        p = decode(data)
    except DecodeError as e:
        assert e.reason in {"short", "version", "type", "extension", "ext_bits_length"}
    else:
        assert isinstance(p, Packet)
        assert 0 <= p.type <= 4


u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)


@st.composite
def packets(draw):
    ext_list = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just(1), st.binary(min_size=0, max_size=32)),
                st.tuples(st.just(2), st.binary(min_size=8, max_size=8)),
                st.tuples(st.integers(3, 255), st.binary(max_size=40)),
            ),
            max_size=3,
        )
    )
    # libutp only classifies first-extension types < 3 as uTP; keep that true
    if ext_list and ext_list[0][0] >= 3:
        ext_list = [(1, b"\x00" * 4)] + ext_list
    return Packet(
        draw(st.integers(0, 4)),
        draw(u16),
        draw(u16),
        draw(u16),
        timestamp=draw(u32),
        timestamp_diff=draw(u32),
        wnd_size=draw(u32),
        extensions=tuple(ext_list),
        payload=draw(st.binary(max_size=200)),
    )


@given(packets())
def test_valid_packets_round_trip(p):
    raw = encode(p)
    assert decode(raw) == p
    assert packet.HEADER_SIZE <= len(raw)


@settings(max_examples=50)
@given(packets())
def test_encoded_packets_are_classified_as_utp(p):
    from txhyperswarm.udp import is_utp_datagram

    assert is_utp_datagram(encode(p))
