"""Which replica answers a verb: the leader itself, or a standby that forwards to it.

Every replica whose informers have synced is Ready, and the Service spreads kube-scheduler's calls
over them. A replica that holds the Lease (`state/leader.py`) answers; any other forwards the
request body unchanged to the leader's URL (the Lease annotation `gpusched.io/leader-url`) and
returns the leader's answer as it is. A forwarded request carries `X-Gpusched-Forwarded-By`; a
replica that receives one and is not the leader answers with an error instead of forwarding again,
so a request crosses at most one hop. With no live leader, or a leader that does not answer within
`timeout_s`, the verb fails with an error that says so, and kube-scheduler retries the pod with
backoff. The choice of forwarding over readiness-by-leadership is explained in manifests/README.md
("Availability").
"""

from __future__ import annotations

from typing import Protocol

import httpx
from fastapi import Request, Response

FORWARDED_BY = "X-Gpusched-Forwarded-By"


class Leadership(Protocol):
    """What routing reads of the election (`state/leader.py`'s LeaderElector)."""

    identity: str

    def is_leader(self) -> bool: ...

    def leader(self) -> tuple[str, str] | None: ...

    def stop(self, release: bool = True) -> None: ...


class LeaderRouting:
    def __init__(self, elector: Leadership, timeout_s: float = 4.0) -> None:
        self.elector = elector
        # Below kube-scheduler's httpTimeout (5 s in the manifests), so that our error reaches it.
        self.client = httpx.AsyncClient(timeout=timeout_s)

    def leading(self) -> bool:
        return self.elector.is_leader()

    def has_leader(self) -> bool:
        """A verb sent here now would be answered: this replica leads, or a live leader is known."""
        return self.leading() or self.elector.leader() is not None

    async def forward(self, request: Request, body: bytes) -> tuple[Response | None, str]:
        """The leader's answer, or (None, why not) when there is none to give."""
        sender = request.headers.get(FORWARDED_BY)
        if sender:
            return None, f"replica {self.elector.identity} is not the leader (forwarded by {sender})"
        leader = self.elector.leader()
        if leader is None:
            return None, "no gpusched leader elected yet"
        identity, url = leader
        if identity == self.elector.identity or not url:
            return None, f"leader {identity} has no reachable URL"
        try:
            answer = await self.client.post(
                url.rstrip("/") + request.url.path,
                content=body,
                headers={"Content-Type": "application/json", FORWARDED_BY: self.elector.identity},
            )
        except httpx.HTTPError as exc:
            return None, f"leader {identity} at {url} did not answer: {type(exc).__name__}: {exc}"
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type")), ""
