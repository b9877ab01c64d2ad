"""The synthetic JUSTICE corpus: schema, determinism, and the documented learnability properties."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import data_params

from helpers.core import constants as core_constants
from helpers.data import schema as data_schema
from helpers.data import store as data_store
from helpers.stages import data as stages_data
from helpers.synthetic.generator import COLUMNS, generate_justice_csv, rationales_path


def _files(path):
    return path.read_bytes(), rationales_path(path).read_bytes()


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    generate_justice_csv(a, 300, 3)
    generate_justice_csv(b, 300, 3)
    generate_justice_csv(c, 300, 4)
    assert _files(a) == _files(b)
    assert _files(a)[0] != _files(c)[0] and _files(a)[1] != _files(c)[1]


def test_csv_has_the_justice_schema_with_html_and_dirty_rows(tmp_path):
    path = tmp_path / "justice.csv"
    generate_justice_csv(path, 1000, 11)
    header = path.read_text(encoding="utf-8").splitlines()[0]
    assert header == "," + ",".join(COLUMNS)  # unnamed leading index column, as in the public file
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert set(df["first_party_winner"]) == {"TRUE", "FALSE", ""}
    assert df["facts"].str.startswith("<p>").all()
    assert df["facts"].str.contains("&#39;|&amp;|&quot;").any()
    assert 1 <= (df["first_party_winner"] == "").sum() <= 15  # ~0.5% blank labels
    assert df.duplicated(subset=["facts", "first_party", "second_party"]).sum() == 5  # ~0.5% duplicates
    assert df["ID"].is_unique


def test_rationale_phrases_appear_in_cleaned_facts(tmp_path):
    path = tmp_path / "justice.csv"
    df = generate_justice_csv(path, 400, 5)
    records = [json.loads(line) for line in rationales_path(path).read_text().splitlines()]
    assert [r["ID"] for r in records] == df["ID"].tolist()
    facts = df["facts"].map(data_schema.clean_facts).tolist()
    n_cues = 0
    for rec, text in zip(records, facts):
        assert 0 < rec["rule_prob"] < 1
        for cue in rec["cues"]:
            assert cue["phrase"] in text
            n_cues += 1
    assert n_cues > len(records) * 0.8


def test_generation_writes_the_requested_cases_and_returns_what_it_wrote(tmp_path):
    # Replaces a wall-clock assertion (under 2 s), which tested the machine rather than the generator.
    path = tmp_path / "justice.csv"
    df = generate_justice_csv(path, 1600, 7)
    written = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert len(written) == len(df) and written["ID"].tolist() == df["ID"].astype(str).tolist()
    # n distinct cases, plus the documented ~0.5% exact duplicates that the data stage must remove
    assert len(df) - df.duplicated(subset=["facts", "first_party", "second_party"]).sum() == 1600
    assert len(rationales_path(path).read_text().splitlines()) == len(df)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default") / "run"
    card = stages_data.prepare(data_params(run_dir, synthetic_n=1600, synthetic_seed=7))
    return card, data_store.load_splits(run_dir)


def test_default_corpus_has_documented_difficulty(default_run):
    card, splits = default_run
    assert 0.60 <= card["majority_rate"] <= 0.65
    sizes = {s: card[f"n_{s}"] for s in core_constants.SPLITS}
    bayes = card["bayes_accuracy"]
    overall = sum(bayes[s] * sizes[s] for s in core_constants.SPLITS) / sum(sizes.values())
    assert 0.85 <= overall <= 0.92
    assert all(0.82 <= bayes[s] <= 0.95 for s in core_constants.SPLITS)
    tfidf = card["baselines"]["tfidf_logreg"]
    for s in ("val", "test"):
        assert tfidf[s]["accuracy"] >= card["majority_rate"] + 0.08  # there is signal to learn
    gap = np.mean([bayes[s] - tfidf[s]["accuracy"] for s in ("val", "test")])
    assert gap >= 0.06  # and room for a model that captures interactions


def test_default_corpus_lengths_and_cue_positions(default_run):
    card, splits = default_run
    words = pd.concat([splits[s]["n_words"] for s in core_constants.SPLITS])
    assert 30 <= words.min() and words.max() <= 250
    assert 80 <= words.median() <= 110
    assert words.quantile(0.95) >= 150  # a long tail, like real case facts
    assert card["cue_within_max_len_share"] >= 0.9
    assert 0.1 <= np.mean(list(card["truncated_share"].values())) <= 0.6
