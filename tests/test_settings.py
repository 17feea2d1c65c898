"""Synthesis settings (`hare.settings`): each field's range and choices checked by `Settings.validate`, the
cross-field rules, and the command-line options built from the same facts (same values accepted, same
description of what is allowed)."""

import argparse
import dataclasses
import re

import pytest

from hare.errors import SettingsError
from hare.settings import (DECODERS, PRESETS, SAMPLERS, Range, Settings, add_options, make_settings, option_fields,
                           overrides_from)


def test_range_membership_and_description():
    assert 0.5 in Range(0, 1) and 0 in Range(0, 1) and 1 in Range(0, 1)
    assert 0 not in Range(0, 1, lo_open=True) and 1 not in Range(0, 1, hi_open=True)
    assert 5 in Range(1) and 0 not in Range(1) and float("nan") not in Range(0, 1) and True not in Range(0)
    assert "x" not in Range(0) and None not in Range(0)
    assert Range(0, 10, lo_open=True).describe() == "in (0, 10]"
    assert Range(0, 1, hi_open=True).describe() == "in [0, 1)"
    assert Range(1).describe() == "at least 1" and Range(0, lo_open=True).describe() == "above 0"
    assert Range(hi=3).describe() == "at most 3"


def _out_of_range(r: Range):
    """A value just outside a range (below it where it has a lower end)."""
    if r.lo is not None:
        return r.lo if r.lo_open else r.lo - 1
    return r.hi if r.hi_open else r.hi + 1


@pytest.mark.parametrize("field", [f for f in dataclasses.fields(Settings) if f.metadata["range"] is not None],
                         ids=lambda f: f.name)
def test_every_ranged_field_is_checked(field):
    bad = _out_of_range(field.metadata["range"])
    with pytest.raises(SettingsError, match="^" + re.escape(f"{field.name} must be {field.metadata['range'].describe()}")):
        Settings(**{field.name: bad}).validate()


def test_choices_and_cross_field_rules():
    assert Settings().validate() == Settings()
    assert Settings(batch_size=None).validate().ar_batch_size == 16  # None: all, at most 16
    with pytest.raises(SettingsError, match="sampler must be one of " + ", ".join(SAMPLERS).replace("+", r"\+")):
        make_settings("fast", sampler="euler")
    with pytest.raises(SettingsError, match="decoder must be one of " + ", ".join(DECODERS)):
        make_settings("fast", decoder="griffin-lim")
    with pytest.raises(SettingsError, match="cond_free must be true or false"):
        make_settings("fast", cond_free="yes")
    with pytest.raises(SettingsError, match="at most 1"):
        make_settings("fast", likelihood_weight=0.5, ctc_weight=0.6)
    with pytest.raises(SettingsError, match=r"k must be in \[1, num_candidates\]"):
        make_settings("ultra_fast", k=17)
    with pytest.raises(SettingsError, match="split lengths"):
        make_settings("fast", split_desired_length=400, split_max_length=300)
    with pytest.raises(SettingsError, match="unknown setting"):
        make_settings("fast", temprature=0.5)
    assert make_settings("fast", decoder="hifigan").num_candidates == 1  # api_fast: one sample
    assert make_settings("fast", decoder="hifigan", num_candidates=4).num_candidates == 4
    for name, values in PRESETS.items():
        assert all(getattr(make_settings(name), k) == v for k, v in values.items())


def _parser(names=None):
    p = argparse.ArgumentParser(exit_on_error=False)
    add_options(p, names)
    return p


def test_command_line_options_come_from_the_settings():
    flagged = option_fields()
    assert {f.name for f in flagged} >= {"num_candidates", "diffusion_steps", "sampler", "temperature", "top_p",
                                          "decoder", "cond_free", "ctc_weight", "voice_match", "stream_first_codes"}
    p = _parser()
    args = p.parse_args(["--candidates", "8", "--steps", "12", "--sampler", "dpm++2m", "--top-p", "0.5",
                         "--cond-free", "off", "--decoder", "hifigan", "--stream-first", "4"])
    assert overrides_from(args) == {"num_candidates": 8, "diffusion_steps": 12, "sampler": "dpm++2m", "top_p": 0.5,
                                    "cond_free": False, "decoder": "hifigan", "stream_first_codes": 4}
    assert overrides_from(p.parse_args([])) == {}  # nothing given: the preset and model decide
    assert make_settings("fast", **overrides_from(args)).num_candidates == 8
    # what the parser refuses, validate refuses too, with the same description
    for f in flagged:
        r = f.metadata["range"]
        if r is None:
            continue
        bad = _out_of_range(r)
        with pytest.raises(argparse.ArgumentError, match=re.escape(f"must be {r.describe()}")):
            p.parse_args([f.metadata["flag"], str(bad)])
        with pytest.raises(SettingsError, match=re.escape(f"must be {r.describe()}")):
            make_settings("fast", **{f.name: bad})
    with pytest.raises(argparse.ArgumentError, match="whole number"):
        p.parse_args(["--candidates", "2.5"])
    only = _parser(["num_candidates", "sampler"])
    assert overrides_from(only.parse_args(["--candidates", "3"])) == {"num_candidates": 3}
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        only.parse_args(["--top-p", "0.5"])  # not one of the options asked for
