"""The fake's ServiceAccount tokens behave as the API documents TokenRequest and TokenReview
(authentication.k8s.io/v1): audiences met or refused, expiry with the real 60 s leeway, the
bound Pod (and, from 1.30, its node) in the review's user info, a deleted or replaced Pod
invalidating its tokens, and an agent's token useless against the API server itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from weir.controller.kube.api import ApiError, KubeAPI
from weir.controller.kube.tokenreview import TOKEN_REVIEWS

from . import builders as b
from .conftest import NAMESPACE, client_of, serving
from .fakeapi import FakeKubeAPI
from .fakeapi_store import ApiError as FakeApiError

AUDIENCE = "weir-controller"


def cluster(fake: FakeKubeAPI, node: str = "node-a", pod: str = "agent-1") -> None:
    fake.create(b.node(node, "10.0.0.1"))
    fake.create(b.service_account("weir-agent", NAMESPACE))
    fake.create(b.pod(pod, NAMESPACE, node, "weir-agent"))


async def review(kube: KubeAPI, token: str, audiences: list[str]) -> dict[str, Any]:
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview"}
    body["spec"] = {"token": token, "audiences": audiences}
    return (await kube.create(TOKEN_REVIEWS, "", body))["status"]


async def test_a_bound_token_reviews_with_its_pod_and_node(
    fake: FakeKubeAPI, kube: KubeAPI
) -> None:
    cluster(fake)
    token = fake.service_account_token(
        NAMESPACE, "weir-agent", audiences=(AUDIENCE,), pod="agent-1"
    )
    status = await review(kube, token, ["other", AUDIENCE])
    assert status["authenticated"] is True and status["audiences"] == [AUDIENCE]
    user = status["user"]
    assert user["username"] == f"system:serviceaccount:{NAMESPACE}:weir-agent"
    extra = user["extra"]
    assert extra["authentication.kubernetes.io/pod-name"] == ["agent-1"]
    assert extra["authentication.kubernetes.io/node-name"] == ["node-a"]  # 1.32
    assert extra["authentication.kubernetes.io/credential-id"][0].startswith("JTI=")
    # Not stored: a review has no resourceVersion and lists nothing.
    assert fake.calls(resource="tokenreviews", verb="create")[-1].code == 201


async def test_before_1_30_the_review_names_the_pod_only(tmp_path: Path) -> None:
    async with (
        serving(version=(1, 29)) as fake,
        client_of(fake.write_kubeconfig(tmp_path / "kc")) as api,
    ):
        cluster(fake)
        token = fake.service_account_token(
            NAMESPACE, "weir-agent", audiences=(AUDIENCE,), pod="agent-1"
        )
        extra = (await review(KubeAPI(api), token, [AUDIENCE]))["user"]["extra"]
        assert set(extra) == {
            "authentication.kubernetes.io/pod-name",
            "authentication.kubernetes.io/pod-uid",
        }


async def test_refused_tokens(fake: FakeKubeAPI, kube: KubeAPI) -> None:
    cluster(fake)
    ok = fake.service_account_token(NAMESPACE, "weir-agent", audiences=(AUDIENCE,), pod="agent-1")
    # Wrong audience (and none: the API server's own audience).
    status = await review(kube, ok, ["someone-else"])
    assert (
        "authenticated" not in status and "is invalid for the target audiences" in status["error"]
    )
    assert "error" in await review(kube, ok, [])
    # Expired: past exp plus the 60 s leeway; within the leeway it still passes.
    hour = 3600
    late = fake.service_account_token(
        NAMESPACE, "weir-agent", audiences=(AUDIENCE,), issued_at=time.time() - hour - 120
    )
    assert "has expired" in (await review(kube, late, [AUDIENCE]))["error"]
    lenient = fake.service_account_token(
        NAMESPACE, "weir-agent", audiences=(AUDIENCE,), issued_at=time.time() - hour - 30
    )
    assert (await review(kube, lenient, [AUDIENCE]))["authenticated"] is True
    # Forged or mangled.
    head, claims, sig = ok.split(".")
    assert "invalid bearer token" in (await review(kube, f"{head}.{claims}.x{sig}", []))["error"]
    # The Pod deleted, then one of the same name made again: the token stays invalid.
    fake.delete("v1", "Pod", NAMESPACE, "agent-1")
    assert "invalidated" in (await review(kube, ok, [AUDIENCE]))["error"]
    fake.create(b.pod("agent-1", NAMESPACE, "node-a", "weir-agent"))
    assert "does not match" in (await review(kube, ok, [AUDIENCE]))["error"]


def test_token_requests_are_validated(fake: FakeKubeAPI) -> None:
    cluster(fake)
    with pytest.raises(FakeApiError, match="less than 10 minutes"):
        fake.service_account_token(NAMESPACE, "weir-agent", expiration=300)
    with pytest.raises(FakeApiError, match="not found"):
        fake.service_account_token(NAMESPACE, "nobody")
    fake.create(b.service_account("other", NAMESPACE))
    with pytest.raises(FakeApiError, match="another ServiceAccount"):
        fake.service_account_token(NAMESPACE, "other", pod="agent-1")


async def test_an_agent_token_does_not_open_the_api(fake: FakeKubeAPI, tmp_path: Path) -> None:
    cluster(fake)
    agent = fake.service_account_token(NAMESPACE, "weir-agent", audiences=(AUDIENCE,))
    api_token = fake.service_account_token(NAMESPACE, "weir-agent")  # the API's audience
    for token, works in ((agent, False), (api_token, True)):
        kubeconfig = fake.write_kubeconfig(tmp_path / "kc", user="x", token=token)
        fake.tokens.pop(token)  # only the token itself, as a Pod would present it
        async with client_of(kubeconfig) as api:
            call = KubeAPI(api).request("GET", "/api/v1/namespaces")
            if works:
                await call
            else:
                with pytest.raises(ApiError, match="401"):
                    await call
