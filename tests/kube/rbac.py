"""Kubernetes RBAC evaluation over rendered manifests, for the RBAC tests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .fakeapi_http import RequestRecord


@dataclass(frozen=True)
class Grant:
    """One verb on one resource (with subresource), in one namespace ("" = every one), on
    one object name ("" = any)."""

    verb: str
    group: str
    resource: str
    namespace: str
    name: str

    def allows(self, rec: RequestRecord) -> bool:
        resource = f"{rec.resource}/{rec.subresource}" if rec.subresource else rec.resource
        return (
            self.verb in ("*", rec.verb)
            and self.group in ("*", rec.group)
            and self.resource in ("*", resource)
            and self.namespace in ("", rec.namespace)
            and self.name in ("", rec.name)
        )


def service_account_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def grants_for(docs: Iterable[Mapping[str, Any]], namespace: str, account: str) -> set[Grant]:
    """Everything the ServiceAccount may do, expanded from its (Cluster)Role(Binding)s."""
    docs = list(docs)
    roles = {
        (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    out: set[Grant] = set()
    for binding in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace") == namespace
            for s in subjects
        ):
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace", "") if binding["kind"] == "RoleBinding" else ""
        role_ns = scope if ref["kind"] == "Role" else ""
        role = roles.get((ref["kind"], role_ns, ref["name"]))
        if role is None:
            raise AssertionError(
                f"{binding['kind']} {binding['metadata']['name']} refers to a "
                f"missing {ref['kind']} {ref['name']}"
            )
        for rule in role.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule.get("resources") or []:
                    for verb in rule.get("verbs") or []:
                        for name in rule.get("resourceNames") or [""]:
                            out.add(Grant(verb, group, resource, scope, name))
    return out


def bindings_of(docs: Iterable[Mapping[str, Any]], namespace: str, account: str) -> list[str]:
    return [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(
            s.get("kind") == "ServiceAccount"
            and s.get("name") == account
            and s.get("namespace") == namespace
            for s in d.get("subjects") or []
        )
    ]
