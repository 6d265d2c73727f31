"""Each run of a study as a Ray task; this process (the driver) stays the only writer of study.db.

What travels: a run's arguments are its task spec (a built-in name, ``module:function`` or
``file.py:function``), the plan and the run spec, a few kilobytes of JSON-able data passed inline;
each worker builds the task and its data itself, so no data set goes through the object store. What
comes back is the run's record (curves, step losses, final metrics: tens to hundreds of kilobytes).
The driver saves each record the moment it arrives, one transaction per run, so the study lock and
``--resume`` mean what they mean for local workers: a driver killed mid-study loses only the runs in
flight (Ray ends a dead driver's tasks) and a resume runs them again.

A run whose task raises or whose worker dies (crash, OOM kill, lost node) is saved as ``retrying``
with the reason, and submitted once more; a second failure is saved as ``failed``. Neither counts as
done, so a later ``--resume`` tries it again.
"""

from __future__ import annotations

import os
import socket
from typing import Callable, Optional

from ..errors import ConfigError
from .plan import RunSpec, StudyPlan
from .runner import RunRecord, _worker

RETRIES = 1


def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("study --ray needs Ray, which is not installed: pip install 'batchscope[ray]'") from None
    return ray


def _ray_run(task_spec: str, plan_dict: dict, spec_dict: dict, threads: int) -> dict:
    """The Ray task: Ray sets CUDA_VISIBLE_DEVICES to the GPU it assigned, which is then cuda:0."""
    import ray

    device = "cuda:0" if ray.get_gpu_ids() else "cpu"
    record = _worker(task_spec, plan_dict, spec_dict, threads, device)
    record["device"] = f"{record['device']} on {ray.util.get_node_ip_address()} (pid {os.getpid()})"
    return record


REACH_TIMEOUT = 5.0   # seconds to wait for a cluster's port to answer before saying it is not there
DEFAULT_PORT = 6379   # Ray's head (GCS) port when an address names only the host


def host_port(address: str) -> Optional[tuple[str, int]]:
    """(host, port) of ``host:port`` or ``ray://host:port``; None for what Ray resolves itself ("auto", "local")."""
    rest = address.strip()
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme != "ray":
            raise ConfigError(f"--ray {address!r}: give host:port (the head node's GCS port, 6379 by default) or "
                              "ray://host:port (Ray client, 10001 by default)")
    if rest in ("", "auto", "local"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, str(DEFAULT_PORT)
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"--ray {address!r}: the port {port!r} is not a number; give host:port, "
                          "for example localhost:6379") from None
    if not 0 < number < 65536:
        raise ConfigError(f"--ray {address!r}: the port must lie in 1..65535. Got {number} instead.")
    return host.strip("[]"), number


def check_reachable(address: str, timeout: float = REACH_TIMEOUT) -> None:
    """Refuse, within ``timeout`` seconds, an address where nothing listens (ray.init would wait for minutes)."""
    where = host_port(address)
    if where is None:
        return
    try:
        socket.create_connection(where, timeout=timeout).close()
    except OSError as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or type(e).__name__).lower()
        raise ConfigError(f"no Ray cluster is reachable at {address} ({why} within {timeout:g} s); start one there "
                          "with `ray start --head`, or give --ray without an address for a local Ray") from None


def connect(address: Optional[str]) -> bool:
    """Join the Ray cluster at ``address`` ("" or None: the one in RAY_ADDRESS, else a local one).

    Returns whether this call started the connection (and so should end it). An already
    initialised Ray (a program that called ``ray.init`` itself) is used as it is. An address where
    nothing answers is refused within :data:`REACH_TIMEOUT` seconds.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    check_reachable(address or os.environ.get("RAY_ADDRESS", ""))
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"the Ray cluster at {address!r}" if address else "Ray"
        raise ConfigError(f"could not connect to {where} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                          "start one with `ray start --head`, or give --ray without an address for a local "
                          "Ray") from None
    return True


def failed_record(spec: RunSpec, status: str, failures: list[str]) -> RunRecord:
    return RunRecord(key=spec.key, spec=spec, status=status, steps=0, examples=0, seconds=float("nan"),
                     initial_loss=float("nan"), curve=[], step_losses=[], final={}, distance={}, cosine={},
                     message=failures[-1], failures=list(failures))


def reason(error: BaseException) -> str:
    """One line: the exception a task raised, or why its worker died."""
    cause = getattr(error, "cause", None)
    if cause is not None:  # RayTaskError wraps what the run raised
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"


def resources(plan: StudyPlan, cluster_gpus: float) -> dict:
    """One GPU per run where the plan trains on CUDA and the cluster has GPUs; one CPU otherwise."""
    if plan.device.startswith("cuda") and cluster_gpus <= 0:
        raise ConfigError(f"the study trains on {plan.device} but the Ray cluster has no GPUs; "
                          "add GPU nodes or run the study with --device cpu")
    wants_gpu = plan.device != "cpu" and cluster_gpus > 0
    return {"num_cpus": 1, "num_gpus": 1 if wants_gpu else 0}


def run_on_ray(plan: StudyPlan, todo: list[RunSpec], save: Callable[[RunRecord], None],
               address: Optional[str] = None) -> None:
    ray = import_ray()
    started = connect(address)
    try:
        opts = resources(plan, ray.cluster_resources().get("GPU", 0))
        remote = ray.remote(_ray_run).options(**opts, max_retries=0, retry_exceptions=False)
        plan_dict = plan.to_dict()
        pending: dict = {}

        def submit(spec: RunSpec, failures: list[str]) -> None:
            pending[remote.remote(plan.task, plan_dict, spec.to_dict(), 1)] = (spec, failures)

        for spec in todo:
            submit(spec, [])
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                spec, failures = pending.pop(ref)
                try:
                    rec = RunRecord.from_dict(ray.get(ref))
                except ray.exceptions.RayError as e:
                    failures = failures + [reason(e)]
                    final = len(failures) > RETRIES
                    save(failed_record(spec, "failed" if final else "retrying", failures))
                    if not final:
                        submit(spec, failures)
                    continue
                rec.failures = failures
                save(rec)
    finally:
        if started:
            ray.shutdown()
