"""The identity contract (docs/design.md §2): golden digests and properties."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import PurePosixPath
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dscheduler as ds
from dscheduler import identity

pytestmark = pytest.mark.fast


class Model(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint", "extra_requirements")
    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, Any] = {}
    steps: str = "0/120/6"
    members: int = 1
    label: str = ""
    resources: dict[str, Any] = {}


# -- golden values: a change here is a format change, bump identity.FORMAT ----
# FORMAT 2 (from 1): an object's __ds_identity__ comes before model_dump, so a RunConfig
# inside a RunConfig counts by its ids (docs/design.md §2); every id moved once.

GOLDEN_CONFIG = {"checkpoint": "ckpt/a.pt", "config": {"lr": 0.001, "layers": [64, 64]}}


def test_golden_canonical_json() -> None:
    value = {"b": (1, 2.5), "a": {"z": None, "y": True}, "p": PurePosixPath("/x/y"), "é": "ü"}
    assert identity.canonical_json(value) == (
        '{"a":{"y":true,"z":null},"b":[1,2.5],"p":"/x/y","é":"ü"}'
    )
    when = dt.datetime(2020, 1, 1, 13, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert identity.canonical_json(when) == '"2020-01-01T12:00:00+00:00"'


def test_golden_digests() -> None:
    assert identity.digest("run", {"a": 1}) == (
        "19640e0b9804cd86dfb3a8fe576df2ca4bc394b0d0aa71b72361ae1a8d418cc3"
    )
    # The format, spelled out: sha256 of the kind tag line and the canonical JSON.
    spelled = hashlib.sha256(b'dscheduler/2/run\n{"a":1}').hexdigest()
    assert identity.digest("run", {"a": 1}) == spelled
    assert identity.short_id(spelled) == spelled[:16]


def test_golden_run_config_ids() -> None:
    cfg = Model(**GOLDEN_CONFIG)
    assert cfg.env_id == "c88fbdca2603c696"
    assert cfg.config_hash == "c76e73c8e7217dc2"
    assert cfg.run_id == f"{cfg.env_id}/{cfg.config_hash}"
    assert len(cfg.env_digest) == 64 and cfg.env_digest.startswith(cfg.env_id)


def test_golden_env_ids() -> None:
    env = ds.Env(python="3.11", requirements=["numpy==1.26.4", "xarray>=2024.1"])
    assert env.env_id == "9e8d2203e966595d"
    assert len(env.digest) == 64 and env.digest.startswith(env.env_id)
    assert ds.Env(python="3.11").env_id == "0f76bbead89361d8"


class Downscaler(ds.RunConfig):
    """A run on another run: its forecaster is a field."""

    ENV_FIELDS: ClassVar = ("region",)
    forecaster: Model
    members: dict[str, Model] = {}
    region: str = "alps"
    label: str = ""
    resources: dict[str, Any] = {}


def _as_argument(cfg: ds.RunConfig) -> Any:
    from dscheduler.graph.node import canon

    return canon(cfg, [])[0]


def test_golden_nested_run_config_ids() -> None:
    inner = Model(**GOLDEN_CONFIG)
    outer = Downscaler(forecaster=inner, members={"m": inner})
    assert outer.env_id == "baf7e74b81b77640"
    assert outer.config_hash == "27193e56e5429ceb"
    # The rule, spelled out: a config in a field counts by its two digests, tagged, as
    # the same config passed as a task argument does.
    ids = {"\u0000config": {"env": inner.env_digest, "run": inner.config_digest}}
    assert outer.config_digest == identity.digest("run", {"forecaster": ids,
                                                          "members": {"m": ids}})
    assert _as_argument(inner) == ids


def test_nested_run_config_keeps_its_hash_exclude() -> None:
    # The forecaster's label and resources moved neither its run_id nor, now, the
    # run_id of a run that holds it (FORMAT 1 hashed its model_dump: they did).
    inner = Model(**GOLDEN_CONFIG)
    renamed = inner.model_copy(update={"label": "other", "resources": {"GPU": 1}})
    assert renamed.run_id == inner.run_id
    assert Downscaler(forecaster=renamed, members={"m": renamed}).run_id == \
        Downscaler(forecaster=inner, members={"m": inner}).run_id
    # Anything its ids cover moves the outer config_hash, not the outer env_id.
    changed = Downscaler(forecaster=inner.model_copy(update={"members": 7}))
    base = Downscaler(forecaster=inner)
    assert changed.config_hash != base.config_hash and changed.env_id == base.env_id
    # A config given as a dict is validated into the same run.
    assert Downscaler(forecaster=dict(GOLDEN_CONFIG)).run_id == base.run_id


def test_objects_with_an_identity_hook_use_it_before_model_dump() -> None:
    env = ds.Env(python="3.11", requirements=["numpy"])
    assert identity.canonical_json({"e": env}) == f'{{"e":"{env.digest}"}}'


# -- properties -----------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _reordered(value: Any) -> Any:
    """The same value with every dict built in reverse key order."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    return value


@settings(max_examples=100, deadline=None)
@given(json_value)
def test_key_order_does_not_change_digest(value: Any) -> None:
    assert identity.digest("x", value) == identity.digest("x", _reordered(value))


@settings(max_examples=100, deadline=None)
@given(json_value)
def test_canonical_json_round_trips(value: Any) -> None:
    text = identity.canonical_json(value)
    assert identity.canonical_json(json.loads(text)) == text


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_value, max_size=5))
def test_construction_order_does_not_change_ids(config: dict[str, Any]) -> None:
    a = Model(checkpoint="c", config=config, members=3, label="x")
    b = Model(label="x", members=3, config=_reordered(config), checkpoint="c")
    assert (a.env_id, a.config_hash) == (b.env_id, b.config_hash)


fields_strategy = st.fixed_dictionaries(
    {
        "checkpoint": st.text(min_size=1, max_size=8),
        "extra_requirements": st.lists(st.text(min_size=1, max_size=6), max_size=2),
        "config": st.dictionaries(st.text(max_size=4), json_leaf, max_size=3),
        "steps": st.text(max_size=6),
        "members": st.integers(0, 100),
        # labels name runs for people; path-like ones are rejected (test_config.py)
        "label": st.text(st.characters(exclude_characters="/\\", exclude_categories=("Cc",)),
                         max_size=6).filter(lambda t: t not in (".", "..")),
        "resources": st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
    }
)


def _change(field: str, value: Any) -> Any:
    if isinstance(value, str):
        return value + "_"
    if isinstance(value, int):
        return value + 1
    if isinstance(value, list):
        return [*value, "extra"]
    return {**value, "__changed__": 1}


@settings(max_examples=60, deadline=None)
@given(fields_strategy, st.sampled_from(list(Model.model_fields)))
def test_each_field_moves_exactly_its_id(fields: dict[str, Any], field: str) -> None:
    base = Model(**fields)
    changed = Model(**{**fields, field: _change(field, fields[field])})
    if field in Model.ENV_FIELDS:
        assert changed.env_id != base.env_id
        assert changed.config_hash == base.config_hash
    elif field in Model.HASH_EXCLUDE:
        assert changed.run_id == base.run_id
    else:
        assert changed.config_hash != base.config_hash
        assert changed.env_id == base.env_id


def test_every_field_is_classified() -> None:
    # What the library decided for Model: each field in exactly one group, the
    # default HASH_EXCLUDE inherited, every other field hashed into config_hash.
    assert Model.ENV_FIELDS == ("checkpoint", "extra_requirements")
    assert Model.HASH_EXCLUDE == ("label", "resources")
    assert Model._run_fields == ("config", "steps", "members")

    class Wider(Model):
        seed: int = 0

    assert Wider._run_fields == ("config", "steps", "members", "seed")
    base = Wider(checkpoint="c")
    assert Wider(checkpoint="c", seed=1).config_hash != base.config_hash
    assert Wider(checkpoint="c", seed=1).env_id == base.env_id


def test_ids_are_the_same_in_other_processes() -> None:
    """Interpreters with other hash seeds (0: no randomisation; this one's is random)
    compute the same ids from a config and env written in another order.

    They run side by side, and define ``Model`` from its source rather than import
    this module (pytest and hypothesis): each spends its time importing dscheduler.
    """
    cfg = Model(checkpoint="c", config={"b": {"y": 2, "x": [1.5, None]}, "a": "é"}, members=2)
    env = ds.Env(requirements=["xarray", "NumPy>=1"], find_links=["/w"])
    code = (
        "import sys, json; from typing import Any, ClassVar; import dscheduler as ds\n"
        + inspect.getsource(Model) +
        "cfg = Model(members=2, config={'a': 'é', 'b': {'x': [1.5, None], 'y': 2}},"
        " checkpoint='c')\n"
        "env = ds.Env(find_links=['/w'], requirements=['numpy>=1', 'xarray'])\n"
        "print(json.dumps([cfg.run_id, env.env_id]))\n"
    )
    procs = {
        seed: subprocess.Popen([sys.executable, "-c", code],
                               env={**os.environ, "PYTHONHASHSEED": seed},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in ("0", "12345")
    }
    for seed, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, (seed, err)
        assert json.loads(out) == [cfg.run_id, env.env_id], seed


# -- errors and collisions -------------------------------------------------


@pytest.mark.parametrize(
    ("value", "path", "fragment"),
    [
        ({"a": [1, {"b": float("nan")}]}, "config.a[1].b", "nan"),
        ({"a": float("inf")}, "config.a", "inf"),
        ({"a": b"raw"}, "config.a", "bytes"),
        ({"a": {1, "x"}}, "config.a", "set"),
        ({"a": object()}, "config.a", "object"),
        ({"a": {1: "x", "b": 2}}, "config.a[1]", "keys must be strings"),
        # json would write the int key as "1": {1: x} and {"1": x} must not hash alike
        ({"a": [{"b": {1: "x"}}]}, "config.a[0].b[1]", "keys must be strings"),
    ],
)
def test_values_without_canonical_form_name_their_path(value: Any, path: str,
                                                       fragment: str) -> None:
    with pytest.raises(ds.IdentityError) as info:
        identity.canonical_json(value, "config")
    assert info.value.path == path
    assert fragment in str(info.value)


def test_homogeneous_sets_are_sorted() -> None:
    assert identity.canonical_json({3, 1, 2}) == "[1,2,3]"


def test_collision_is_a_hard_error() -> None:
    full = identity.digest("run", {"a": 1})
    identity.check_collision(full, None)
    identity.check_collision(full, full)
    other = full[:16] + "0" * 48
    with pytest.raises(ds.CollisionError, match=full[:16]):
        identity.check_collision(full, other, "runs/x")
