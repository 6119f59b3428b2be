"""Federated queries over the REST API, as a coordinator and the data owners would ask and
approve them: used by ``run_local.py`` for the cross-site evaluation of the final model."""

from __future__ import annotations

import time

from deploy.local.bootstrap import Api, Json
from deploy.local.processes import log

#: How long the agents may take to answer a query.
QUERY_TIMEOUT_SECONDS = 120.0


def ask_and_wait(api: Api, owners: list[Api], institution_ids: list[int], study_id: int, query: Json) -> Json:
    """Ask ``query``, approve it as every data owner, and wait for the agents' answers."""
    asked = api.call("POST", f"studies/{study_id}/queries/", json={"query": query})
    for owner, institution_id in zip(owners, institution_ids, strict=True):
        decision = {"institution": institution_id, "decision": "approve"}
        owner.call("POST", f"studies/{study_id}/queries/{asked['id']}/decision/", json=decision)
    deadline = time.monotonic() + QUERY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        state = api.call("GET", f"studies/{study_id}/queries/{asked['id']}/")
        if state["state"] == "complete":
            return state
        if state["state"] != "open":
            raise RuntimeError(f"query {asked['id']} {state['state']}: {state['reason']}")
        time.sleep(0.5)
    raise RuntimeError(f"query {asked['id']} was not answered within {QUERY_TIMEOUT_SECONDS:.0f} s")


def _rounded(metrics: Json, names: tuple[str, ...]) -> Json:
    return {name: round(metrics[name], 4) for name in names if isinstance(metrics.get(name), float)}


METRICS = ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc", "roc_auc_bound", "brier")


def cross_site_evaluation(
    api: Api, owners: list[Api], institution_ids: list[int], study_id: int, version_ids: list[int]
) -> Json:
    """Each site's agent scores ``version_ids`` on its held-out rows; the figures of the last
    version: combined exactly from the sites' counts, each site's, and the former
    approximation (the example-weighted mean of the sites' values)."""
    log(f"cross-site evaluation of model versions {version_ids} by every site's agent")
    done = ask_and_wait(
        api, owners, institution_ids, study_id, {"kind": "evaluation", "versions": version_ids}
    )
    last = done["result"]["versions"][str(version_ids[-1])]
    return {
        "query": done["id"],
        "version": version_ids[-1],
        "rows": last["combined"]["rows"],
        "combined": _rounded(last["combined"], METRICS),
        "example_weighted": {k: round(v, 4) for k, v in last["example_weighted"].items() if v is not None},
        "sites": {name: _rounded(metrics, METRICS) for name, metrics in last["sites"].items()},
        "site_rows": {name: metrics["rows"] for name, metrics in last["sites"].items()},
        "versions": {
            version: _rounded(part["combined"], ("accuracy", "roc_auc"))
            for version, part in done["result"]["versions"].items()
        },
    }
