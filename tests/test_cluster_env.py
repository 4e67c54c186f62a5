"""Cluster detection and the launchers: who joins a multi-process job, and how it is started.

The detection is tested with made-up environments (laptop, ``salloc`` and batch shells,
``srun`` steps, JAX's and this project's variables, TPU slices); real processes check that a
single process in a SLURM allocation runs alone, and that two processes described as an
``srun`` step of two tasks, or by this project's variables, form one JAX job. The launchers run against stand-ins for ``srun``, ``scontrol``,
``gcloud`` and ``python`` that record what they were given.
"""

from __future__ import annotations

import os
import pathlib
import socket
import stat
import subprocess
import sys

import jax
import pytest
import yaml

from vreloc_jax import distributed
from vreloc_jax import preemption

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch"

# One srun step of two tasks on one node, as SLURM describes it to task `PROCID`.
SRUN_STEP = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "localhost",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "localhost"}
# A salloc shell (on sites that start it as a one-task "interactive" step): jax's own SLURM
# check accepts it, but it is a single process.
SALLOC_STEP = {"SLURM_JOB_ID": "123", "SLURM_NTASKS": "1", "SLURM_JOB_NODELIST": "node1",
               "SLURM_STEP_ID": "0", "SLURM_STEP_NODELIST": "node1", "SLURM_STEP_NUM_TASKS": "1",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
# Variables that would make a child process see a cluster.
CLUSTER_PREFIXES = ("SLURM_", "VRELOC_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES",
                    "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS", "TPU_", "MEGASCALE_", "OMPI_",
                    "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")


@pytest.mark.parametrize("environ, expected", [
    pytest.param({}, None, id="laptop"),
    pytest.param({"HOME": "/home/me", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}, None,
                 id="notebook-in-a-pod"),
    pytest.param({"SLURM_JOB_ID": "123"}, None, id="salloc-shell-job-id-only"),
    pytest.param({"SLURM_JOB_ID": "123", "SLURM_NTASKS": "16", "SLURM_PROCID": "0",
                  "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[01-02]"}, None,
                 id="batch-script-shell"),
    pytest.param(SALLOC_STEP, None, id="srun-step-1-task"),
    pytest.param(SRUN_STEP, "slurm", id="srun-step-2-tasks"),
    pytest.param({**SRUN_STEP, "SLURM_STEP_NUM_TASKS": "16", "SLURM_STEP_NODELIST": "gpu[01-02]"},
                 "slurm", id="srun-step-16-tasks"),
    pytest.param({"JAX_COORDINATOR_ADDRESS": "vreloc-0.vreloc:8476", "JAX_NUM_PROCESSES": "2",
                  "JAX_PROCESS_ID": "1"}, "jax_env", id="jax-variables"),
    pytest.param({"JAX_COORDINATOR_ADDRESS": "vreloc-0.vreloc:8476"}, None,
                 id="jax-coordinator-alone"),
    pytest.param({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "1",
                  "JAX_PROCESS_ID": "0"}, None, id="jax-variables-1-process"),
    pytest.param({"VRELOC_COORDINATOR": "127.0.0.1:1234", "VRELOC_NUM_PROCESSES": "2",
                  "VRELOC_PROCESS_ID": "0"}, "explicit", id="vreloc-variables"),
    pytest.param({"VRELOC_COORDINATOR": "127.0.0.1:1234", "VRELOC_NUM_PROCESSES": "1",
                  "VRELOC_PROCESS_ID": "0"}, None, id="vreloc-variables-1-process"),
    pytest.param({**SRUN_STEP, "VRELOC_COORDINATOR": "127.0.0.1:1234",
                  "VRELOC_NUM_PROCESSES": "2", "VRELOC_PROCESS_ID": "0"}, "explicit",
                 id="vreloc-wins-over-slurm"),
    pytest.param({"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4", "TPU_WORKER_ID": "2"}, "tpu",
                 id="gke-tpu-4-workers"),
    pytest.param({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_WORKER_ID": "0"}, None,
                 id="gke-tpu-1-worker"),
    pytest.param({"TPU_PROCESS_ADDRESSES": "t1:8476", "TPU_WORKER_HOSTNAMES": "t1,t2"}, None,
                 id="gke-tpu-process-addresses-read-first"),
    pytest.param({"MEGASCALE_NUM_SLICES": "2"}, "tpu", id="tpu-multislice"),
])
def test_detection(environ, expected):
  assert distributed.cluster_from_environment(environ) == expected


@pytest.mark.parametrize("tpu_workers, expected", [(None, None), (1, None), (4, "tpu")])
def test_detection_of_a_tpu_vm_slice_from_its_metadata(tpu_workers, expected):
  assert distributed.cluster_from_environment({}, tpu_workers=tpu_workers) == expected


def test_stricter_than_jax_under_slurm(monkeypatch):
  from jax._src.clusters import SlurmCluster  # pylint: disable=g-import-not-at-top
  for name in list(os.environ):
    if name.startswith("SLURM_"):
      monkeypatch.delenv(name)
  for name, value in SALLOC_STEP.items():
    monkeypatch.setenv(name, value)
  assert SlurmCluster.is_env_present()  # jax alone would start a one-process "job" here.
  assert distributed.cluster_from_environment(os.environ) is None


@pytest.mark.parametrize("environ, message", [
    ({"VRELOC_COORDINATOR": "h:1"}, "VRELOC_NUM_PROCESSES is not set"),
    ({"VRELOC_COORDINATOR": "h:1", "VRELOC_NUM_PROCESSES": "2"}, "VRELOC_PROCESS_ID is not set"),
    ({"VRELOC_COORDINATOR": "h:1", "VRELOC_NUM_PROCESSES": "two", "VRELOC_PROCESS_ID": "0"},
     "VRELOC_NUM_PROCESSES='two' is not an integer"),
    ({"VRELOC_NUM_PROCESSES": "2", "VRELOC_PROCESS_ID": "0"}, "VRELOC_COORDINATOR .* not set"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS .* not set"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     r"JAX_PROCESS_ID=2 is not in 0\.\.1"),
])
def test_inconsistent_variables_are_named(environ, message):
  with pytest.raises(ValueError, match=message):
    distributed.cluster_from_environment(environ)


@pytest.mark.parametrize("extra, expected", [
    ({}, None),                                                     # jax's default: [LOCALID]
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, [1]),             # --gpus-per-node
    ({"CUDA_VISIBLE_DEVICES": "5"}, [0]),                           # --gpus-per-task=1
    ({"CUDA_VISIBLE_DEVICES": "5", "JAX_LOCAL_DEVICE_IDS": "0"}, None),  # jax reads it itself
])
def test_slurm_gpu_of_each_task(extra, expected):
  assert distributed._slurm_local_device_ids({**SRUN_STEP, **extra}) == expected


def test_slurm_more_tasks_than_gpus_is_refused():
  with pytest.raises(ValueError, match="task 3 of its node sees only 2 GPUs"):
    distributed._slurm_local_device_ids({**SRUN_STEP, "SLURM_LOCALID": "3",
                                      "CUDA_VISIBLE_DEVICES": "0,1"})


def _fake_cluster_env(monkeypatch, environ):
  for name in list(os.environ):
    if name.startswith(CLUSTER_PREFIXES):
      monkeypatch.delenv(name)
  for name, value in environ.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)


@pytest.mark.parametrize("environ, expected_kwargs, detected", [
    (SRUN_STEP, dict(num_processes=2, process_id=1, local_device_ids=None,
                     cluster_detection_method="slurm"),
     "could not join SLURM job 4242, srun step 0 of 2 tasks on localhost, this is task 1: "),
    ({"JAX_COORDINATOR_ADDRESS": "vreloc-0.vreloc:8476", "JAX_NUM_PROCESSES": "2",
      "JAX_PROCESS_ID": "1"},
     dict(coordinator_address="vreloc-0.vreloc:8476", num_processes=2, process_id=1,
          cluster_detection_method="deactivate"),
     "could not join the multi-process job given by JAX_COORDINATOR_ADDRESS=vreloc-0.vreloc:8476,"
     " JAX_NUM_PROCESSES=2, JAX_PROCESS_ID=1: "),
])
def test_a_failed_join_is_one_actionable_error(monkeypatch, environ, expected_kwargs, detected):
  _fake_cluster_env(monkeypatch, environ)
  calls = []

  def initialize(**kwargs):
    calls.append(kwargs)
    raise RuntimeError("DEADLINE_EXCEEDED: Barrier timed out\nmore details")

  monkeypatch.setattr(jax.distributed, "initialize", initialize)
  with pytest.raises(ValueError) as raised:
    distributed.initialize_distributed()
  assert calls == [expected_kwargs]
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(detected), message
  assert "RuntimeError: DEADLINE_EXCEEDED: Barrier timed out. What to do: " in message


@pytest.mark.parametrize("environ, message", [
    ({"VRELOC_COORDINATOR": "127.0.0.1:PORT", "VRELOC_NUM_PROCESSES": "2",
      "VRELOC_PROCESS_ID": "0"}, "choose another port in VRELOC_COORDINATOR"),
    ({**SRUN_STEP, "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "JAX_COORDINATOR_PORT": "PORT"},
     "choose another port in JAX_COORDINATOR_PORT"),
])
def test_a_busy_coordinator_port_is_reported_before_jax_crashes_on_it(monkeypatch, environ,
                                                                       message):
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    _fake_cluster_env(monkeypatch, {k: v.replace("PORT", port) for k, v in environ.items()})
    monkeypatch.setattr(jax.distributed, "initialize", lambda **_: pytest.fail("called jax"))
    with pytest.raises(ValueError, match=f"port {port}, where this process .* is already in use"
                       f".* {message}"):
      distributed.initialize_distributed()


def test_a_malformed_coordinator_address_is_refused(monkeypatch):
  _fake_cluster_env(monkeypatch, {"JAX_COORDINATOR_ADDRESS": "127.0.0.1:notaport",
                                  "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"})
  monkeypatch.setattr(jax.distributed, "initialize", lambda **_: pytest.fail("called jax"))
  with pytest.raises(ValueError, match="cannot join the jax_env multi-process job: "
                     "JAX_COORDINATOR_ADDRESS='127.0.0.1:notaport' is not host:port"):
    distributed.initialize_distributed()


def test_a_single_process_never_calls_jax_distributed(monkeypatch):
  for environ in ({}, {"SLURM_JOB_ID": "123"}, SALLOC_STEP):
    _fake_cluster_env(monkeypatch, environ)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **_: pytest.fail("joined"))
    distributed.initialize_distributed()


def _clean_env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(CLUSTER_PREFIXES)}
  return {**env, "JAX_PLATFORMS": "cpu", **extra}


PROBE = ("from vreloc_jax import distributed; distributed.start_process(); import jax; "
         "print(jax.process_count(), jax.process_index(), jax.distributed.is_initialized())")


def test_single_process_in_a_salloc_shell_runs():
  done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=_clean_env(**SALLOC_STEP),
                        capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ["1", "0", "False"]


@pytest.mark.parametrize("launcher", ["srun-step", "vreloc-variables"])
def test_two_processes_form_one_job(launcher):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

  def env(i):
    if launcher == "srun-step":
      return {**SRUN_STEP, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
              "JAX_COORDINATOR_PORT": str(port)}
    return {"VRELOC_COORDINATOR": f"127.0.0.1:{port}", "VRELOC_NUM_PROCESSES": "2",
            "VRELOC_PROCESS_ID": str(i)}

  procs = [subprocess.Popen([sys.executable, "-c", PROBE], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_clean_env(**env(i)))
           for i in range(2)]
  outs = [p.communicate(timeout=120) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert sorted(out.split() for out, _ in outs) == [["2", "0", "True"], ["2", "1", "True"]]


# --- Launchers -------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["slurm_gpu.sbatch", "tpu_vm.sh", "local_multiprocess.sh"])
def test_launcher_syntax(script):
  done = subprocess.run(["bash", "-n", str(LAUNCH / script)], capture_output=True, text=True,
                        check=False)
  assert done.returncode == 0, done.stderr


def _stub(directory: pathlib.Path, name: str, body: str) -> None:
  path = directory / name
  path.write_text("#!/usr/bin/env bash\n" + body)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _sbatch_options() -> dict[str, str]:
  options = {}
  for line in (LAUNCH / "slurm_gpu.sbatch").read_text().splitlines():
    if line.startswith("#SBATCH --"):
      key, _, value = line[len("#SBATCH --"):].partition("=")
      options[key] = value
  return options


def test_sbatch_asks_for_one_task_per_gpu_a_warning_signal_and_requeue():
  options = _sbatch_options()
  assert options["ntasks-per-node"] == options["gpus-per-node"]
  assert "gpus-per-task" not in options  # Every task sees its node's GPUs (jax's assumption).
  assert options["signal"] == "TERM@120" and "requeue" in options
  assert f"PREEMPTED_EXIT_CODE={preemption.PREEMPTED_EXIT_CODE}" in (
      LAUNCH / "slurm_gpu.sbatch").read_text()


@pytest.mark.parametrize("srun_status, restarts, requeued", [
    (preemption.PREEMPTED_EXIT_CODE, "0", True), (preemption.PREEMPTED_EXIT_CODE, "20", False),
    (0, "0", False), (1, "0", False)])
def test_sbatch_requeues_only_a_preempted_run(tmp_path, srun_status, restarts, requeued):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stub(bin_dir, "srun", f'printf "%s\\n" "$@" > "{tmp_path}/srun.args"\nexit {srun_status}\n')
  _stub(bin_dir, "scontrol", f'printf "%s\\n" "$@" > "{tmp_path}/scontrol.args"\n')
  env = {**_clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77",
         "SLURM_SUBMIT_DIR": str(REPO), "SLURM_CPUS_PER_TASK": "8",
         "SLURM_RESTART_COUNT": restarts}
  done = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "configs/weak.py",
                         "/shared/my runs", "--config.data.dir=/a b"],
                        env=env, capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == srun_status, done.stderr
  assert (tmp_path / "srun.args").read_text().splitlines() == [
      "--kill-on-bad-exit=0", "--cpus-per-task=8", "python", "-m", "vreloc_jax.main",
      "--config=configs/weak.py", "--workdir=/shared/my runs", "--config.data.dir=/a b"]
  scontrol = tmp_path / "scontrol.args"
  assert (scontrol.read_text().split() if scontrol.exists() else None) == (
      ["requeue", "77"] if requeued else None)


def test_tpu_vm_command_arrives_quoted_and_sets_nothing(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stub(bin_dir, "gcloud", f'printf "%s\\0" "$@" > "{tmp_path}/gcloud.args"\n')
  tricky = ["configs/my config.py", "gs://bucket/it's $HOME", "--config.x=$(touch pwned)",
            "--config.y=a;b", "--config.z=*"]
  done = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), "my-tpu", "us-central2-b",
                         *tricky], env={**_clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                        capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == 0, done.stderr
  args = (tmp_path / "gcloud.args").read_text().split("\0")[:-1]
  assert args[:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b",
                      "--worker=all"]
  command = args[7].removeprefix("--command=")
  assert "TPU_" not in command and "JAX_" not in command

  # Run the remote command as a worker's login shell would, with a stand-in python.
  home = tmp_path / "home"
  venv_bin = home / "vreloc_jax" / ".venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
  _stub(venv_bin, "python", f'printf "%s\\0" "$@" > "{tmp_path}/python.args"\n')
  done = subprocess.run(["bash", "-c", command], cwd=home, env={**_clean_env(), "HOME": str(home)},
                        capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == 0, done.stderr
  assert (tmp_path / "python.args").read_text().split("\0")[:-1] == [
      "-m", "vreloc_jax.main", "--config=configs/my config.py",
      "--workdir=gs://bucket/it's $HOME", "--config.x=$(touch pwned)", "--config.y=a;b",
      "--config.z=*"]
  assert not (home / "vreloc_jax" / "pwned").exists()


def test_local_multiprocess_starts_n_explicit_processes(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  _stub(bin_dir, "python", f'echo "$VRELOC_COORDINATOR $VRELOC_NUM_PROCESSES $JAX_PLATFORMS $*"'
        f' > "{tmp_path}/p$VRELOC_PROCESS_ID"\n[[ $VRELOC_PROCESS_ID == 1 ]] && exit 75\nexit 0\n')
  done = subprocess.run(["bash", str(LAUNCH / "local_multiprocess.sh"), "3", "configs/weak.py",
                         str(tmp_path / "w")],
                        env={**_clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}",
                             "VRELOC_PORT": "23456"},
                        capture_output=True, text=True, timeout=30, check=False)
  assert done.returncode == preemption.PREEMPTED_EXIT_CODE, done.stderr
  for i in range(3):
    assert (tmp_path / f"p{i}").read_text().split() == [
        "127.0.0.1:23456", "3", "cpu", "-m", "vreloc_jax.main", "--config=configs/weak.py",
        f"--workdir={tmp_path / 'w'}"]


def test_k8s_indexed_job_uses_jax_coordinator_variables():
  docs = list(yaml.safe_load_all((LAUNCH / "k8s_indexed_job.yaml").read_text()))
  service, job = (next(d for d in docs if d["kind"] == kind) for kind in ("Service", "Job"))
  assert service["spec"]["clusterIP"] == "None"
  spec = job["spec"]
  assert spec["completionMode"] == "Indexed"
  pod = spec["template"]["spec"]
  assert pod["subdomain"] == service["metadata"]["name"]
  [container] = pod["containers"]
  env = {e["name"]: e for e in container["env"]}
  host, port = env["JAX_COORDINATOR_ADDRESS"]["value"].rsplit(":", 1)
  assert host == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
  assert int(port) == container["ports"][0]["containerPort"]
  assert int(env["JAX_NUM_PROCESSES"]["value"]) == spec["completions"] == spec["parallelism"]
  assert env["JAX_PROCESS_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  # The container's environment, as Kubernetes would fill it in for pod 1, is a "jax_env" job.
  filled = {"JAX_COORDINATOR_ADDRESS": env["JAX_COORDINATOR_ADDRESS"]["value"],
            "JAX_NUM_PROCESSES": env["JAX_NUM_PROCESSES"]["value"], "JAX_PROCESS_ID": "1",
            "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
  assert distributed.cluster_from_environment(filled) == "jax_env"
  exit_rule = next(r for r in spec["podFailurePolicy"]["rules"] if "onExitCodes" in r)
  assert exit_rule["action"] == "Ignore"
  assert exit_rule["onExitCodes"]["values"] == [preemption.PREEMPTED_EXIT_CODE]
