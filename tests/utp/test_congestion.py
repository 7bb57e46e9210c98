"""LEDBAT arithmetic (utp.md 4.2)."""

from txhyperswarm.utp.congestion import LEDBAT, DelayHistory


def test_slow_start_adds_about_a_packet_per_window_acked():
    cc = LEDBAT()
    cc.last_window_limited = 0.0
    start = cc.max_window
    cc.on_ack(start, 1000, None, now=0.5)  # a whole window acked at zero queuing delay
    # +1 packet (slow start) vs +3000 bytes (LEDBAT gain): libutp takes the larger
    assert cc.max_window == start + 3000


def test_queuing_delay_above_target_shrinks_the_window():
    cc = LEDBAT()
    cc.max_window = 100_000
    cc.last_window_limited = 0.0
    cc.on_ack(1382, 1_000, None, now=0.1)  # base delay sample
    for i in range(10):
        cc.on_ack(1382, 1_000 + 300_000, None, now=0.2 + i * 0.01)  # 300 ms above base
    assert cc.max_window < 100_000 - 500
    assert not cc.slow_start  # delay > 0.9 target ends slow start


def test_application_limited_sender_does_not_grow():
    cc = LEDBAT()
    cc.slow_start = False
    cc.max_window = 50_000
    cc.last_window_limited = -10.0
    cc.on_ack(50_000, 1000, None, now=0.0)
    assert cc.max_window == 50_000


def test_loss_halves_at_most_every_100ms_and_timeout_collapses():
    cc = LEDBAT()
    cc.max_window = 80_000
    cc.on_loss(now=1.0)
    assert cc.max_window == 40_000
    cc.on_loss(now=1.05)
    assert cc.max_window == 40_000
    cc.on_loss(now=1.2)
    assert cc.max_window == 20_000
    cc.on_timeout(in_flight=5000)
    assert cc.max_window == cc.packet_size and cc.slow_start


def test_idle_timeout_decays_by_a_third():
    cc = LEDBAT()
    cc.max_window = 90_000
    cc.on_timeout(in_flight=0)
    assert cc.max_window == 60_000


def test_delay_history_wraps_and_clamps():
    h = DelayHistory()
    h.add(0xFFFFFFF0, 0.0)
    h.add(0x10, 1.0)  # 32 µs later across the wrap
    h.add(0x20, 2.0)
    h.add(0x30, 3.0)
    assert h.base == 0xFFFFFFF0
    assert h.delay == 0x10 + 0x10  # min of the last three minus base, mod 2^32
