"""Starting a process: joining a multi-process job when the environment describes one.

`start_process` is what every command line does first: quiet library logs, the
on-disk compilation cache, and `initialize_distributed`, which joins a SLURM step, a
Cloud TPU slice, a Kubernetes indexed Job or a job given by this project's variables
(`cluster_from_environment` decides, from the environment alone).
"""

from __future__ import annotations

import errno
import logging as py_logging
import os
import socket
import urllib.request
from collections.abc import Mapping
from typing import Any

from absl import logging as absl_logging
import jax

# The variables that describe a multi-process job, per launcher (see `cluster_from_environment`).
_EXPLICIT_VARS = ("VRELOC_COORDINATOR", "VRELOC_NUM_PROCESSES", "VRELOC_PROCESS_ID")
_JAX_VARS = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
_SLURM_STEP_VARS = ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID",
                    "SLURM_LOCALID")
_TPU_HOSTS_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")  # GKE's; jax reads this order.
_VISIBLE_GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


def _int_var(environ: Mapping[str, str], name: str, why: str) -> int:
  """``environ[name]`` as an int; a ValueError that names the variable when absent or malformed."""
  value = environ.get(name)
  if value is None:
    raise ValueError(f"{why}, but {name} is not set; set it (or unset the others) and rerun")
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{why}, but {name}={value!r} is not an integer") from None


def _job_size(environ: Mapping[str, str], names: tuple[str, str, str]) -> tuple[int, int] | None:
  """(process count, process id) of a job given by (coordinator, count, id) variables.

  None when the count is unset or 1 (a single process). A count > 1 without a coordinator or
  a valid id is an error.
  """
  coordinator, count, index = names
  if count not in environ:
    return None
  num_processes = _int_var(environ, count, f"{count} is set")
  if num_processes <= 1:
    return None
  why = f"{count}={num_processes} is set"
  if not environ.get(coordinator):
    raise ValueError(f"{why}, but {coordinator} (host:port of process 0) is not set; set it, "
                     f"or unset {count} to run a single process")
  process_id = _int_var(environ, index, why)
  if not 0 <= process_id < num_processes:
    raise ValueError(f"{index}={process_id} is not in 0..{num_processes - 1} ({why}); give "
                     "each process its own id")
  return num_processes, process_id


def _check_address(name: str, address: str) -> None:
  """A ValueError unless ``address`` is ``host:port`` (jax crashes on a malformed one)."""
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"{name}={address!r} is not host:port (e.g. 10.0.0.1:8476)")


def _port_in_use(port: int) -> bool:
  """Whether a socket already listens on ``port`` here (where process 0's coordinator binds).

  Checked before jax binds it, because jax 0.10 crashes (SIGSEGV) instead of raising.
  """
  for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
    try:
      with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # As gRPC does.
        probe.bind((host, port))
      return False
    except OSError as e:
      if e.errno == errno.EADDRINUSE:
        return True
  return False


def _tpu_hosts(environ: Mapping[str, str]) -> list[str]:
  """The slice's workers as GKE lists them (what jax's GKE TPU detection reads), or []."""
  for name in _TPU_HOSTS_VARS:
    if name in environ:
      return [host for host in environ[name].split(",") if host.strip()]
  return []


def cluster_from_environment(environ: Mapping[str, str],
                             tpu_workers: int | None = None) -> str | None:
  """Names the multi-process job that ``environ`` describes; None for a single process.

  Pure (reads only its arguments), so that every launcher's case can be tested with a
  made-up environment. The first match wins:

  * ``"explicit"``: this project's ``VRELOC_COORDINATOR`` (``host:port`` of process 0),
    ``VRELOC_NUM_PROCESSES`` > 1 and ``VRELOC_PROCESS_ID`` (launch/local_multiprocess.sh).
  * ``"jax_env"``: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` > 1 and
    ``JAX_PROCESS_ID`` (launch/k8s_indexed_job.yaml). jax 0.10 itself reads only
    ``JAX_COORDINATOR_ADDRESS``; this project passes the other two to it.
  * ``"slurm"``: a task of an ``srun`` step of more than one task: ``SLURM_JOB_ID``,
    ``SLURM_STEP_ID``, ``SLURM_STEP_NODELIST``, ``SLURM_PROCID``, ``SLURM_LOCALID`` set and
    ``SLURM_STEP_NUM_TASKS`` > 1. Stricter than jax's own check (``SLURM_JOB_ID``,
    ``SLURM_STEP_NODELIST``, ``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_LOCALID``): the
    shell of ``salloc`` or of a batch script, or a one-task step, is a single process.
  * ``"tpu"``: a Cloud TPU slice of several hosts: GKE's ``TPU_PROCESS_ADDRESSES`` or else
    ``TPU_WORKER_HOSTNAMES`` lists more than one worker, ``MEGASCALE_NUM_SLICES`` > 1, or
    ``tpu_workers`` > 1.

  A ``JAX_COORDINATOR_ADDRESS`` alone only moves the coordinator of a job detected otherwise
  (jax reads it itself), and ``KUBERNETES_SERVICE_HOST`` (set in every pod, notebooks
  included) describes no job.

  Args:
    environ: the environment variables (``os.environ``, or a made-up mapping).
    tpu_workers: hosts in this Cloud TPU VM's slice as its metadata server lists them (GCE
      TPU VMs describe the slice there, not in variables); None off a Cloud TPU VM.

  Returns:
    ``"explicit"``, ``"jax_env"``, ``"slurm"``, ``"tpu"``, or None.

  Raises:
    ValueError: a job is announced but a companion variable is missing or malformed, e.g.
      ``VRELOC_COORDINATOR`` without ``VRELOC_NUM_PROCESSES``, ``JAX_NUM_PROCESSES`` > 1
      without ``JAX_COORDINATOR_ADDRESS``, or a process id out of range.
  """
  if environ.get("VRELOC_COORDINATOR"):
    _int_var(environ, "VRELOC_NUM_PROCESSES", "VRELOC_COORDINATOR is set")
  if _job_size(environ, _EXPLICIT_VARS):
    return "explicit"
  if _job_size(environ, _JAX_VARS):
    return "jax_env"
  if (all(name in environ for name in _SLURM_STEP_VARS) and "SLURM_STEP_NUM_TASKS" in environ
      and _int_var(environ, "SLURM_STEP_NUM_TASKS", "SLURM_STEP_ID is set") > 1):
    return "slurm"
  slices = environ.get("MEGASCALE_NUM_SLICES", "1")
  if (len(_tpu_hosts(environ)) > 1 or (tpu_workers or 0) > 1
      or (slices.isdigit() and int(slices) > 1)):
    return "tpu"
  return None


def _slurm_local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
  """The GPUs (among those this task sees) that a SLURM task drives; None to let jax choose.

  jax gives task ``SLURM_LOCALID`` the GPU of that index, which assumes each task sees all
  GPUs of its node (``--gpus-per-node``, one task per GPU: launch/slurm_gpu.sbatch). When
  SLURM bound the task to a single GPU instead (``--gpus-per-task=1``, ``--gpu-bind``), that
  GPU is number 0 of the ones it sees. ``JAX_LOCAL_DEVICE_IDS``, when set, wins (jax reads it).
  """
  if environ.get("JAX_LOCAL_DEVICE_IDS"):
    return None
  local_id = int(environ["SLURM_LOCALID"])
  for name in _VISIBLE_GPU_VARS:
    if name in environ:
      visible = [d for d in environ[name].split(",") if d.strip()]
      if len(visible) == 1:
        return [0]
      if local_id >= len(visible):
        raise ValueError(
            f"SLURM task {local_id} of its node sees only {len(visible)} GPUs ({name}="
            f"{environ[name]}): start one task per GPU (--ntasks-per-node equal to "
            "--gpus-per-node), as launch/slurm_gpu.sbatch does")
      return [local_id]
  return None


def _tpu_vm_worker_count(environ: Mapping[str, str]) -> int | None:
  """Hosts in this Cloud TPU VM's slice, from the GCE metadata server (where jax looks too).

  None off a Cloud TPU VM (jax's own judgement, made at import: libtpu and TPU chips found),
  when ``TPU_SKIP_MDS_QUERY`` is set, when GKE's variables describe the slice, or when the
  metadata server does not answer (logged as a warning).
  """
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top  (private flag)
  except ImportError:
    return None
  if not getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False):
    return None
  if "TPU_SKIP_MDS_QUERY" in environ or any(name in environ for name in _TPU_HOSTS_VARS):
    return None
  host = environ.get("GCE_METADATA_IP", "metadata.google.internal")
  request = urllib.request.Request(
      f"http://{host}/computeMetadata/v1/instance/attributes/worker-network-endpoints",
      headers={"Metadata-Flavor": "Google"})
  try:
    with urllib.request.urlopen(request, timeout=10) as response:
      endpoints = response.read().decode()
  except OSError as e:
    absl_logging.warning("Cloud TPU VM: could not read the slice's workers from the metadata "
                         "server (%s); running as a single process", e)
    return None
  return len([worker for worker in endpoints.split(",") if worker.strip()])


def _join_plan(cluster: str, environ: Mapping[str, str],
               tpu_workers: int | None) -> tuple[dict[str, Any], str, str, int | None]:
  """How to join a detected job.

  Returns:
    ``jax.distributed.initialize`` arguments, what was detected, what to do if joining fails,
    and the coordinator's port when this process is the one that serves it (else None).
  """
  if cluster in ("explicit", "jax_env"):
    names = _EXPLICIT_VARS if cluster == "explicit" else _JAX_VARS
    num_processes, process_id = _job_size(environ, names)
    _check_address(names[0], environ[names[0]])
    detected = ", ".join(f"{name}={environ[name]}" for name in names)
    extra = (" (the pods of the indexed Job, process 0 reached through its headless Service)"
             if cluster == "jax_env" else "")
    advice = (f"start all {num_processes} processes{extra} within 5 minutes, with ids 0 to "
              f"{num_processes - 1} and {names[0]} naming process 0 on a port every process "
              f"can reach; for a single process unset {names[0]}")
    # "deactivate": no cluster auto-detection may override these (or restrict the devices).
    kwargs = dict(coordinator_address=environ[names[0]], num_processes=num_processes,
                  process_id=process_id, cluster_detection_method="deactivate")
    port = int(environ[names[0]].rpartition(":")[2]) if process_id == 0 else None
    return kwargs, f"the multi-process job given by {detected}", advice, port
  if cluster == "slurm":
    tasks = int(environ["SLURM_STEP_NUM_TASKS"])
    detected = (f"SLURM job {environ['SLURM_JOB_ID']}, srun step {environ['SLURM_STEP_ID']} of "
                f"{tasks} tasks on {environ['SLURM_STEP_NODELIST']}, this is task "
                f"{environ['SLURM_PROCID']}")
    # jax's choice of port: from JAX_COORDINATOR_ADDRESS, JAX_COORDINATOR_PORT, or else
    # 61440 + SLURM_JOB_ID % 4096.
    if environ.get("JAX_COORDINATOR_ADDRESS"):
      _check_address("JAX_COORDINATOR_ADDRESS", environ["JAX_COORDINATOR_ADDRESS"])
      port = int(environ["JAX_COORDINATOR_ADDRESS"].rpartition(":")[2])
    else:
      port = int(environ.get("JAX_COORDINATOR_PORT")
                 or 61440 + int(environ["SLURM_JOB_ID"]) % 4096)
    advice = ("check that all tasks of the step started and reach the step's first node on "
              f"port {port} (set JAX_COORDINATOR_PORT to choose another); to run a single "
              "process in an allocation, start it without srun or with srun --ntasks=1")
    process_id = int(environ["SLURM_PROCID"])
    kwargs = dict(num_processes=tasks, process_id=process_id,
                  local_device_ids=_slurm_local_device_ids(environ),
                  cluster_detection_method="slurm")
    return kwargs, detected, advice, port if process_id == 0 else None
  hosts = _tpu_hosts(environ)
  if len(hosts) > 1:
    how = f"{next(n for n in _TPU_HOSTS_VARS if n in environ)} lists {len(hosts)} workers"
  elif (tpu_workers or 0) > 1:
    how = f"its metadata server lists {tpu_workers} workers"
  else:
    how = f"MEGASCALE_NUM_SLICES={environ.get('MEGASCALE_NUM_SLICES')}"
  advice = ("run the same command on every worker of the slice (gcloud compute tpus tpu-vm "
            "ssh --worker=all, as launch/tpu_vm.sh does) with jax[tpu] installed on each; for "
            "a single process on one worker set TPU_SKIP_MDS_QUERY=1")
  return {}, f"the Cloud TPU slice ({how})", advice, None


def initialize_distributed() -> None:
  """Joins a multi-process job when, and only when, the environment describes one.

  `cluster_from_environment` decides: an ``srun`` step of several tasks (SLURM), a Cloud TPU
  slice of several hosts, JAX's coordinator variables (Kubernetes), or this project's
  ``VRELOC_COORDINATOR`` / ``VRELOC_NUM_PROCESSES`` / ``VRELOC_PROCESS_ID``. A single
  process (laptop, notebook, the shell of ``salloc`` or of a batch script) never tries, and
  a second call does nothing.

  Raises:
    ValueError: the job could not be joined (or its variables are inconsistent); one message
      that names the environment detected, what failed and what to do.
  """
  if jax.distributed.is_initialized():
    return
  environ = os.environ
  tpu_workers = _tpu_vm_worker_count(environ)
  cluster = cluster_from_environment(environ, tpu_workers)
  if cluster is None:
    return
  try:
    kwargs, detected, advice, port = _join_plan(cluster, environ, tpu_workers)
  except ValueError as e:
    raise ValueError(f"cannot join the {cluster} multi-process job: {e}") from None
  if port is not None and _port_in_use(port):
    where = {"explicit": "VRELOC_COORDINATOR", "jax_env": "JAX_COORDINATOR_ADDRESS"}.get(
        cluster, "JAX_COORDINATOR_PORT")
    raise ValueError(f"could not join {detected}: port {port}, where this process (process 0) "
                     "must serve the coordinator, is already in use. What to do: stop the "
                     f"program that listens there, or choose another port in {where}")
  # jax's preemption service (on by default) puts a C++ SIGTERM handler in place that only
  # records the signal for multihost_utils.reached_preemption_sync_point: it would swallow
  # SIGTERM outside training (the process would not end), and Python cannot see or restore
  # it. Training stops on SIGTERM with its own handler and agreement (preemption.StopSignals).
  jax.config.update("jax_enable_preemption_service", False)
  try:
    jax.distributed.initialize(**kwargs)
  except Exception as e:  # pylint: disable=broad-except  (jax raises several types here)
    lines = str(e).strip().splitlines() or [""]
    raise ValueError(f"could not join {detected}: {type(e).__name__}: {lines[0]}. "
                     f"What to do: {advice}") from e


def quiet_library_logs() -> None:
  """Hides INFO chatter of libraries from the console: orbax's per-save/restore timings,
  and jax's "Unable to initialize backend 'tpu'" on machines without one."""

  def keep(record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or not (
        "/orbax/" in record.pathname or record.pathname.endswith("xla_bridge.py"))

  absl_logging.get_absl_handler().addFilter(keep)


def enable_compilation_cache(directory: str | None = None) -> None:
  """Keeps compiled programs on disk, so that reruns and resumed runs skip compiling.

  ``$JAX_COMPILATION_CACHE_DIR`` wins if set; else ``directory``; else
  ``~/.cache/vreloc_jax/xla``.
  """
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  jax.config.update("jax_compilation_cache_dir",
                    directory or os.path.join(cache, "vreloc_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def start_process() -> None:
  """What every command-line program does first: quiet logs, compile cache, multi-host join."""
  quiet_library_logs()
  enable_compilation_cache()
  initialize_distributed()
