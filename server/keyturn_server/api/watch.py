"""WatchExpiring on the wire: request filters in, ExpiryEvent messages out.

Fan-out converts the same event for every subscriber; the message of the last few
events is built once and shared (tokens, which differ per subscriber, are never cached).
"""

from __future__ import annotations

from collections import OrderedDict

from keyturn.v1 import events_pb2
from keyturn_server.api.convert import EVENT_KIND_FROM, required_enum, stream_message
from keyturn_server.domain.events import EventKind, Subject
from keyturn_server.domain.watch import StreamItem, WatchRequest

_CACHE_SIZE = 256


def watch_request(subject: Subject, request: events_pb2.WatchExpiringRequest) -> WatchRequest:
    kinds: list[EventKind] = [required_enum(EVENT_KIND_FROM, k, "kinds") for k in request.kinds]
    return WatchRequest(
        subject=subject,
        types=list(request.types),
        ids=list(request.ids),
        owner=request.owner,
        kinds=kinds,
        resume_after=request.resume_after if request.HasField("resume_after") else None,
        deliver_tokens=request.deliver_tokens,
    )


class StreamEncoder:
    def __init__(self) -> None:
        self._cache: OrderedDict[int, events_pb2.ExpiryEvent] = OrderedDict()

    def message(self, item: StreamItem) -> events_pb2.ExpiryEvent:
        event = item.event
        if event is None or item.token:
            return stream_message(item)
        cached = self._cache.get(event.sequence)
        if cached is None:
            cached = self._cache[event.sequence] = stream_message(item)
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return cached
