"""Every recipe refuses a numeric flag out of its bounds in one line, before it reads any data."""

from __future__ import annotations

import pytest

from recipes import audio, images, mixed

# (recipe module, the data flag pointing nowhere, the flag, the message after "argument ")
CASES = [
    (audio, "--data", ["--val-fraction", "1.5"], "--val-fraction: must be at least 0 and below 1, not 1.5"),
    (audio, "--data", ["--val-fraction", "-0.5"], "--val-fraction: must be at least 0 and below 1, not -0.5"),
    (audio, "--data", ["--limit", "-4"], "--limit: must be at least 1, not -4"),  # it trained on all but the last 4
    (audio, "--data", ["--limit", "0"], "--limit: must be at least 1, not 0"),
    (audio, "--data", ["--num-samples", "-1"], "--num-samples: must be at least 1, not -1"),
    (audio, "--data", ["--num-samples", "0"], "--num-samples: must be at least 1, not 0"),
    (audio, "--data", ["--sample-seconds", "-1"], "--sample-seconds: must be above 0, not -1"),
    (audio, "--data", ["--sample-seconds", "0"], "--sample-seconds: must be above 0, not 0"),
    (audio, "--data", ["--prompt-seconds", "-0.5"], "--prompt-seconds: must be at least 0, not -0.5"),
    (audio, "--data", ["--temperature", "-1"], "--temperature: must be at least 0, not -1"),
    (audio, "--data", ["--temperature", "nan"], "--temperature: must be a finite number, not nan"),
    (images, "--data", ["--val-fraction", "1"], "--val-fraction: must be at least 0 and below 1, not 1"),
    (images, "--data", ["--limit", "-5"], "--limit: must be at least 1, not -5"),
    (images, "--data", ["--limit", "0"], "--limit: must be at least 1, not 0"),
    (images, "--data", ["--num-samples", "0"], "--num-samples: must be at least 1, not 0"),
    (images, "--data", ["--temperature", "-1"], "--temperature: must be at least 0, not -1"),
    (mixed, "--images", ["--val-fraction", "1"], "--val-fraction: must be at least 0 and below 1, not 1"),
    (mixed, "--images", ["--limit", "-3"], "--limit: must be at least 1, not -3"),
    (mixed, "--images", ["--num-samples", "-1"], "--num-samples: must be at least 1, not -1"),
    (mixed, "--images", ["--text-bytes", "0"], "--text-bytes: must be at least 1, not 0"),
    (mixed, "--images", ["--sample-seconds", "-1"], "--sample-seconds: must be above 0, not -1"),
    (mixed, "--images", ["--temperature", "-1"], "--temperature: must be at least 0, not -1"),
]


@pytest.mark.parametrize("recipe, data_flag, flags, message", CASES,
                         ids=[f"{case[0].__name__.split('.')[-1]}{' '.join(case[2])}" for case in CASES])
def test_flags_out_of_range_are_one_line_before_anything_is_read(tmp_path, capsys, recipe, data_flag, flags,
                                                                 message):
    with pytest.raises(SystemExit) as failure:  # the data does not exist: the flag is refused first
        recipe.main([data_flag, str(tmp_path / "nowhere"), "--out", str(tmp_path / "run"), *flags])
    assert failure.value.code == 2
    name = recipe.__name__.split(".")[-1]
    assert capsys.readouterr().err == f"python -m recipes.{name}: error: argument {message}\n"
