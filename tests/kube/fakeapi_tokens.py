"""ServiceAccount tokens in the fake kube-apiserver: issuing them as TokenRequest does, and
reviewing them as TokenReview (authentication.k8s.io/v1) does, no kinder than the real server.

Issuing (the kubelet's TokenRequest for a projected volume), as the API validates it:
- the ServiceAccount must exist; expirationSeconds is at least 600 (10 minutes);
- a token bound to a Pod needs the Pod to exist, with that ServiceAccount;
- audiences default to the API server's own;
- the claims are the real ones: iss, sub (system:serviceaccount:NS:NAME), aud, exp, iat, nbf,
  and kubernetes.io: namespace, serviceaccount {name, uid}, pod {name, uid}; from 1.30 also
  jti and, for a Pod-bound token, node {name, uid} of the Pod's node.
Tests may backdate a token (issued_at) to get an expired one.

Reviewing (what an audience-aware authenticator answers, pkg/serviceaccount/claims.go):
- the token must be one this server signed: anything else is "invalid bearer token";
- its audiences must meet the review's (spec.audiences, else the API server's own);
  status.audiences is that intersection, in the review's order;
- exp and nbf are checked with the 60 s leeway the real validator allows (go-jose's default);
- the ServiceAccount must still exist with the token's UID; a Pod-bound token's Pod too (a
  Pod deleted, or replaced under the same name, invalidates it);
- user: username, uid (the ServiceAccount's), groups, and extra: pod-name, pod-uid for a Pod-
  bound token, and from 1.30 credential-id (JTI=...), node-name, node-uid when the token
  carries the node.
Its answer is created, never stored: HTTP 201, no resourceVersion.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Sequence
from typing import Any

from .fakeapi_store import ApiError, Store
from .fakeapi_types import Obj

API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"
MIN_EXPIRATION = 600  # seconds: the API refuses shorter TokenRequests
LEEWAY = 60  # seconds: go-jose's DefaultLeeway, which the validator uses for exp and nbf
NODE_INFO_SINCE = (1, 30)  # ServiceAccountTokenPodNodeInfo and ServiceAccountTokenJTI: beta
EXTRA = "authentication.kubernetes.io/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ServiceAccountTokens:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._key = secrets.token_bytes(32)  # the server's signing key
        self._kid = uuid.uuid4().hex

    # --- TokenRequest -------------------------------------------------------------------------

    def _get(self, kind: str, namespace: str, name: str) -> Obj | None:
        rtype = self.store.type_for("v1", kind)
        return self.store.objects[rtype.key].get((namespace if rtype.namespaced else "", name))

    def issue(
        self,
        namespace: str,
        account: str,
        *,
        audiences: Sequence[str] = (),
        pod: str | None = None,
        expiration: int = 3600,
        issued_at: float | None = None,
    ) -> str:
        sa = self._get("ServiceAccount", namespace, account)
        if sa is None:
            raise ApiError(404, "NotFound", f'serviceaccounts "{account}" not found')
        if expiration < MIN_EXPIRATION:
            raise ApiError(
                422,
                "Invalid",
                f"spec.expirationSeconds: Invalid value: {expiration}: may not specify a "
                "duration less than 10 minutes",
            )
        now = int(time.time() if issued_at is None else issued_at)
        private: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": sa["metadata"]["uid"]},
        }
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": f"system:serviceaccount:{namespace}:{account}",
            "aud": list(audiences) or [API_AUDIENCE],
            "exp": now + expiration,
            "iat": now,
            "nbf": now,
        }
        new = self.store.version >= NODE_INFO_SINCE
        if new:
            claims["jti"] = str(uuid.uuid4())
        if pod is not None:
            bound = self._get("Pod", namespace, pod)
            if bound is None:
                raise ApiError(404, "NotFound", f'pods "{pod}" not found')
            if (bound.get("spec") or {}).get("serviceAccountName", "default") != account:
                raise ApiError(
                    400,
                    "BadRequest",
                    f"cannot bind a token of ServiceAccount {account} to Pod {pod}, which runs "
                    "as another ServiceAccount",
                )
            private["pod"] = {"name": pod, "uid": bound["metadata"]["uid"]}
            node = (bound.get("spec") or {}).get("nodeName") or ""
            node_obj = self._get("Node", "", node) if node else None
            if new and node_obj is not None:
                private["node"] = {"name": node, "uid": node_obj["metadata"]["uid"]}
        claims["kubernetes.io"] = private
        header = {"alg": "HS256", "kid": self._kid, "typ": "JWT"}
        signed = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = hmac.new(self._key, signed.encode(), hashlib.sha256).digest()
        return f"{signed}.{_b64(signature)}"

    # --- TokenReview --------------------------------------------------------------------------

    def claims(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this server signed (None for any other string)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            signature = _unb64(parts[2])
            good = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
            if not hmac.compare_digest(signature, good):
                return None
            claims = json.loads(_unb64(parts[1]))
        except (ValueError, TypeError):
            return None
        return claims if isinstance(claims, dict) else None

    def authenticate(self, token: str, audiences: Sequence[str]) -> tuple[Obj, list[str]]:
        """(user info, audiences) of a valid token; ValueError(why) otherwise."""
        claims = self.claims(token)
        if claims is None:
            raise ValueError("invalid bearer token")
        wanted = list(audiences) or [API_AUDIENCE]
        met = [a for a in wanted if a in claims.get("aud", [])]
        if not met:
            raise ValueError(
                f"invalid bearer token, token audiences {json.dumps(claims.get('aud'))} is "
                f"invalid for the target audiences {json.dumps(wanted)}"
            )
        now = time.time()
        if now > claims["exp"] + LEEWAY:
            raise ValueError("invalid bearer token, service account token has expired")
        if now < claims["nbf"] - LEEWAY:
            raise ValueError("invalid bearer token, service account token is not valid yet")
        private = claims["kubernetes.io"]
        namespace = private["namespace"]
        sa_ref = private["serviceaccount"]
        sa = self._get("ServiceAccount", namespace, sa_ref["name"])
        if sa is None:
            raise ValueError(f'invalid bearer token, serviceaccounts "{sa_ref["name"]}" not found')
        if sa["metadata"]["uid"] != sa_ref["uid"]:
            raise ValueError(
                f"invalid bearer token, service account UID ({sa['metadata']['uid']}) does not "
                f"match claim ({sa_ref['uid']})"
            )
        extra: dict[str, list[str]] = {}
        if "jti" in claims:
            extra[EXTRA + "credential-id"] = [f"JTI={claims['jti']}"]
        pod_ref = private.get("pod")
        if pod_ref is not None:
            pod = self._get("Pod", namespace, pod_ref["name"])
            if pod is None or (pod["metadata"].get("deletionTimestamp") is not None):
                raise ValueError("invalid bearer token, service account token has been invalidated")
            if pod["metadata"]["uid"] != pod_ref["uid"]:
                raise ValueError(
                    f"invalid bearer token, pod UID ({pod['metadata']['uid']}) does not match "
                    f"service account pod ref claim ({pod_ref['uid']})"
                )
            extra[EXTRA + "pod-name"] = [pod_ref["name"]]
            extra[EXTRA + "pod-uid"] = [pod_ref["uid"]]
            node_ref = private.get("node")
            if node_ref is not None:
                extra[EXTRA + "node-name"] = [node_ref["name"]]
                extra[EXTRA + "node-uid"] = [node_ref["uid"]]
        user = {
            "username": claims["sub"],
            "uid": sa_ref["uid"],
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            "extra": extra,
        }
        return user, met

    def review(self, body: Any) -> Obj:
        """A TokenReview's answer."""
        spec = (body or {}).get("spec") if isinstance(body, dict) else None
        if not isinstance(spec, dict) or not spec.get("token"):
            raise ApiError(422, "Invalid", 'TokenReview "" is invalid: spec.token: Required value')
        audiences = spec.get("audiences") or []
        try:
            user, met = self.authenticate(spec["token"], audiences)
            status: Obj = {"authenticated": True, "user": user, "audiences": met}
        except ValueError as e:
            status = {"user": {}, "error": f"[{e}]"}
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": {k: v for k, v in spec.items() if k in ("token", "audiences")},
            "status": status,
        }
