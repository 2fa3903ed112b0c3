"""RunConfig and Env: class definition checks, validation, env identity."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

import dscheduler as ds

pytestmark = pytest.mark.fast


class Forecast(ds.RunConfig):
    ENV_FIELDS: ClassVar = ("checkpoint", "extra_requirements")
    checkpoint: str
    extra_requirements: list[str] = []
    config: dict[str, Any] = {}
    label: str = ""
    resources: dict[str, Any] = {}

    def env(self) -> ds.Env:
        return ds.Env(requirements=["numpy", *self.extra_requirements])


def test_env_fields_must_exist() -> None:
    with pytest.raises(ds.ConfigError, match=r"ENV_FIELDS names \['chekpoint'\].*checkpoint"):

        class Bad(ds.RunConfig):
            ENV_FIELDS: ClassVar = ("chekpoint",)
            checkpoint: str


def test_hash_exclude_must_exist() -> None:
    with pytest.raises(ds.ConfigError, match=r"HASH_EXCLUDE names \['lable'\]"):

        class Bad(ds.RunConfig):
            HASH_EXCLUDE: ClassVar = ("lable",)
            label: str = ""


def test_field_cannot_be_both_env_and_excluded() -> None:
    with pytest.raises(ds.ConfigError, match=r"\['label'\] are in both"):

        class Bad(ds.RunConfig):
            ENV_FIELDS: ClassVar = ("label",)
            HASH_EXCLUDE: ClassVar = ("label",)
            label: str = ""


def test_unknown_field_and_wrong_type_are_rejected() -> None:
    with pytest.raises(ValidationError, match="chekpoint"):
        Forecast(checkpoint="a", chekpoint="b")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="checkpoint"):
        Forecast(checkpoint=["a"])  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_anywhere_are_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=r"config\.model\.layers\[2\]"):
        Forecast(checkpoint="a", config={"model": {"layers": [1, 2, bad]}})


def test_non_serialisable_value_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"config\.fn.*no canonical form"):
        Forecast(checkpoint="a", config={"fn": lambda: 1})


def test_configs_are_frozen_and_copies_rehash() -> None:
    cfg = Forecast(checkpoint="a")
    with pytest.raises(ValidationError):
        cfg.checkpoint = "b"  # type: ignore[misc]
    other = cfg.model_copy(update={"checkpoint": "b"})
    assert other.env_id != cfg.env_id
    assert other.env_id == Forecast(checkpoint="b").env_id
    assert cfg.model_copy().run_id == cfg.run_id


def test_cfg_env_carries_the_configs_env_id() -> None:
    cfg = Forecast(checkpoint="a", extra_requirements=["xarray"])
    env = cfg.env()
    assert env.env_id == cfg.env_id
    assert env.digest == cfg.env_digest
    assert env.requirements == ("numpy", "xarray")
    # The same packages from a bare Env have the Env's own id.
    assert ds.Env(requirements=["numpy", "xarray"]).env_id != cfg.env_id


def test_config_without_env_method_says_how_to_add_one() -> None:
    class NoEnv(ds.RunConfig):
        x: int = 1

    with pytest.raises(ds.ConfigError, match="def env"):
        NoEnv().env()


def test_env_requirements_are_normalised_and_order_free() -> None:
    a = ds.Env(requirements=["NumPy >= 1.2", "Xarray", "numpy>=1.2"])
    b = ds.Env(requirements=["xarray", "numpy>=1.2"])
    assert a.requirements == ("numpy>=1.2", "xarray")
    assert a.env_id == b.env_id
    assert ds.Env(requirements=["xarray"], image="dir").env_id == ds.Env(
        requirements=["xarray"]).env_id


@pytest.mark.parametrize(
    ("field", "value"),
    [("python", "3.12"), ("requirements", ["numpy==2"]), ("find_links", ["/w"]),
     ("index_url", "https://example.invalid/simple"), ("offline", True)],
)
def test_every_env_field_moves_env_id(field: str, value: Any) -> None:
    base = ds.Env(python="3.11", requirements=["numpy==1"])
    assert ds.Env(**{**base.model_dump(), field: value}).env_id != base.env_id


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"requirements": ["numpy=1.2"]}, "numpy=1.2"), ({"python": "three"}, "three"),
     ({"requirement": ["x"]}, "requirement")],
)
def test_bad_env_input(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        ds.Env(**kwargs)


def test_env_from_checkpoint_sidecar_and_zip(tmp_path: Path) -> None:
    meta = {"python": "3.11", "requirements": ["numpy==1.26.4"]}
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    (tmp_path / "model.ckpt.dscheduler-env.json").write_text(json.dumps(meta))
    env = ds.Env.from_checkpoint(ckpt, extra_requirements=["xarray"])
    assert env.requirements == ("numpy==1.26.4", "xarray")

    zipped = tmp_path / "model.pt"
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("archive/data.pkl", b"x")
        zf.writestr("archive/dscheduler-env.json", json.dumps(meta))
    assert ds.Env.from_checkpoint(zipped).requirements == ("numpy==1.26.4",)

    bare = tmp_path / "bare.ckpt"
    bare.write_bytes(b"x")
    with pytest.raises(ds.ConfigError, match="carries no environment metadata"):
        ds.Env.from_checkpoint(bare)
    with pytest.raises(ds.ConfigError, match="does not exist"):
        ds.Env.from_checkpoint(tmp_path / "missing.ckpt")


@pytest.mark.parametrize("label", ["../../x", "a/b", "..", "tab\there"])
def test_path_like_labels_are_rejected(label: str) -> None:
    with pytest.raises(ValidationError, match="looks like a path"):
        Forecast(checkpoint="a", label=label)
    assert Forecast(checkpoint="a", label="base run (v2), 6h").label == "base run (v2), 6h"
