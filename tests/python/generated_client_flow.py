"""Drives the live Kubeforge API through a client that openapi-python-client
generated from the served OpenAPI document (tests/tests/openapi_client.rs).

Only the generated package is used to talk to the server: its typed
functions (`api.<tag>.<operation_id>`) and models. Every answer must parse
into the model the document declares for its status; anything else raises,
and the script exits non-zero. On success it prints one JSON summary line
for the Rust test to check.

    python generated_client_flow.py BASE_URL TOKEN PACKAGE_PARENT_DIR
"""

import json
import sys
import time

BASE_URL, TOKEN, PACKAGE_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, PACKAGE_DIR)

import httpx  # noqa: E402  (the generated client's own dependency: timeouts)

from kubeforge_client import AuthenticatedClient  # noqa: E402
from kubeforge_client.api.clusters import (  # noqa: E402
    create_cluster,
    delete_cluster,
    get_cluster,
    list_clusters,
)
from kubeforge_client.api.node_pools import update_node_pool  # noqa: E402
from kubeforge_client.api.operations import get_operation  # noqa: E402
from kubeforge_client.models import (  # noqa: E402
    ClusterAccepted,
    ClusterView,
    ControlPlaneRequest,
    CreateClusterRequest,
    CreateClusterRequestLabels,
    CreateNodePoolRequest,
    NetworkRequest,
    NodePoolAccepted,
    OperationAccepted,
    OperationView,
    PageClusterView,
    Phase,
    Problem,
    LabProvider,
    LabProviderKind,
    UpdateNodePoolRequest,
)
from kubeforge_client.types import UNSET, Unset  # noqa: E402

POLL_DEADLINE_S = 60


def expect(response, status, model):
    """The parsed answer of a `sync_detailed` call, checked to be `model`
    with HTTP `status`."""
    if response.status_code != status or not isinstance(response.parsed, model):
        raise AssertionError(
            f"expected {status} {model.__name__}, got {int(response.status_code)} "
            f"{type(response.parsed).__name__}: {response.content[:500]!r}"
        )
    return response.parsed


def cluster_request(name, team, pod_cidr="10.244.0.0/16"):
    labels = CreateClusterRequestLabels()
    labels["team"] = team
    return CreateClusterRequest(
        name=name,
        kubernetes_version="1.20.2",
        provider=LabProvider(kind=LabProviderKind.LAB),
        control_plane=ControlPlaneRequest(replicas=1, machine_type="small"),
        network=NetworkRequest(pod_cidr=pod_cidr, service_cidr="10.96.0.0/12"),
        node_pools=[CreateNodePoolRequest(name="default", machine_type="small", size=2)],
        labels=labels,
    )


def operation(client, op_id):
    return expect(get_operation.sync_detailed(str(op_id), client=client), 200, OperationView)


def poll_operation(client, op_id, done):
    """Reads the operation by id until `done(op)` holds; returns it and
    the number of reads."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    reads = 0
    while True:
        op = operation(client, op_id)
        reads += 1
        if done(op):
            return op, reads
        if op.state == "failed" or time.monotonic() > deadline:
            raise AssertionError(f"operation {op_id} did not get there: {op.to_dict()}")
        time.sleep(0.2)


def step_state(op, name):
    return next((s.state for s in op.steps if s.name == name), None)


def main():
    client = AuthenticatedClient(
        base_url=BASE_URL,
        token=TOKEN,
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(30.0),
    )
    summary = {}
    with client:
        # Create: three clusters of team web, one of team data.
        created = {}
        for name, team in [("web-a", "web"), ("web-b", "web"), ("web-c", "web"), ("db-a", "data")]:
            acc = expect(
                create_cluster.sync_detailed(client=client, body=cluster_request(name, team)),
                202,
                ClusterAccepted,
            )
            created[name] = {
                "cluster_id": str(acc.cluster.id),
                "cluster_name": acc.cluster.name,
                "phase": acc.cluster.phase.value,
                "operation_id": str(acc.operation.id),
                "operation_type": acc.operation.type_,
                "operation_cluster": str(acc.operation.cluster),
            }
        summary["created"] = created

        # The create operation, read by id while the engine works on it:
        # its machines step finishes (the control plane's bootstrap needs
        # real machines, which the test double does not have).
        op, reads = poll_operation(
            client,
            created["web-a"]["operation_id"],
            lambda o: step_state(o, "machines") == "succeeded",
        )
        summary["create_operation"] = {
            "id": str(op.id),
            "type": op.type_,
            "state": op.state,
            "steps": {s.name: s.state for s in op.steps},
            "started": not isinstance(op.started_at, Unset) and op.started_at is not None,
            "reads": reads,
        }

        # A pool scaled: its operation, read by id until it is done.
        acc = expect(
            update_node_pool.sync_detailed(
                "web-a", "default", client=client, body=UpdateNodePoolRequest(size=3)
            ),
            200,
            NodePoolAccepted,
        )
        op, reads = poll_operation(client, acc.operation.id, lambda o: o.finished_at)
        summary["scale_operation"] = {
            "type": op.type_,
            "state": op.state,
            "pool_size": acc.node_pool.size,
            "finished": op.finished_at is not None,
            "reads": reads,
        }

        # List with a filter (label and phase), one per page, following
        # next_page_token to the end.
        pages, names, token = 0, [], None
        while True:
            page = expect(
                list_clusters.sync_detailed(
                    client=client,
                    label="team=web",
                    phase=Phase.PROVISIONING,
                    limit=1,
                    page_token=token if token is not None else UNSET,
                ),
                200,
                PageClusterView,
            )
            pages += 1
            names.extend(c.name for c in page.items)
            if not all(isinstance(c, ClusterView) for c in page.items):
                raise AssertionError("page items are not ClusterView")
            token = page.next_page_token
            if token is None:
                break
            if pages > 20:
                raise AssertionError("pagination does not end")
        summary["list"] = {"pages": pages, "names": names}

        # Get one cluster.
        c = expect(get_cluster.sync_detailed("web-b", client=client), 200, ClusterView)
        summary["get"] = {
            "id": str(c.id),
            "name": c.name,
            "phase": c.phase.value,
            "team": c.labels["team"],
            "pod_cidr": c.network.pod_cidr,
            "etag": c.etag,
            # The provider's oneOf, parsed into the variant's own model.
            "provider": type(c.provider).__name__,
            "provider_kind": c.provider.kind.value,
        }

        # A bad body: a problem document naming the field.
        p = expect(
            create_cluster.sync_detailed(
                client=client, body=cluster_request("bad", "web", pod_cidr="10.244.0.0/99")
            ),
            422,
            Problem,
        )
        summary["problem"] = {
            "status": p.status,
            "code": p.code,
            "field": None if isinstance(p.field, Unset) else p.field,
            "title": p.title,
        }

        # Delete one cluster and read its operation until it is done; the
        # cluster is then gone (a problem document, 404).
        acc = expect(delete_cluster.sync_detailed("web-c", client=client), 202, OperationAccepted)
        op, reads = poll_operation(client, acc.operation.id, lambda o: o.finished_at)
        gone = expect(get_cluster.sync_detailed("web-c", client=client), 404, Problem)
        summary["delete"] = {
            "type": op.type_,
            "state": op.state,
            "reads": reads,
            "then_get": {"status": gone.status, "code": gone.code},
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
