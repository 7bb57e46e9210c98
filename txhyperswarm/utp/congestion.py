"""
LEDBAT congestion control for uTP (``shared/spec/utp.md`` 4.2), plain arithmetic.

Follows libutp's ``apply_ccontrol``: delay-based gain towards a 100 ms
queuing target, at most +3000 bytes per RTT, base delay = minimum over 13
one-minute buckets, current delay = minimum of the last 3 samples, and
libutp's additive slow start (one packet per RTT's worth of acks). Loss
halves the window (at most once per 100 ms); a retransmission timeout
collapses it to one packet.

Doubling slow start (``exponential_slow_start=True``) was measured worse
against utp-native: it overshoots the ~208 KiB kernel buffer a Node peer
keeps by default, and tail losses beyond the 32-bit selective-ack mask can
only be repaired by 1 s timeouts (64 MiB to utp-native: ~23 s doubling vs
~7 s additive; loopback Python to Python: the same ~90 MB/s).
"""

from __future__ import annotations

from typing import List, Optional

__all__ = ["LEDBAT", "DelayHistory"]

_MASK32 = 0xFFFFFFFF


def _before32(a: int, b: int) -> bool:
    """``a`` < ``b`` in 32-bit wrapping time."""
    return a != b and ((b - a) & _MASK32) < 0x80000000


class DelayHistory:
    """
    One-way delay samples (µs, wrapping 32-bit) → queuing delay above base.

    :param buckets: minutes of base-delay history (libutp: 13).
    :param current: how many latest samples the current delay is the minimum of.
    """

    def __init__(self, buckets: int = 13, current: int = 3) -> None:
        self._nbuckets = buckets
        self._ncur = current
        self.base: Optional[int] = None
        self._buckets: List[int] = []
        self._bucket_start: Optional[float] = None
        self._cur: List[int] = []

    def add(self, sample: int, now: float) -> None:
        if self.base is None:
            self.base = sample
            self._buckets = [sample]
            self._bucket_start = now
        else:
            if now - self._bucket_start >= 60.0:
                self._bucket_start = now
                self._buckets.append(sample)
                if len(self._buckets) > self._nbuckets:
                    del self._buckets[0]
                self.base = min_wrapping(self._buckets)
            elif _before32(sample, self._buckets[-1]):
                self._buckets[-1] = sample
            if _before32(sample, self.base):
                self.base = sample
        cur = self._cur
        cur.append(sample)
        if len(cur) > self._ncur:
            del cur[0]

    def shift(self, amount: int) -> None:
        """Move the base up (when the estimate exceeds the RTT: clock drift)."""
        if self.base is None:
            return
        self.base = (self.base + amount) & _MASK32
        self._buckets = [(b + amount) & _MASK32 for b in self._buckets]

    @property
    def delay(self) -> int:
        """Current queuing delay in µs (0 before any sample)."""
        if self.base is None:
            return 0
        best = min_wrapping(self._cur)
        d = (best - self.base) & _MASK32
        return 0 if d >= 0x80000000 else d


def min_wrapping(values: List[int]) -> int:
    best = values[0]
    for v in values[1:]:
        if _before32(v, best):
            best = v
    return best


class LEDBAT:
    """
    The congestion window of one uTP connection, in bytes.

    :param packet_size: the payload size of a full packet.
    :param max_window_cap: upper clamp (libutp's ``opt_sndbuf``).
    :param target: queuing delay target, µs.
    :param max_gain: bytes per RTT at zero queuing delay.
    :param exponential_slow_start: grow by the bytes acked in slow start
        (doubling per RTT) instead of libutp's one packet per RTT.
    """

    MIN_WINDOW = 10

    def __init__(
        self,
        packet_size: int = 1382,
        max_window_cap: int = 1048576,
        target: int = 100_000,
        max_gain: int = 3000,
        exponential_slow_start: bool = False,
    ) -> None:
        self.packet_size = packet_size
        self.cap = max_window_cap
        self.target = target
        self.max_gain = max_gain
        self.max_window = packet_size
        self.exponential = exponential_slow_start
        self.ssthresh = max_window_cap
        self.slow_start = True
        self.history = DelayHistory()
        self._last_decay = -1e9
        #: last time the sender wanted to send more than the window allowed
        self.last_window_limited = -1e9

    def on_ack(self, acked: int, delay_sample: int, min_rtt_us: Optional[int], now: float) -> None:
        """
        Update the window for an ACK.

        :param acked: payload bytes newly acknowledged (cumulative + selective).
        :param delay_sample: the peer's ``timestamp_difference`` (µs); the
            caller skips the update when it is 0 or 0x7FFFFFFF (no sample).
        :param min_rtt_us: smallest RTT of the packets this ACK covered, µs.
        :param now: seconds.
        """
        hist = self.history
        hist.add(delay_sample, now)
        delay = hist.delay
        if min_rtt_us is not None and delay > min_rtt_us:
            hist.shift(delay - min_rtt_us)
            delay = min_rtt_us
        mw = self.max_window
        target = self.target
        window_factor = min(acked, mw) / max(mw, acked)
        delay_factor = (target - delay) / target
        gain = self.max_gain * window_factor * delay_factor
        if gain > 0 and now - self.last_window_limited > 1.0:
            gain = 0  # application-limited: don't grow
        ledbat = mw + gain
        if self.slow_start:
            if self.exponential:
                ss = mw + acked if now - self.last_window_limited <= 1.0 else mw
            else:
                ss = mw + window_factor * self.packet_size
            if ss > self.ssthresh:
                self.slow_start = False
                new = ledbat
            elif delay > target * 0.9:
                self.slow_start = False
                self.ssthresh = mw
                new = ledbat
            else:
                new = max(ss, ledbat)
        else:
            new = ledbat
        if new < self.MIN_WINDOW:
            new = self.MIN_WINDOW
        elif new > self.cap:
            new = self.cap
        self.max_window = int(new)

    def on_loss(self, now: float) -> None:
        """A packet was lost (selective ack / duplicate acks): halve, ≤ once per 100 ms."""
        if now - self._last_decay < 0.1:
            return
        self._last_decay = now
        self.max_window = max(self.max_window // 2, self.MIN_WINDOW)
        self.slow_start = False
        self.ssthresh = self.max_window

    def on_timeout(self, in_flight: int) -> None:
        """A retransmission timeout fired with ``in_flight`` bytes outstanding."""
        if in_flight == 0 and self.max_window > self.packet_size:
            # idle decay
            self.max_window = max(self.max_window * 2 // 3, self.packet_size)
        else:
            self.max_window = self.packet_size
            self.slow_start = True
