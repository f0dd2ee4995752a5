"""Which node an agent's ServiceAccount token speaks for: a TokenReview, then the Pod.

    reviewer = TokenReviewer(api, audience="weir-controller", account=("weir-system", "weir-agent"))
    node = await reviewer.node_of(token)        # or NodeIdentityRefused

The API server decides whether the token is genuine, unexpired, meant for `audience` (the
review asks for it, and its answer must name it: a server that ignores audiences answers
with none) and still bound to a live Pod (authentication.k8s.io/v1; it refuses a token whose
Pod was deleted). The token must be the agent's ServiceAccount's. Its node is the Pod's:
taken from the review's `authentication.kubernetes.io/node-name` extra (Kubernetes 1.30
and later put the node in Pod-bound tokens), else read from the Pod the review names (its UID
must be the token's). Nothing of the token itself is trusted without the review.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import aiohttp
import grpc
from weir.controller.kube.api import ApiError, KubeAPI, Resource
from weir.controller.plane.identity import NodeIdentityRefused

TOKEN_REVIEWS = Resource("TokenReview", "authentication.k8s.io", "v1", "tokenreviews", False)
PODS = Resource("Pod", "", "v1", "pods", True)

EXTRA = "authentication.kubernetes.io/"
NODE_NAME, POD_NAME, POD_UID = EXTRA + "node-name", EXTRA + "pod-name", EXTRA + "pod-uid"


def _refused(message: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> Exception:
    return NodeIdentityRefused(code, message, reason="token")


def _single(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


class TokenReviewer:
    def __init__(
        self,
        api: KubeAPI,
        *,
        audience: str,
        account: tuple[str, str],  # (namespace, name) of the agents' ServiceAccount
        concurrency: int = 8,  # reviews at once: a fleet starting together queues
    ) -> None:
        if not audience:
            raise ValueError("a token audience is required")
        self.api = api
        self.audience = audience
        self.namespace, self.account = account
        self.username = f"system:serviceaccount:{self.namespace}:{self.account}"
        self._limit = asyncio.Semaphore(concurrency)

    async def _request(self, call: Any) -> dict[str, Any]:
        try:
            async with self._limit:
                return await call
        except ApiError as e:
            if e.status == 404:
                raise
            raise _refused(f"the API server refused: {e}", grpc.StatusCode.UNAVAILABLE) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _refused(
                f"the API server is unreachable: {e!r}", grpc.StatusCode.UNAVAILABLE
            ) from None

    async def node_of(self, token: str) -> str:
        review = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self.audience]},
        }
        answer = await self._request(self.api.create(TOKEN_REVIEWS, "", review))
        status = answer.get("status") or {}
        if status.get("authenticated") is not True:
            reason = status.get("error") or "no reason given"
            raise _refused(
                f"the token does not authenticate: {reason}", grpc.StatusCode.UNAUTHENTICATED
            )
        if self.audience not in (status.get("audiences") or []):
            raise _refused(
                f"the API server did not confirm the token is for audience {self.audience!r}",
                grpc.StatusCode.UNAUTHENTICATED,
            )
        user = status.get("user") or {}
        if user.get("username") != self.username:
            raise _refused(f"the token is {user.get('username')!r}'s, not {self.username!r}'s")
        extra = user.get("extra") or {}
        node = _single(extra, NODE_NAME)
        if node:
            return node
        pod, uid = _single(extra, POD_NAME), _single(extra, POD_UID)
        if not pod or not uid:
            raise _refused("the token is not bound to a Pod (mount a projected token)")
        try:
            found = await self._request(self.api.get(PODS, self.namespace, pod))
        except ApiError:
            raise _refused(f"the token's Pod {self.namespace}/{pod} is gone") from None
        if (found.get("metadata") or {}).get("uid") != uid:
            raise _refused(f"the token's Pod {self.namespace}/{pod} was replaced")
        node = (found.get("spec") or {}).get("nodeName") or ""
        if not node:
            raise _refused(f"the token's Pod {self.namespace}/{pod} has no node yet")
        return node
