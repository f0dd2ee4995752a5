"""Node certificates for tokens: the IssueNodeCertificate RPC's work.

    issuer = NodeCertificates(authority, reviewer, validity=timedelta(hours=12))
    response = await issuer.issue(request)     # or NodeIdentityRefused

The token authenticator (a TokenReview against the Kubernetes API, controller/kube/
tokenreview.py) says which node the token's Pod runs on; the request is signed only when that
is the node it asks for. The certificate then carries the node's name, which is what the
NodePlane's other RPCs check (a node may only ask for its own view), and lasts `validity`:
agents ask again, with a fresh token, well before it ends.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Protocol

import grpc
from weir.common.pb import pb
from weir.controller.plane.authority import Authority, RequestRefused


class NodeIdentityRefused(Exception):
    """The token or the request does not earn a certificate; code and message for the caller."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str = "token") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason  # the refused metric's label


class TokenAuthenticator(Protocol):
    async def node_of(self, token: str) -> str:
        """The node the token's Pod runs on; NodeIdentityRefused when the token does not
        authenticate an agent."""
        ...


class NodeCertificates:
    def __init__(
        self,
        authority: Authority,
        authenticator: TokenAuthenticator,
        *,
        validity: datetime.timedelta,
        ca_bundle: Callable[[], bytes],
    ) -> None:
        self.authority = authority
        self.authenticator = authenticator
        self.validity = validity
        self._ca_bundle = ca_bundle

    async def issue(
        self, request: pb.IssueNodeCertificateRequest
    ) -> pb.IssueNodeCertificateResponse:
        if not request.token:
            raise NodeIdentityRefused(grpc.StatusCode.UNAUTHENTICATED, "no token in the request")
        node = await self.authenticator.node_of(request.token)
        if node != request.node:
            raise NodeIdentityRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token belongs to a Pod on node {node!r}, not {request.node!r}",
                reason="identity",
            )
        try:
            cert, not_after = self.authority.issue_client(request.csr, node, self.validity)
        except RequestRefused as e:
            raise NodeIdentityRefused(
                grpc.StatusCode.INVALID_ARGUMENT, str(e), reason="request"
            ) from None
        return pb.IssueNodeCertificateResponse(
            certificate=cert,
            ca_bundle=self._ca_bundle(),
            not_after_unix=int(not_after.timestamp()),
        )
