"""
One-shot observers: the outcome of something that happens once, handed to
any number of waiters.

Modelled on magic-wormhole's ``OneShotObserverList``: each
:meth:`OneShotObserver.when_fired` call gets a Deferred of its own, so one
waiter's callbacks (or its cancellation) cannot change what another sees,
and a failure that nobody waits for is not logged as an unhandled error.
"""

from __future__ import annotations

from typing import Any, Generic, List, TypeVar, Union

from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["OneShotObserver"]

T = TypeVar("T")

_PENDING: Any = object()


class OneShotObserver(Generic[T]):
    """
    Fire once with a value or a :class:`~twisted.python.failure.Failure`;
    every past and future :meth:`when_fired` Deferred gets it.
    """

    def __init__(self) -> None:
        self._result: Any = _PENDING
        self._waiters: List[defer.Deferred] = []

    @property
    def fired(self) -> bool:
        """Whether :meth:`fire` has been called."""
        return self._result is not _PENDING

    def when_fired(self) -> "defer.Deferred[T]":
        """
        A new Deferred firing with the result (at once if already fired).
        Cancelling it only forgets this waiter.
        """
        if self.fired:
            return self._deliver(defer.Deferred())

        def forget(d: defer.Deferred) -> None:
            if d in self._waiters:
                self._waiters.remove(d)

        d: defer.Deferred = defer.Deferred(forget)
        self._waiters.append(d)
        return d

    def fire(self, result: Union[T, Failure]) -> None:
        """Settle the outcome; later calls are ignored."""
        if self.fired:
            return
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def fire_if_not_fired(self, result: Union[T, Failure]) -> None:
        """Same as :meth:`fire` (spelled out where a race is expected)."""
        self.fire(result)

    def _deliver(self, d: defer.Deferred) -> defer.Deferred:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)
        return d
