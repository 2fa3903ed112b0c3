"""The typed node record (dscheduler/store/record.py): what today's records read as,
what a read-modify-write keeps, and the JSON it writes (docs/design.md §3, §11)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

import dscheduler as ds
from dscheduler.errors import StoreError, TaskError
from dscheduler.run.execute import run_node
from dscheduler.run.nodespec import make_specs
from dscheduler.store.catalogue.verify import verify
from dscheduler.store.record import FAILED, SUCCEEDED, Attempt, Record
from dscheduler.store.records import read_node, read_record, record_text, write_record

pytestmark = pytest.mark.fast

# Records as the code before the typed record wrote them (a ds.compute of a task in the
# worker's Python with tracking and a NaN metric, and of a failing task retried once).
SUCCEEDED_TEXT = (
    '{"task":"fit","version":"1","key":"59813febea6d985b724215f6447f892a85809a426273ea5ce31e'
    '81849b6a31bf","name":"fit-59813febea6d985b","env_id":null,"run_id":"30d7b34cc2c799ba/83'
    '84701828346fbe","case":"c0","upstream":[],"state":"succeeded","attempts":[{"attempt":1,'
    '"state":"succeeded","host":"vm","pid":17154,"worker":"tls://127.0.0.1:37219","slurm_job'
    '_id":null,"slurm_node":null,"worker_log":null,"submission":"db8030444a784f17","start":"'
    '2026-12-07T20:03:38.462+00:00","end":"2026-12-07T20:03:38.482+00:00","seconds":0.002}],'
    '"format":2,"label":"demo","model":"__main__.Cfg","config":{"lr":0.1,"label":"demo"},"en'
    'v":null,"call":{"fn":"gen.py:fit","module":"__main__","qualname":"fit","file":"/tmp/rec'
    '-gen/gen.py","code":{"digest":"9182a3006e9e22bf6889af627ea3fe2e93ff5023625117eb6ec3a4fd'
    'cf3a3ee5","scheme":"tokens-py3.11"},"args":{"cfg":{"\\u0000config":{"module":"__main__",'
    '"qualname":"Cfg","file":"/tmp/rec-gen/gen.py","run_id":"30d7b34cc2c799ba/8384701828346f'
    'be"}},"case":"c0","scale":2}},"seq":1796673818482299,"output":{"kind":"json","path":"fi'
    't.value.json"},"params":{"layers":3},"metrics":{"rmse":{"$float":"NaN"}},"metric_histor'
    'y":{"rmse":[[1,0.5,1796673818.482],[2,{"$float":"NaN"},1796673818.482]]},"tags":{"stage'
    '":"eval"}}')
FAILED_TEXT = (
    '{"task":"bad","version":"1","key":"d8eaf9b114cfbdb01a46534c37f4e09353d5fad51c23a04ffa90'
    '91ae91e768ec","name":"bad-d8eaf9b114cfbdb0","env_id":null,"run_id":null,"case":null,"up'
    'stream":["59813febea6d985b724215f6447f892a85809a426273ea5ce31e81849b6a31bf"],"state":"f'
    'ailed","attempts":[{"attempt":1,"state":"failed","host":"vm","pid":17154,"worker":"tls:'
    '//127.0.0.1:37219","slurm_job_id":null,"slurm_node":null,"worker_log":null,"submission"'
    ':"db8030444a784f17","start":"2026-12-07T20:03:38.524+00:00","end":"2026-12-07T20:03:38.'
    '540+00:00","seconds":0.016,"error":"ValueError: no good","traceback":"Traceback (most r'
    'ecent call last):\\n  File \\"/tmp/rec-gen/gen.py\\", line 19, in bad\\n    raise ValueErr'
    'or(\\"no good\\")\\nValueError: no good\\n"}],"format":2,"label":"","model":null,"config"'
    ':null,"env":null,"call":{"fn":"gen.py:bad","module":"__main__","qualname":"bad","file":'
    '"/tmp/rec-gen/gen.py","code":{"digest":"6496c8955b5794c29270341aaf63ab5ae65bfa5b0c67932'
    '681e2916e569d9be4","scheme":"tokens-py3.11"},"args":{"x":{"\\u0000node":{"key":"59813fe'
    'bea6d985b724215f6447f892a85809a426273ea5ce31e81849b6a31bf","name":"fit-59813febea6d985b'
    '","record":"runs/30d7b34cc2c799ba/8384701828346fbe/c0/fit.json"}}}},"seq":17966738188816'
    '15}')
# An env task's failed attempt, with every field an attempt in an env gets.
ENV_ATTEMPT = {
    "attempt": 1, "state": "failed", "host": "n1", "pid": 7, "worker": "tcp://n1:1",
    "slurm_job_id": "42", "slurm_node": "n1", "worker_log": "/logs/w-42.log",
    "submission": "s", "start": "2026-01-01T00:00:00.000+00:00", "log": "/s/logs/t.log",
    "subprocess_pid": 8, "exit_code": 1, "function_seconds": 0.25, "error": "E: x",
    "traceback": "tb", "end": "2026-01-01T00:00:01.000+00:00", "seconds": 1.0,
    "log_tail": "last lines"}


def strict(text: str | bytes) -> Any:
    """json.loads that refuses NaN and Infinity tokens, as strict readers do."""
    def refuse(token: str) -> Any:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("text", [SUCCEEDED_TEXT, FAILED_TEXT], ids=["succeeded", "failed"])
def test_records_written_before_read_back_and_write_the_same_bytes(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "fit.json"
    path.write_text(text)
    record = read_node(path)
    assert record is not None and record.format == 2 and record.extra == {}
    assert record_text(record) == text.encode()
    assert strict(record_text(record)) == strict(text)


def test_fields_are_attributes() -> None:
    record = Record.from_json(read_record_text(SUCCEEDED_TEXT))
    assert record.state == SUCCEEDED and record.label == "demo"
    assert record.output == {"kind": "json", "path": "fit.value.json"}
    assert record.params == {"layers": 3} and math.isnan(record.metrics["rmse"])
    assert record.code_digest is not None and record.code_digest.startswith("9182a300")
    assert isinstance(record.attempts[0], Attempt) and record.last.seconds == 0.002
    failed = Record.from_json(read_record_text(FAILED_TEXT))
    assert failed.state == FAILED and failed.last.error == "ValueError: no good"
    assert failed.upstream == [record.key] and failed.output is None


def read_record_text(text: str) -> dict[str, Any]:
    from dscheduler.store.records import loads

    data = loads(text)
    assert isinstance(data, dict)
    return data


def test_an_env_attempt_keeps_every_key() -> None:
    attempt = Attempt.from_json(ENV_ATTEMPT)
    assert attempt.exit_code == 1 and attempt.log_tail == "last lines"
    assert attempt.to_json() == ENV_ATTEMPT and attempt.extra == {}


def test_unknown_keys_survive_a_read_modify_write(tmp_path: Path) -> None:
    data = strict(FAILED_TEXT)
    data["from_a_newer_version"] = {"a": [1, 2]}
    data["attempts"][0]["gpu"] = "A100"
    record = Record.from_json(data)
    assert record.extra == {"from_a_newer_version": {"a": [1, 2]}}
    assert record.attempts[0].extra == {"gpu": "A100"}
    record.state, record.damaged = "damaged", "its value is missing"
    out = strict(record_text(record))
    assert out["from_a_newer_version"] == {"a": [1, 2]}
    assert out["attempts"][0]["gpu"] == "A100"
    assert out["damaged"] == "its value is missing"
    assert set(out) == set(data) | {"damaged"}


def test_a_record_of_an_older_format_gains_no_keys() -> None:
    old = {"task": "t", "version": "1", "key": "k" * 64, "name": "t-kkkk", "env_id": None,
           "run_id": None, "case": None, "upstream": [], "state": "succeeded",
           "attempts": [{"attempt": 1, "state": "succeeded", "host": "h", "pid": 1,
                         "worker": None, "slurm_job_id": None, "slurm_node": None,
                         "worker_log": None, "submission": "s", "start": "t0",
                         "end": "t1", "seconds": 0.1}],
           "output": {"kind": "json", "path": "t.value.json"}}
    record = Record.from_json(old)
    assert record.format is None
    assert record.to_json() == old
    assert list(record.to_json()) == list(old)


def test_non_finite_floats_are_written_as_strict_json(tmp_path: Path) -> None:
    record = Record(task="t", key="k" * 64, name="t-kkkk", state=SUCCEEDED,
                    attempts=[Attempt(host="h", start="t0")],
                    metrics={"loss": math.inf, "nan": math.nan}, seq=1)
    text = record_text(record)
    assert b"NaN" not in text.replace(b'"NaN"', b"") and b"Infinity" not in \
        text.replace(b'"Infinity"', b"")
    assert strict(text)["metrics"] == {"loss": {"$float": "Infinity"},
                                       "nan": {"$float": "NaN"}}
    path = tmp_path / "t.json"
    path.write_bytes(text)
    back = read_node(path)
    assert back is not None and back.metrics["loss"] == math.inf
    assert math.isnan(back.metrics["nan"])


def test_a_record_that_is_not_one_is_damaged(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_text('{"key": "k", "state": "failed", "attempts": "three"}')
    with pytest.raises(StoreError, match=r"t\.json is damaged \(its attempts are 'three', "
                       r"not a list of objects\); run `dscheduler verify --repair`"):
        read_node(path)


def test_dicts_from_tools_are_written_as_they_are(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    node = flaky(3)
    paths = node.paths(store)
    paths.dir.mkdir(parents=True)
    data = {"key": node.key, "state": "failed", "attempts": [], "note": "by hand"}
    write_record(paths, data)
    stored = read_record(paths.record)
    assert stored == {**data, "seq": stored["seq"]}
    node = read_node(paths.record)
    assert node is not None and node.extra == {"note": "by hand"} and node.state == FAILED


# -- through the executor --------------------------------------------------------------


@ds.task(version="1", env=None, retries=0)
def flaky(x: int) -> int:
    raise ValueError(f"no {x}")


def test_an_earlier_attempt_keeps_its_unknown_keys_through_a_retry(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    node = flaky(1)
    spec = make_specs(ds.plan(node, store=store), "sub1")[node.key]
    with pytest.raises(TaskError) as caught:
        run_node(spec)
    assert isinstance(caught.value.record, dict)  # what users read: the stored JSON
    assert caught.value.record["attempts"][0]["error"] == "ValueError: no 1"
    stored = read_record(spec.paths.record)
    assert stored is not None
    stored["attempts"][0]["gpu"] = "A100"  # as a newer version might have written it
    spec.paths.record.write_text(json.dumps(stored))
    with pytest.raises(TaskError):
        run_node(make_specs(ds.plan(node, store=store), "sub2")[node.key])
    again = read_node(spec.paths.record)
    assert again is not None and [a.attempt for a in again.attempts] == [1, 2]
    assert again.attempts[0].extra == {"gpu": "A100"}
    assert again.attempts[1].submission == "sub2" and again.last.state == FAILED


def test_verify_repair_keeps_a_records_unknown_keys(tmp_path: Path) -> None:
    store = ds.Store(tmp_path / "store")
    node = flaky(2)
    paths = node.paths(store)
    paths.dir.mkdir(parents=True)
    data = strict(SUCCEEDED_TEXT)
    data.update(key=node.key, name=node.name, task="flaky", run_id=None, case=None,
                future_field=[1])
    paths.record.write_text(json.dumps(data))  # succeeded, but its value is missing
    paths.done.symlink_to(node.key)
    report = verify(store, repair=True)
    assert report.problems
    demoted = read_record(paths.record)
    assert demoted is not None and demoted["state"] == "damaged"
    assert demoted["future_field"] == [1] and "value" in demoted["damaged"]
    assert demoted["attempts"] == data["attempts"]


# -- one place --------------------------------------------------------------------------

PACKAGE = Path(__file__).resolve().parent.parent / "dscheduler"
#: Indexing a dict named like a node record or attempt: record["x"], attempt.get("x") ...
INDEXING = re.compile(r"\b(record|rec|attempt|attempts|last|previous|stored_record|again|"
                      r"upstream)(\[\s*['\"]|\.get\(\s*['\"])")
#: Modules whose ``record`` is another file's JSON, never a node record.
OTHER_JSON = {
    "envs/build.py": "env.json",
    "envs/gc.py": "env.json",
    "envs/published.py": "env.json",
    "cli/cluster.py": "slurm/cluster.json",
    "run/clusters.py": "slurm/cluster.json",
    "run/slurm/detached.py": "slurm/cluster.json",
}


def test_no_module_but_the_record_module_indexes_a_node_record() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "store/record.py" or rel in OTHER_JSON:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if INDEXING.search(line):
                found.append(f"dscheduler/{rel}:{number}: {line.strip()}")
    assert not found, ("node records are read through dscheduler/store/record.py "
                       "(record.state, attempt.error), not indexed:\n" + "\n".join(found))
