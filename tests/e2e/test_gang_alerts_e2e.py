"""The gang alerts against the series the extender really produces.

A gang whose second member kube-scheduler's own filters turn away everywhere (a nodeSelector no
node carries) never completes: kube-scheduler never calls gpusched for that member, so its gang
is planned on the first member's filter, waits without progress, lapses after the reservation TTL
and is planned again on the next retry. The extender's /metrics is read as Prometheus would
scrape it, every second, and the series the gang alerts read are written into a promtool unit
test (one captured scrape per minute, labelled as the scrape job labels them), in which
GpuschedGangPlansLapsing must fire and GpuschedGangPartlyBound must not.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import k8s
from scheduler.core.scenario import pod_object
from tests.e2e.gpusched_env import Env
from tests.prometheus import PROMETHEUS_DIR, promtool

pytestmark = pytest.mark.e2e

RULES = {
    r["alert"]: r for r in yaml.safe_load((PROMETHEUS_DIR / "gpusched-alerts.yaml").read_text())["groups"][0]["rules"]
}
SERIES = ("gpusched_gang_reservations_expired_total", "gpusched_gangs_partly_bound")


def scrape(env: Env) -> dict[str, float]:
    """The extender's samples of the gang series, by name (they carry no labels of their own)."""
    found = {}
    for line in env.extender.get("/metrics").decode().splitlines():
        match = re.fullmatch(r"(\w+) (\S+)", line)
        if match and match[1] in SERIES:
            found[match[1]] = float(match[2])
    return found


def member(name: str, rank: int, spec: dict[str, Any]) -> dict[str, Any]:
    labels = {"scheduling.x-k8s.io/pod-group": "stuck", "batch.kubernetes.io/job-completion-index": str(rank)}
    obj = pod_object({"name": name, "gpus": 8, "annotations": {"gpusched.io/min-member": "2"}, "labels": labels})
    obj["spec"].pop("nodeName", None)
    obj["spec"].update(spec)
    return obj


@pytest.mark.gpusched_config({"gang": {"reservationTTLSeconds": 2}})
def test_a_gang_that_keeps_lapsing_fires_the_alert_on_the_extenders_own_series(gpusched: Env, tmp_path: Path) -> None:
    gpusched.node("n0", 8)
    gpusched.node("n1", 8)
    for rank, spec in enumerate(({}, {"nodeSelector": {"pool": "nowhere"}})):
        k8s.request(gpusched.api, "POST", "/api/v1/namespaces/default/pods", member(f"stuck-{rank}", rank, spec))

    scrapes: list[dict[str, float]] = []

    def lapsed_three_times() -> bool:
        scrapes.append(scrape(gpusched))
        time.sleep(1.0)
        return scrapes[-1].get(SERIES[0], 0.0) >= 4.0  # the 4th lapse: three increases after the first

    gpusched.wait_for(lapsed_three_times, "the stuck gang's plan to lapse 4 times", timeout=120)
    assert not any(gpusched.get_pod(f"stuck-{r}")["spec"].get("nodeName") for r in range(2))
    assert all(s.get(SERIES[1]) == 0.0 for s in scrapes)  # never partly bound: nothing of it was bound

    # Promtool: 40 minutes of the first scrape, then each captured scrape a minute apart, then the
    # last one held; every label as the scrape job adds it.
    instance = gpusched.extender.url.removeprefix("http://")
    input_series = []
    for name in SERIES:
        values = [s[name] for s in scrapes]
        held = [values[0]] * 40 + values + [values[-1]] * 5
        input_series.append(
            {
                "series": f'{name}{{job="gpusched-extender", instance="{instance}"}}',
                "values": " ".join(format(v, "g") for v in held),
            }
        )
    end = 40 + len(scrapes)  # minutes: the last captured scrape, 40 minutes in plus one per scrape
    lapsing = RULES["GpuschedGangPlansLapsing"]
    tests = [
        {
            "name": "a stuck gang in the e2e run",
            "interval": "1m",
            "input_series": input_series,
            "alert_rule_test": [
                {"eval_time": "39m", "alertname": "GpuschedGangPlansLapsing", "exp_alerts": []},
                {
                    "eval_time": f"{end}m",
                    "alertname": "GpuschedGangPlansLapsing",
                    "exp_alerts": [{"exp_labels": lapsing["labels"], "exp_annotations": lapsing["annotations"]}],
                },
                {"eval_time": f"{end}m", "alertname": "GpuschedGangPartlyBound", "exp_alerts": []},
            ],
        }
    ]
    path = tmp_path / "gang-alerts-test.yaml"
    path.write_text(
        yaml.safe_dump(
            {"rule_files": [str(PROMETHEUS_DIR / "gpusched-alerts.yaml")], "evaluation_interval": "1m", "tests": tests}
        )
    )
    result = promtool("test", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr + path.read_text()
