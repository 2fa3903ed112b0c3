"""SLURM options without SLURM: precedence, validation, job scripts, the reaper's commands.

docs/design.md §13.1.  Fast tier: nothing here starts a scheduler or submits a job.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import dask.config
import pytest

import dscheduler as ds
from dscheduler.cli.cluster import parse_options
from dscheduler.run.slurm import _reaper
from dscheduler.run.slurm.jobs import job_script
from dscheduler.run.slurm.options import resolve, walltime_seconds
from dscheduler.run.slurm.preload import gpu_share

pytestmark = pytest.mark.fast


_PRECEDENCE = """
import json, sys, dask.config
from dscheduler.run.slurm.options import resolve
out = []
for paths, env in json.loads(sys.argv[1]):
    dask.config.refresh(paths=paths, env=env)  # as a fresh process would load them
    o, a = resolve(), resolve(walltime="00:30:00", gpu={"max_jobs": 5})
    # an explicit None wins too: it clears what the settings say
    n = resolve(walltime=None, account=None, gpu={"partition": None})
    out.append([o.walltime, o.gpu.max_jobs, a.walltime, a.gpu.max_jobs, o.gpu.gpus,
                o.account, o.gpu.partition, n.walltime, n.account, n.gpu.partition,
                n.gpu.max_jobs])
print(json.dumps(out))
"""


def test_precedence_argument_env_userfile_default(tmp_path: Path) -> None:
    config = tmp_path / "dask"
    config.mkdir()
    (config / "mine.yaml").write_text(
        "dscheduler:\n  slurm:\n    walltime: '02:00:00'\n    account: proj\n"
        "    gpu:\n      max_jobs: 3\n      partition: gpus\n")
    env = {"DASK_DSCHEDULER__SLURM__WALLTIME": "04:00:00",
           "DASK_DSCHEDULER__SLURM__GPU__MAX_JOBS": "4",
           "DASK_DSCHEDULER__SLURM__ACCOUNT": "other"}
    cases = [([str(tmp_path / "none")], {}), ([str(config)], {}), ([str(config)], env)]
    # One subprocess, its config reloaded per case: three imports of dask cost seconds.
    out = subprocess.run([sys.executable, "-c", _PRECEDENCE, json.dumps(cases)],
                         capture_output=True, text=True, check=True)
    # Per case: resolve() walltime, gpu.max_jobs; with arguments walltime, gpu.max_jobs;
    # gpu.gpus, account, gpu.partition; with None arguments walltime, account,
    # gpu.partition, gpu.max_jobs (not given: still the settings').
    assert json.loads(out.stdout) == [
        # packaged default; arguments win
        ["01:00:00", 1, "00:30:00", 5, 1, None, None, None, None, None, 1],
        # the user file beats the default; None arguments beat the user file
        ["02:00:00", 3, "00:30:00", 5, 1, "proj", "gpus", None, None, None, 3],
        # an environment variable beats the user file; None arguments beat it
        ["04:00:00", 4, "00:30:00", 5, 1, "other", "gpus", None, None, None, 4],
    ]


def test_python_defaults_to_the_drivers_interpreter() -> None:
    assert resolve().interpreter == sys.executable
    assert resolve(python="/opt/py/bin/python").interpreter == "/opt/py/bin/python"


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"walltime": "1:2:3:4"}, r"walltime '1:2:3:4' is not a SLURM time limit: write MM, MM:SS, "
                               r"HH:MM:SS"),
    ({"walltime": "abc"}, r"walltime 'abc' is not a SLURM time limit"),
    ({"memory": "4000"}, r"memory='4000': needs a unit: write e.g. '4GB' or '4000MB'"),
    ({"memory": 4000}, r"memory=4000: needs a unit"),
    ({"gpu": {"memory": "12"}}, r"gpu.memory='12': needs a unit"),
    ({"walltme": "01:00:00"}, r"unknown slurm option\(s\) \['walltme'\] in the arguments; "
                              r"valid options: partition, account, qos, cores, memory"),
    ({"gpu": {"gpu": 2}}, r"unknown slurm option\(s\) \['gpu.gpu'\].*gpu and each of kinds: "
                          r"gpus, max_jobs"),
    ({"cores": 3, "processes": 2}, r"cores 3 cannot be split over 2 worker processes"),
    ({"directives": ["qos=short"]}, r"'qos=short' is not an sbatch option: write it as on the "
                                    r"sbatch command line, e.g. '--qos=short'"),
    ({"walltime": "00:01:00", "lifetime": "70s"}, r"lifetime 70 s .* reaches the walltime "
                                                  r"'00:01:00'"),
    ({"min_jobs": 9}, r"min_jobs 9 exceeds max_jobs 4"),
    ({"max_jobs": -1}, r"max_jobs=-1"),
])
def test_bad_options_are_config_errors_naming_them(overrides: dict[str, object],
                                                    expected: str) -> None:
    with pytest.raises(ds.ConfigError, match=expected):
        resolve(**overrides)


def test_unknown_key_in_the_settings_lists_the_valid_ones() -> None:
    with dask.config.set({"dscheduler.slurm.wall_time": "01:00:00"}), \
            pytest.raises(ds.ConfigError, match=r"\['wall_time'\] in the settings "
                                                r"\(dscheduler.slurm\); valid options: "):
        resolve()


@pytest.mark.parametrize(("text", "seconds", "slurm"), [
    # SLURM's own forms: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS
    ("30", 1800, "00:30:00"), ("30:15", 1815, "00:30:15"), ("01:30:00", 5400, "01:30:00"),
    ("2-0", 172800, "2-00:00:00"), ("1-02:03", 93780, "1-02:03:00"),
    ("1-00:00:10", 86410, "1-00:00:10"),
    # durations as people write them
    ("1h", 3600, "01:00:00"), ("90min", 5400, "01:30:00"), ("1h30m", 5400, "01:30:00"),
    ("2d", 172800, "2-00:00:00"), ("45s", 45, "00:00:45"), ("1d 12h", 129600, "1-12:00:00"),
    (" 2H ", 7200, "02:00:00"), ("1.5h", 5400, "01:30:00"), ("36h", 129600, "1-12:00:00"),
])
def test_walltime_forms(text: str, seconds: int, slurm: str) -> None:
    assert walltime_seconds(text) == seconds
    assert resolve(walltime=text).walltime == slurm  # what sbatch -t gets
    assert resolve(kinds={"k": {"walltime": text}}).kind("k").walltime == slurm


@pytest.mark.parametrize("text", ["1:2:3:4", "abc", "1x", "h", "1h30", "90 lightyears", "0",
                                  "0h", "-1h", "1-", "1:", "", "1h-30m"])
def test_walltime_refused_names_the_forms(text: str) -> None:
    forms = (r"is not a SLURM time limit: write MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
             r"D-HH:MM:SS \('01:30:00'\), or a duration such as '1h', '90min', '1h30m' or '2d'")
    forms = forms.replace("\\(", "\\(e.g. ")
    with pytest.raises(ds.ConfigError, match=rf"^slurm walltime {re.escape(repr(text))} {forms}"):
        resolve(walltime=text)
    with pytest.raises(ds.ConfigError, match=rf"slurm kinds.k.walltime {re.escape(repr(text))} "
                                             r"is not a SLURM time limit"):
        resolve(kinds={"k": {"walltime": text}})
    with pytest.raises(ds.ConfigError, match=r"is not a SLURM time limit"):
        walltime_seconds(text)


def test_named_kinds_take_their_own_fields_and_the_rest_from_cpu_jobs() -> None:
    options = resolve(partition="debug", account="proj", qos="normal", cores=2, memory="4GB",
                      walltime="2h", max_jobs=3, directives=["--constraint=x"], kinds={
                          "preempt-gpu": {"partition": "preempt", "qos": "low", "gpus": 2,
                                          "walltime": "30min", "max_jobs": 2, "min_jobs": 1},
                          "bigmem": {"memory": "64GB", "account": "big",
                                     "directives": ["--exclusive"]}})
    assert options.kind_names == ("cpu", "gpu", "preempt-gpu", "bigmem")
    pre, big, cpu = options.kind("preempt-gpu"), options.kind("bigmem"), options.kind("cpu")
    assert (pre.partition, pre.account, pre.cores, pre.memory, pre.gpus, pre.walltime,
            pre.max_jobs, pre.min_jobs, pre.resource, pre.per_worker, pre.slots) == (
        "preempt", "proj", 2, "4GB", 2, "00:30:00", 2, 1, "job-preempt-gpu", 2, 2)
    assert pre.directives == ("--constraint=x", "--qos=low", "--gres=gpu:2")
    assert (big.partition, big.account, big.memory, big.gpus, big.walltime, big.max_jobs,
            big.resource, big.per_worker) == ("debug", "big", "64GB", 0, "02:00:00", 3,
                                              "job-bigmem", 2)
    assert big.directives == ("--constraint=x", "--exclusive", "--qos=normal")
    assert (cpu.resource, cpu.per_worker, cpu.directives) == ("CPU", 2,
                                                              ("--constraint=x", "--qos=normal"))
    assert options.kind("gpu").resource == "GPU"
    # a kind's lifetime follows its own walltime
    assert options.lifetime_seconds("preempt-gpu") == (1620.0, 90.0)
    script = job_script(options, "preempt-gpu", cluster_id="c0ffee00", log_dir="/logs")
    for line in ["#SBATCH -J dscheduler-preempt-gpu-c0ffee00", "#SBATCH -p preempt",
                 "#SBATCH -A proj", "#SBATCH -t 00:30:00", "#SBATCH --qos=low",
                 "#SBATCH --gres=gpu:2", "#SBATCH --cpus-per-task=2",
                 "#SBATCH --output=/logs/dscheduler-preempt-gpu-c0ffee00-%j.log"]:
        assert line in script.splitlines(), (line, script)
    assert "--resources job-preempt-gpu=2" in script and "DSCHEDULER_GPUS_PER_WORKER" not in script


def test_a_gpu_job_of_several_workers_gives_each_its_share() -> None:
    options = resolve(cores=2, kinds={"g": {"gpus": 4, "processes": 2}})
    script = job_script(options, "g")
    assert "export DSCHEDULER_GPUS_PER_WORKER=2" in script.splitlines()
    assert "--resources job-g=2" in script and "--nworkers 2" in script
    # what each worker keeps of SLURM's CUDA_VISIBLE_DEVICES (dask names them {job}-{i})
    assert [gpu_share("4,5,6,7", 2, f"g-0-{i}") for i in range(2)] == ["4,5", "6,7"]
    assert [gpu_share("0,1", 1, f"preempt-gpu-3-{i}") for i in range(2)] == ["0", "1"]


@pytest.mark.parametrize(("kinds", "expected"), [
    ({"gpu": {"gpus": 2}}, r"slurm kinds \['gpu'\]: 'cpu' and 'gpu' are the default kinds"),
    ({"a.b": {}}, r"the kind name 'a.b' is not a name: use letters, digits, '-' and '_'"),
    ({"k": {"partion": "x"}}, r"unknown slurm option\(s\) \['kinds.k.partion'\].*each of "
                              r"kinds: gpus, max_jobs, min_jobs, partition, account, qos"),
    ({"k": {"memory": "12"}}, r"slurm kinds.k.memory='12': needs a unit"),
    ({"k": {"gpus": 3, "processes": 2, "cores": 2}},
     r"slurm kinds.k.gpus 3 cannot be shared by 2 worker processes"),
    ({"k": {"cores": 3, "processes": 2}}, r"slurm kinds.k.cores 3 cannot be split over 2"),
    ({"k": {"min_jobs": 2, "max_jobs": 1}}, r"slurm kinds.k.min_jobs 2 exceeds kinds.k.max_jobs"),
    ({"k": {"walltime": "1min"}, "_": None}, r"reaches the walltime '00:01:00' of k jobs"),
    ({"k": {"directives": ["qos=x"]}}, r"'qos=x' is not an sbatch option"),
    ([1], r"slurm kinds=\[1\] must map names to kinds"),
])
def test_bad_kinds_are_config_errors_naming_them(kinds: object, expected: str) -> None:
    if isinstance(kinds, dict) and "_" in kinds:
        kinds = {k: v for k, v in kinds.items() if k != "_"}
        extra = {"lifetime": "70s"}
    else:
        extra = {}
    with pytest.raises(ds.ConfigError, match=expected):
        resolve(kinds=kinds, **extra)
    assert "kinds.k" not in str(resolve().kinds)


def test_an_unknown_kind_names_the_known_ones() -> None:
    options = resolve(kinds={"preempt-gpu": {"gpus": 1}})
    with pytest.raises(ds.ConfigError, match=r"unknown SLURM job kind 'preemt-gpu'; known kinds: "
                                             r"cpu, gpu, preempt-gpu"):
        options.kind("preemt-gpu")


def test_kinds_from_the_settings_and_the_arguments_merge_per_key() -> None:
    with dask.config.set({"dscheduler.slurm.kinds": {"p": {"partition": "preempt",
                                                            "walltime": "1h"}}}):
        assert resolve().kind("p").partition == "preempt"
        merged = resolve(kinds={"p": {"walltime": "2h"}, "q": {"gpus": 1}}).kind("p")
        assert (merged.partition, merged.walltime) == ("preempt", "02:00:00")
        assert resolve(kinds={"p": {"partition": None}}).kind("p").partition is None
    # the CLI's -o kinds.NAME.KEY=VALUE
    options = resolve(**parse_options(["kinds.p.partition=preempt", "kinds.p.walltime=90min"]))
    assert (options.kind("p").partition, options.kind("p").walltime) == ("preempt", "01:30:00")


def test_lifetime_is_derived_from_the_walltime() -> None:
    assert resolve(walltime="01:00:00").lifetime_seconds() == (3240.0, 180.0)  # a tenth
    assert resolve(walltime="00:01:00").lifetime_seconds() == (50.0, 5.0)  # at least 10 s
    assert resolve(walltime="2-00:00:00").lifetime_seconds() == (172200.0, 300.0)  # <= 10 min
    assert resolve(walltime="00:05:00", lifetime="20s").lifetime_seconds() == (20.0, 0.0)


def test_job_scripts_hold_the_configured_directives() -> None:
    options = resolve(partition="debug", account="proj", cores=4, processes=2, memory="8GB",
                      walltime="02:00:00", directives=["--qos=short"],
                      prologue=["module load cuda"], interface="ib0", python="/opt/py",
                      gpu={"gpus": 2, "cores": 2, "partition": "gpu", "processes": 2})
    cpu = job_script(options, "cpu", cluster_id="c0ffee00", log_dir="/store/slurm/logs")
    for line in ["#SBATCH -J dscheduler-cpu-c0ffee00", "#SBATCH -p debug", "#SBATCH -A proj",
                 "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH -t 02:00:00",
                 "#SBATCH --output=/store/slurm/logs/dscheduler-cpu-c0ffee00-%j.log",
                 "#SBATCH --qos=short", "module load cuda",
                 "export DSCHEDULER_WORKER_LOG=/store/slurm/logs/"
                 "dscheduler-cpu-c0ffee00-$SLURM_JOB_ID.log"]:
        assert line in cpu.splitlines(), (line, cpu)
    worker = cpu.splitlines()[-1]
    for part in ["/opt/py -m distributed.cli.dask_worker", "--nthreads 2", "--nworkers 2",
                 "--resources CPU=2", "--lifetime 6600s", "--lifetime-stagger 300s",
                 "--no-lifetime-restart", "--interface ib0", "--death-timeout 60",
                 "--preload dscheduler.run.slurm.preload"]:
        assert part in worker, (part, worker)
    assert "gres" not in cpu
    gpu = job_script(options, "gpu", cluster_id="c0ffee00", log_dir="/store/slurm/logs")
    for line in ["#SBATCH -p gpu", "#SBATCH --cpus-per-task=2", "#SBATCH --gres=gpu:2",
                 "#SBATCH --qos=short"]:
        assert line in gpu.splitlines(), (line, gpu)
    assert "--resources GPU=1" in gpu and "CPU=" not in gpu


def test_job_scripts_carry_the_drivers_dscheduler_settings() -> None:
    with dask.config.set({"dscheduler.task.lease_ttl": 17}):
        script = job_script(resolve(), "cpu")
    prefix = "export DASK_INTERNAL_INHERIT_CONFIG="
    [line] = [x for x in script.splitlines() if x.startswith(prefix)]
    assert dask.config.deserialize(line[len(prefix):])["dscheduler"]["task"]["lease_ttl"] == 17


def test_reaper_cancels_by_id_and_by_job_name() -> None:
    data = {"jobs": {"12": {}, "13": {}}, "names": ["dscheduler-cpu-ab", "dscheduler-gpu-ab"]}
    assert _reaper.scancel_commands(data, "me") == [
        ["scancel", "12", "13"],
        ["scancel", "--user=me", "--name=dscheduler-cpu-ab"],
        ["scancel", "--user=me", "--name=dscheduler-gpu-ab"],
    ]
    assert _reaper.scancel_commands({"jobs": {}, "names": []}, "me") == []


def test_reaper_watches_its_owner_and_leaves_when_the_ledger_goes(tmp_path: Path) -> None:
    ledger = tmp_path / "jobs.json"
    ledger.write_text(json.dumps({"jobs": {}, "names": []}))
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    reaper = subprocess.Popen([sys.executable, "-I", _reaper.__file__, str(ledger),
                               str(owner.pid)])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            reaper.wait(timeout=1.0)  # the owner lives: it waits
        owner.kill()
        owner.wait()
        assert reaper.wait(timeout=60) == 0
        assert not ledger.exists()  # the owner died: its jobs (none here) cancelled, file gone
    finally:
        owner.kill()
        reaper.kill()


def test_cluster_up_options_parse_as_yaml_values() -> None:
    options = parse_options(["max_jobs=8", "walltime=1:00:00", "gpu.max_jobs=2",
                             "directives=[--qos=short]", "account="])
    assert options == {"max_jobs": "8", "walltime": "1:00:00", "gpu": {"max_jobs": "2"},
                       "directives": ["--qos=short"], "account": None}
    resolved = resolve(**options)
    assert (resolved.max_jobs, resolved.walltime, resolved.gpu.max_jobs) == (8, "01:00:00", 2)
    # an empty value is None, and None clears a configured value
    with dask.config.set({"dscheduler.slurm.account": "proj",
                          "dscheduler.slurm.walltime": "02:00:00"}):
        assert (resolve().account, resolve().walltime) == ("proj", "02:00:00")
        cleared = resolve(**parse_options(["account=", "walltime="]))
        assert (cleared.account, cleared.walltime, cleared.lifetime_seconds()) == \
            (None, None, None)
        script = job_script(cleared, "cpu")
        assert "#SBATCH -A" not in script and "#SBATCH -t" not in script, script
    with pytest.raises(ds.ConfigError, match="'max_jobs' is not KEY=VALUE"):
        parse_options(["max_jobs"])


_IMPORT_OFF_THE_MAIN_THREAD = """
import signal, sys, threading
before = signal.getsignal(signal.SIGINT)
errors = []

def load():
    try:
        import dscheduler.run.slurm.cluster  # the module that loads dask_jobqueue
    except Exception as err:
        errors.append(repr(err))

thread = threading.Thread(target=load)
thread.start()
thread.join()
assert not errors, errors
assert "dask_jobqueue" in sys.modules, "the thread did not load dask_jobqueue"
assert signal.getsignal(signal.SIGINT) is before, signal.getsignal(signal.SIGINT)
"""


def test_import_works_off_the_main_thread_and_keeps_ctrl_c() -> None:
    """dask-jobqueue 0.9.0 sets SIGINT to sys.exit as it is imported: importing dscheduler
    in a thread failed, and Ctrl-C in a driver raised SystemExit, not KeyboardInterrupt."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_OFF_THE_MAIN_THREAD],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
