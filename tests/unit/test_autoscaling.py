"""The ingress's autoscaling policy (``services/autoscaling.py``) as Serve's controller gets it from
``services/serve_config.yaml``, without a cluster. The cluster test is in
``tests/integration/test_service_scaling.py``."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from services.autoscaling import CPU_METRIC, CpuBusyPolicy, CpuMeter
from services.run import load_config


def _ingress(cfg: dict) -> dict:
    return next(d for d in cfg["applications"][0]["deployments"] if d["name"] == "Ingress")


def _context(shares: list[float | None], current: int | None = None, target: int | None = None,
             total_requests: float = 0.0):
    """Serve's ``AutoscalingContext`` for the Ingress: ``current`` running replicas (default: one per
    share), of which those with a share have reported ``CPU_METRIC``."""
    from ray.serve._private.common import DeploymentID, ReplicaID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    dep = DeploymentID(name="Ingress", app_name="distilrec")
    current = len(shares) if current is None else current
    replicas = [ReplicaID(unique_id=f"r{i}", deployment_id=dep) for i in range(current)]
    metrics = {CPU_METRIC: {r: s for r, s in zip(replicas, shares) if s is not None}}
    return AutoscalingContext(
        deployment_id=dep, deployment_name="Ingress", app_name="distilrec", current_num_replicas=current,
        target_num_replicas=current if target is None else target, running_replicas=replicas,
        total_num_requests=total_requests, total_queued_requests=0.0, aggregated_metrics=metrics,
        raw_metrics={}, capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=4, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=time.time(),
        config=AutoscalingConfig(min_replicas=1, max_replicas=4))


def test_the_meter_reads_a_busy_process_high_and_a_sleeping_one_low():
    meter = CpuMeter()
    time.sleep(0.3)
    idle = meter.sample()
    end = time.monotonic() + 0.3
    while time.monotonic() < end:
        pass
    busy = meter.sample()
    assert idle < 0.2, idle
    assert busy > 3 * idle and busy > 0.3, (busy, idle)


def test_the_policy_follows_cpu_not_the_requests_held():
    policy = CpuBusyPolicy(target_cpu=0.6)
    # one replica holding 300 requests that wait on a restarting stage, at 2 % of a CPU: no more replicas
    # (Serve's default, 64 requests a replica, would ask for 5)
    desired, _ = policy(_context([0.02], total_requests=300))
    assert desired < 1
    # one replica at 90 % of a CPU with few requests: 1.5, which Serve rounds up to 2
    assert policy(_context([0.9], total_requests=10))[0] == pytest.approx(1.5)
    # three replicas at 0.2 each: one would do
    assert policy(_context([0.2, 0.2, 0.2]))[0] == pytest.approx(1.0)
    # near the target (within 10 %), the count stays
    assert policy(_context([0.65, 0.58]))[0] == 2


def test_replicas_without_a_report_count_at_the_mean_and_none_at_all_holds():
    policy = CpuBusyPolicy(target_cpu=0.5)
    # two of four replicas reported 1.0: the four are taken at 1.0 each, 8 replicas' worth
    assert policy(_context([1.0, 1.0, None, None]))[0] == pytest.approx(8.0)
    # nothing reported (every replica new or restarting): the current target, in either direction
    assert policy(_context([None, None], target=3))[0] == 3
    assert policy(_context([], current=0, target=2))[0] == 2


@pytest.mark.parametrize("bad", [0, -1, 9, float("nan"), "x"])
def test_a_bad_target_is_refused_naming_the_value(bad):
    with pytest.raises(ValueError, match="target_cpu"):
        CpuBusyPolicy(target_cpu=bad)


def test_the_serve_config_gives_the_ingress_this_policy_and_the_controller_needs_none_of_our_code():
    """Serve pickles the policy by value when it deploys the config; its controller unpickles and
    instantiates it with ``policy_kwargs``. Here the unpickling runs in a process where importing
    ``services`` or ``distilrec`` fails, as on a controller without the project installed."""
    from ray.serve.config import AutoscalingConfig

    scaling = AutoscalingConfig(**_ingress(load_config())["autoscaling_config"])
    assert scaling.policy.policy_function == "services.autoscaling:CpuBusyPolicy"
    scaling.policy.serialize_policy()
    blob = scaling.policy.get_serialized_policy_def()
    kwargs = scaling.policy.policy_kwargs
    code = f"""
import sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("services", "distilrec"):
            raise ImportError("not installed here: " + name)
sys.meta_path.insert(0, Blocked())
from ray import cloudpickle  # what Serve's controller unpickles with
cls = cloudpickle.loads({blob!r})
policy = cls(**{kwargs!r})
print(type(policy).__name__, policy.target_cpu)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["CpuBusyPolicy", str(kwargs["target_cpu"])]


def test_an_autoscaling_override_keeps_the_policy_unless_it_names_one():
    wider = {"Ingress": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 6}}}
    ranged = _ingress(load_config(overrides=wider))
    assert ranged["autoscaling_config"]["max_replicas"] == 6
    assert ranged["autoscaling_config"]["policy"] == _ingress(load_config())["autoscaling_config"]["policy"]
    default = {"policy_function": "ray.serve.autoscaling_policy:default_autoscaling_policy"}
    own = _ingress(load_config(overrides={"Ingress": {"autoscaling_config": {"max_replicas": 2, "policy": default}}}))
    assert own["autoscaling_config"]["policy"] == default
    fixed = _ingress(load_config(overrides={"Ingress": {"num_replicas": 2}}))
    assert "autoscaling_config" not in fixed and fixed["num_replicas"] == 2
