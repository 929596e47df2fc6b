"""``python -m recipes.tinystories``: data loading, instruct entries, the offline failure, and a smoke run
(train a few steps, read the story it wrote, resume, sample, fine-tune on instruct entries)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # recipes/ runs from the checkout; it is never installed into site-packages
    sys.path.insert(0, str(REPO))

from recipes import tinystories, tinystories_data, tinystories_instruct  # noqa: E402

SHARED_STORIES = REPO.parent / "shared" / "data" / "tinystories"
# A model small enough that a few steps take a second or two on two CPU cores.
TINY_FLAGS = ["--dims", "32,32", "--layers", "1,1", "--heads", "2,2", "--max-seq-len", "64", "--batch-size", "4",
              "--eval-windows", "4", "--sample-bytes", "40", "--warmup-steps", "1", "--no-progress", "--no-compile"]

DIALOGUE_STORY = ('Once upon a time, a girl named Lily found a shiny red ball in the garden. '
                  '"Look, Mom!" she said. Her mom smiled and they played together until the sun went down.')
QUIET_STORY = ("Tom had a small boat. Every morning he sailed across the quiet lake to watch the fish jump. "
               "One day the wind pushed his boat far away, but he rowed back home before dinner.")


def make_stories(count: int, seed: int = 0) -> list[str]:
    """Short generated stories, for when ../shared/data is absent."""
    rng = random.Random(seed)
    names, things = ["Lily", "Tom", "Sue", "Ben"], ["ball", "kite", "cat", "tree", "boat"]
    return [f"Once upon a time, {rng.choice(names)} had a {rng.choice(things)}. "
            f"{rng.choice(names)} liked the {rng.choice(things)} very much.\nThey played all day."
            for _ in range(count)]


def read_txt(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n<|endoftext|>\n")[:-1]


def write_txt(path: Path, stories: list[str]) -> Path:
    path.write_text("".join(story + "\n<|endoftext|>\n" for story in stories), encoding="utf-8")
    return path


# -- loading stories ----------------------------------------------------------------------------------------
def test_txt_file_is_split_on_endoftext_lines(tmp_path):
    stories = make_stories(30) + ["A story\n\nwith a blank line inside."]
    source = tinystories_data.local_source(write_txt(tmp_path / "stories.txt", stories), tmp_path / "cache")
    assert source.splits == ("train",)
    assert source.load()["train"]["text"] == stories


def test_folder_with_train_and_valid_gives_both_splits(tmp_path):
    write_txt(tmp_path / "train.txt", make_stories(20))
    write_txt(tmp_path / "valid.txt", make_stories(5, seed=1))
    (tmp_path / "sources.json").write_text("{}", encoding="utf-8")  # not a split: ignored
    source = tinystories_data.local_source(tmp_path, tmp_path / "cache")
    assert source.splits == ("train", "validation")
    loaded = source.load()
    assert loaded["train"]["text"] == make_stories(20) and loaded["validation"]["text"] == make_stories(5, seed=1)


def test_jsonl_and_parquet_are_read_through_datasets(tmp_path):
    stories = make_stories(12)
    jsonl = tmp_path / "stories.jsonl"
    jsonl.write_text("".join(json.dumps({"text": s, "id": i}) + "\n" for i, s in enumerate(stories)), encoding="utf-8")
    assert tinystories_data.local_source(jsonl, tmp_path / "cache").load()["train"]["text"] == stories

    import datasets

    parquet = tmp_path / "stories.parquet"
    datasets.Dataset.from_dict({"story": stories}).to_parquet(str(parquet))  # a "story" column works too
    assert tinystories_data.local_source(parquet, tmp_path / "cache").load()["train"]["text"] == stories


def test_bad_local_data_is_one_clear_error(tmp_path):
    with pytest.raises(tinystories_data.RecipeError, match="no such file"):
        tinystories_data.local_source(tmp_path / "missing.txt")
    (tmp_path / "notes.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(tinystories_data.RecipeError, match="unknown file type"):
        tinystories_data.local_source(tmp_path / "notes.csv")
    write_txt(tmp_path / "a.txt", make_stories(2))
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    with pytest.raises(tinystories_data.RecipeError, match="mixes"):
        tinystories_data.local_source(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "stories.jsonl").write_text('{"title": "no text column"}\n', encoding="utf-8")
    with pytest.raises(tinystories_data.RecipeError, match="no story column"):
        tinystories_data.local_source(bad, tmp_path / "cache").load()
    (tmp_path / "empty.txt").write_bytes(b"")  # the datasets loader's own error did not say so
    with pytest.raises(tinystories_data.RecipeError, match="empty.txt is empty"):
        tinystories_data.local_source(tmp_path / "empty.txt")


def test_ctrl_c_while_the_loader_reads_is_an_interrupt_not_a_data_error(tmp_path, monkeypatch):
    import datasets

    def interrupted_load(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as stop:  # what datasets does: its own error, raised from the interrupt
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset") from stop

    write_txt(tmp_path / "a.txt", make_stories(2))  # text files are read by a generator, JSON by load_dataset
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    monkeypatch.setattr(datasets, "load_dataset", interrupted_load)
    monkeypatch.setattr(datasets.Dataset, "from_generator", interrupted_load)
    for name in ("a.txt", "b.jsonl"):
        with pytest.raises(KeyboardInterrupt):
            tinystories_data.local_source(tmp_path / name, tmp_path / "cache").load()


def test_shared_tinystories_load_as_real_stories(shared_data, tmp_path):
    source = tinystories_data.local_source(shared_data / "tinystories", tmp_path / "cache")
    loaded = source.load()
    expected = read_txt(shared_data / "tinystories" / "train.txt")
    assert len(loaded["train"]) == len(expected) and loaded["train"][0]["text"] == expected[0]
    assert len(loaded["validation"]) > 0


# -- offline: fail fast with a message saying what to pass --------------------------------------------------
def test_an_unreachable_hub_says_to_pass_data(monkeypatch):
    # Why the hub is unreachable is the probe's business (tests/test_hub.py); the recipe adds what to do.
    monkeypatch.setattr(tinystories_data, "hub_unreachable_reason", lambda: "cannot connect to huggingface.co:443")
    with pytest.raises(tinystories_data.RecipeError, match=r"\(cannot connect to huggingface.co:443\); .*--data"):
        tinystories_data.hub_source().load()


def test_without_network_and_data_the_recipe_fails_fast(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # The timeout only guards against a hang; the run ends after the imports (a few seconds).
    result = subprocess.run([sys.executable, "-m", "recipes.tinystories", "--out", str(tmp_path / "run")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "--data" in result.stderr and "Hugging Face hub" in result.stderr
    assert "Traceback" not in result.stderr


def test_hub_sources_ask_datasets_for_the_right_files(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")  # not the user's cache

    stories = make_stories(6)
    lines = "\n<|endoftext|>\n".join(stories).split("\n")  # how the hub's .txt files load: a row per line
    calls = []

    def fake_load_dataset(name, **options):
        calls.append((name, options))
        line_rows = options.get("data_files") or name == tinystories_data.HUB_INSTRUCT
        rows = {"text": lines} if line_rows else {"text": stories}
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(rows) for split in ("train", "validation")})

    monkeypatch.setattr(tinystories_data, "hub_unreachable_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    for source in (tinystories_data.hub_source(), tinystories_data.hub_source(v2=True, revision="abc"),
                   tinystories_data.hub_source(instruct=True)):
        assert source.load()["train"]["text"] == stories and source.load()["validation"]["text"] == stories
    assert calls[0] == (tinystories_data.HUB_DATASET, {"data_files": None, "revision": "main"})
    assert calls[1] == (tinystories_data.HUB_DATASET, {"data_files": tinystories_data.HUB_V2_FILES, "revision": "abc"})
    assert calls[2][0] == tinystories_data.HUB_INSTRUCT


# -- instruct entries ---------------------------------------------------------------------------------------
def header_fields(entry: str) -> dict[str, str]:
    header, _, _ = entry.partition(tinystories_instruct.STORY_FIELD)
    return dict(line.split(": ", 1) for line in header.splitlines())


def test_instruct_entry_is_built_from_the_story():
    for seed in range(20):
        entry = tinystories_instruct.make_instruct_entry(DIALOGUE_STORY, seed)
        assert entry.endswith(tinystories_instruct.STORY_FIELD + DIALOGUE_STORY)
        fields = header_fields(entry)
        assert fields["Features"] == "Dialogue"
        words = fields["Words"].split(", ")
        assert len(words) == 3 and len(set(words)) == 3
        assert all(word in DIALOGUE_STORY for word in words)
        if "Sentence" in fields:
            assert fields["Sentence"] in DIALOGUE_STORY


def test_instruct_entry_has_no_dialogue_feature_without_quotes_and_is_deterministic():
    entries = {tinystories_instruct.make_instruct_entry(QUIET_STORY, seed) for seed in range(10)}
    assert all("Features:" not in entry for entry in entries)
    assert len(entries) > 1  # the seed picks the words and the sentence
    entry = tinystories_instruct.make_instruct_entry
    assert entry(QUIET_STORY, 7) == entry(QUIET_STORY, 7)
    assert any("Sentence: " in entry for entry in entries) and any("Sentence: " not in entry for entry in entries)
    assert tinystories_instruct.is_instruct_entry(tinystories_instruct.make_instruct_entry(QUIET_STORY, 0))
    assert not tinystories_instruct.is_instruct_entry(QUIET_STORY)


def test_prompts_plain_and_instruct():
    assert tinystories_instruct.story_prompt("Once upon a time") == "Once upon a time"
    assert tinystories_instruct.story_prompt("Words: cat, ball, happy") == "Words: cat, ball, happy\nStory: "
    assert (tinystories_instruct.story_prompt(r"Features: Dialogue\nWords: cat, ball, happy\nStory: ")
            == "Features: Dialogue\nWords: cat, ball, happy\nStory: ")


# -- the recipe end to end -------------------------------------------------------------------------------------
@pytest.fixture
def story_data(tmp_path) -> Path:
    """A train.txt / valid.txt folder: the first real stories of ../shared/data/tinystories when present
    (a few hundred keep the byte cache quick to build), else generated stories in the same format."""
    folder = tmp_path / "stories"
    folder.mkdir()
    if SHARED_STORIES.is_dir():
        write_txt(folder / "train.txt", read_txt(SHARED_STORIES / "train.txt")[:300])
        write_txt(folder / "valid.txt", read_txt(SHARED_STORIES / "valid.txt")[:30])
    else:
        write_txt(folder / "train.txt", make_stories(300))
        write_txt(folder / "valid.txt", make_stories(30, seed=1))
    return folder


def run_recipe(capsys, *argv: str) -> str:
    tinystories.main([str(arg) for arg in argv])
    return capsys.readouterr().out


def test_train_writes_a_story_then_resumes_and_samples(story_data, tmp_path, capsys):
    run = tmp_path / "runs" / "tinystories"
    out = run_recipe(capsys, "--data", story_data, "--out", run, "--max-steps", 4, "--eval-every", 2, *TINY_FLAGS)
    # 4 steps learn nothing: the validation number is not reported as a result, the line says so.
    assert "the run ended after 4 steps, too few to learn from: its validation bits/byte (" in out
    assert "is no result; give it more --max-steps" in out and "final validation:" not in out
    # The story the text codec wrote: the prompt, then what the model wrote (after 4 steps it may end at once).
    story = (run / "samples" / "step_000004_0.txt").read_bytes()
    assert story.startswith(b"Once upon a time")
    assert story.decode("utf-8", errors="replace") in out  # printed as well
    assert "--- story 1 at step 2" in out and "--- story 1 at step 4" in out
    metadata = json.loads((run / "checkpoints" / "step_000004" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["codec"]["name"] == "text" and metadata["recipe"] == "tinystories"
    assert metadata["separator"] == "<|endoftext|>"  # compress and eval split stories at it
    assert (run / "curve.png").is_file() and (tmp_path / "runs" / "cache").is_dir()

    with pytest.raises(SystemExit, match="--resume"):  # the same folder again without --resume
        run_recipe(capsys, "--data", story_data, "--out", run, "--max-steps", 4, *TINY_FLAGS)

    out = run_recipe(capsys, "--resume", "--out", run, "--max-steps", 6, "--no-progress")
    assert "resumed from" in out and "at step 4" in out
    assert (run / "checkpoints" / "step_000006").is_dir()
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 6 and steps == sorted(steps)

    out = run_recipe(capsys, "sample", "--checkpoint", run, "--prompt", "Once upon a time", "--max-bytes", 30,
                     "--seed", 1, "--device", "cpu", "--output", tmp_path / "story.txt")
    assert out.startswith("Once upon a time")
    assert (tmp_path / "story.txt").read_text(encoding="utf-8").startswith("Once upon a time")


def test_instruct_fine_tunes_a_checkpoint_on_built_entries(story_data, tmp_path, capsys):
    base = tmp_path / "runs" / "tinystories"
    run_recipe(capsys, "--data", story_data, "--out", base, "--max-steps", 2, *TINY_FLAGS)
    tuned = tmp_path / "runs" / "tinystories-instruct"
    out = run_recipe(capsys, "--instruct", "--init", base, "--data", story_data, "--out", tuned, "--max-steps", 2,
                     "--eval-every", 2, "--sample-bytes", 20, "--no-progress", "--no-compile")
    assert f"fine-tuning from {base}" in out and "entries" in out
    story = (tuned / "samples" / "step_000002_0.txt").read_text(encoding="utf-8")
    assert story.startswith("Features: Dialogue\nWords: cat, ball, happy\nStory: ")
    metadata = json.loads((tuned / "checkpoints" / "step_000002" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["instruct"] is True

    out = run_recipe(capsys, "sample", "--checkpoint", tuned, "--prompt", r"Words: cat, ball, happy",
                     "--max-bytes", 20, "--device", "cpu")
    assert out.startswith("Words: cat, ball, happy\nStory: ")


# -- flags and defaults -------------------------------------------------------------------------------------
def test_recipe_defaults_fill_in_what_the_flags_leave_out(tmp_path):
    from bytemodels.app.flags import overrides_from_args
    from bytemodels.app.recipe import new_train_config
    from bytemodels.train import TrainConfig

    assert overrides_from_args(TrainConfig, tinystories.build_train_parser().parse_args([])) == {}
    defaults = tinystories.recipe_defaults("cpu", instruct=False)
    config = new_train_config(defaults, {}, tmp_path / "run")
    # Every training field the recipe sets is what the run gets when no flag is given.
    assert all(getattr(config, name) == value for name, value in defaults.items() if hasattr(config, name))
    assert config.out_dir == str(tmp_path / "run")
    args = tinystories.build_train_parser().parse_args(["--no-compile"])
    assert not new_train_config(defaults, overrides_from_args(TrainConfig, args), tmp_path / "run").compile
    assert config.sample_every == config.eval_every == defaults["eval_every"]  # stories at each evaluation
    args = tinystories.build_train_parser().parse_args(["--time", "2m", "--eval-every", "7", "--lr", "1e-3",
                                                        "--decay-fraction", "0.5"])
    config = new_train_config(defaults, overrides_from_args(TrainConfig, args), tmp_path / "run")
    assert (config.time, config.eval_every, config.sample_every, config.lr) == ("2m", 7, 7, 1e-3)
    assert (config.schedule, config.decay_fraction) == ("wsd", 0.5)  # the recipe's schedule, the flag's fraction
    # The instruct defaults lie over the plain ones on each kind of device.
    for kind in ("cpu", "gpu"):
        merged = tinystories.recipe_defaults(kind, instruct=True)
        assert merged == {**tinystories.DEVICE_DEFAULTS[kind], **tinystories.INSTRUCT_DEFAULTS[kind]}


def test_n_gram_dropout_per_table_follows_the_tables_the_flags_give():
    from bytemodels.app.recipe import model_config_from_args

    defaults = tinystories.recipe_defaults("cpu", instruct=False)

    def model(*argv: str):
        return model_config_from_args(tinystories.build_train_parser().parse_args(list(argv)), defaults,
                                      fields=defaults["model"])

    rates = defaults["model"]["ngram_dropout"]
    assert model().ngram_dropout == tuple(rates)  # one rate per table of the recipe's four
    mean = round(sum(rates) / len(rates), 4)
    assert model("--hash-ngrams", "").ngram_dropout == (mean,)  # the word table alone
    assert model("--hash-ngrams", "2,3", "--hash-word-bytes", "0").ngram_dropout == (mean,)
    assert model("--hash-ngrams", "2,3", "--ngram-dropout", "0.1,0.2", "--hash-word-bytes", "0").ngram_dropout == (
        0.1, 0.2)
    with pytest.raises(tinystories_data.RecipeError, match="ngram_dropout"):  # rates given for other tables than given
        model("--hash-ngrams", "2,3", "--ngram-dropout", "0.1,0.2")


@pytest.mark.parametrize("argv, message", [
    (["--val-fraction", "1.5"], "python -m recipes.tinystories: error: argument --val-fraction: "
                                "must be at least 0 and below 1, not 1.5"),
    (["--val-fraction", "-0.5"], "python -m recipes.tinystories: error: argument --val-fraction: "
                                 "must be at least 0 and below 1, not -0.5"),
    (["--sample-bytes", "0"], "python -m recipes.tinystories: error: argument --sample-bytes: must be at least 1, "
                              "not 0"),
    (["sample", "--max-bytes", "-3"], "python -m recipes.tinystories sample: error: argument --max-bytes: "
                                      "must be at least 0, not -3"),
    (["sample", "--temperature", "-1"], "python -m recipes.tinystories sample: error: argument --temperature: "
                                        "must be at least 0, not -1"),
    (["sample", "--top-k", "0"], "python -m recipes.tinystories sample: error: argument --top-k: must be at least 1, "
                                 "not 0"),
    (["sample", "--top-p", "1.5"], "python -m recipes.tinystories sample: error: argument --top-p: "
                                   "must be above 0 and at most 1, not 1.5"),
])
def test_flags_out_of_range_are_one_line_before_anything_is_read(tmp_path, capsys, argv, message):
    # The data and the checkpoint do not exist: the flag is refused first, as it is parsed.
    where = ["--checkpoint", str(tmp_path / "nowhere")] if argv[0] == "sample" else [
        "--data", str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as failure:
        tinystories.main([*argv, *where])
    assert failure.value.code == 2
    assert capsys.readouterr().err == message + "\n"


@pytest.mark.parametrize("command", [[], ["sample"]])
def test_a_device_that_is_not_here_is_one_line(tmp_path, command):
    where = ["--checkpoint", str(tmp_path / "nowhere")] if command else [
        "--data", str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "run")]
    prog = " ".join(["python -m recipes.tinystories", *command])
    with pytest.raises(SystemExit, match=rf"^{prog}: error: device .nodevice. is not a device name") as failure:
        tinystories.main([*command, *where, "--device", "nodevice"])
    assert "\n" not in str(failure.value)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match=rf"^{prog}: error: device .cuda. is not available") as failure:
            tinystories.main([*command, *where, "--device", "cuda"])
        assert "\n" not in str(failure.value)


def test_training_flags_are_checked_before_the_stories_are_read(tmp_path):
    with pytest.raises(SystemExit, match=r"^python -m recipes.tinystories: error: batch_size=0 must be at least 1$"):
        tinystories.main(["--data", str(tmp_path / "nowhere.txt"), "--out", str(tmp_path / "run"), "--batch-size", "0"])
