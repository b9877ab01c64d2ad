"""Loading, cleaning, validating and splitting JUSTICE csvs into the run folder."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from conftest import data_params

from helpers.core import constants as core_constants
from helpers.core import errors as core_errors
from helpers.data import baselines as data_baselines
from helpers.data import rationales as data_rationales
from helpers.data import schema as data_schema
from helpers.data import splits as data_splits
from helpers.data import store as data_store
from helpers.models.tokenization import get_tokenizer
from helpers.stages import data as stages_data
from helpers.views import data as views_data

matplotlib.use("Agg")

HEADER = ["", "ID", "name", "first_party", "second_party", "facts", "first_party_winner", "disposition",
          "issue_area", "term"]


def write_cases(path, n_pos=24, n_neg=16, extra=()):
    """A small valid JUSTICE-style csv: distinct facts, n_pos first-party wins, n_neg losses, plus extra rows."""
    rows = [{"ID": 100 + i, "name": f"Alpha{i} v. Beta{i}", "first_party": f"Alpha{i}", "second_party": f"Beta{i}",
             "facts": f"<p>Case {i} concerns contract number {i * 7} and a dispute over wheat.</p>",
             "first_party_winner": "TRUE" if i < n_pos else "FALSE", "disposition": "reversed-LEAK",
             "issue_area": "Economic Activity", "term": "1999"} for i in range(n_pos + n_neg)]
    rows += list(extra)
    df = pd.DataFrame(rows)
    df.to_csv(path, index=True)
    return path


def assert_no_data_written(run_dir):
    assert not (run_dir / "data").exists()
    leftovers = [p.name for p in run_dir.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_clean_facts_strips_tags_entities_and_whitespace():
    raw = "<p>The  officer&#39;s <i>Miranda</i> warning &amp; the\n search.</p>\n<p>Second&nbsp;paragraph.</p>"
    assert data_schema.clean_facts(raw) == "The officer's Miranda warning & the search. Second paragraph."
    assert data_schema.clean_facts("<p>one</p><p>two</p>") == "one two"
    assert data_schema.clean_facts(float("nan")) == ""


def test_parse_labels_accepts_documented_spellings():
    values = pd.Series(["TRUE", "FALSE", "true", "false", "True", "False", "1", "0", "1.0", "0.0", "", " TRUE "])
    parsed = data_schema.parse_labels(values, "x.csv")
    assert parsed.iloc[:10].tolist() == [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
    assert pd.isna(parsed.iloc[10]) and parsed.iloc[11] == 1
    assert data_schema.parse_labels(pd.Series([True, False, 1.0]), "x.csv").tolist() == [1, 0, 1]


def test_parse_labels_reports_bad_values_with_rows():
    with pytest.raises(core_errors.DataError) as err:
        data_schema.parse_labels(pd.Series(["TRUE", "maybe", "FALSE", "yes"]), "cases.csv")
    msg = str(err.value)
    assert "cases.csv" in msg and "'maybe'" in msg and "row 2" in msg and "row 4" in msg and "'yes'" in msg


def _latin1(path):
    path.write_bytes(",ID,first_party,second_party,facts,first_party_winner\n0,1,Jos\xe9,B,<p>Caf\xe9 facts</p>,TRUE\n"
                     .encode("latin-1"))


def _binary(path):
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00")


def _unclosed_quote(path):
    path.write_text('first_party,second_party,facts,first_party_winner\nA,B,"<p>never closed,TRUE\n')


def _missing_columns(path):
    pd.DataFrame({"first_party": ["A"], "facts": ["<p>x</p>"]}).to_csv(path, index=False)


def _bad_labels(path):
    write_cases(path, extra=[{"ID": 900, "first_party": "X", "second_party": "Y", "facts": "<p>odd</p>",
                              "first_party_winner": "maybe"}])


def _too_few(path):
    write_cases(path, n_pos=20, n_neg=2)


def _all_blank_labels(path):
    df = pd.read_csv(write_cases(path), dtype=str, keep_default_na=False)
    df["first_party_winner"] = ""
    df.to_csv(path, index=False)


def _all_empty_facts(path):
    df = pd.read_csv(write_cases(path), dtype=str, keep_default_na=False)
    df["facts"] = "<p> &nbsp; </p>"
    df.to_csv(path, index=False)


BAD_FILES = {
    "missing": (None, "not found"),
    "latin1": (_latin1, "not UTF-8"),
    "binary": (_binary, "not a CSV"),
    "unclosed_quote": (_unclosed_quote, "parsed as CSV"),
    "missing_columns": (_missing_columns, "['second_party', 'first_party_winner']"),
    "bad_labels": (_bad_labels, "'maybe'"),
    "too_few": (_too_few, "label 0 (second party wins): 2 case(s)"),
    "blank_labels": (_all_blank_labels, "no usable rows"),
    "empty_facts": (_all_empty_facts, "no usable rows"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_input_raises_data_error_and_writes_nothing(tmp_path, kind):
    make, problem = BAD_FILES[kind]
    path = tmp_path / f"{kind}.csv"
    if make:
        make(path)
    run_dir = tmp_path / "runs" / "r"
    with pytest.raises(core_errors.DataError) as err:
        stages_data.prepare(data_params(run_dir, data_path=str(path)))
    assert str(path) in str(err.value) and problem in str(err.value)
    assert_no_data_written(run_dir)


def test_failed_prepare_leaves_an_earlier_good_run_untouched(tmp_path):
    run_dir = tmp_path / "runs" / "r"
    stages_data.prepare(data_params(run_dir, data_path=str(write_cases(tmp_path / "good.csv"))))
    before = {p.name: p.read_bytes() for p in (run_dir / "data").iterdir()}
    bad = tmp_path / "bad.csv"
    _bad_labels(bad)
    with pytest.raises(core_errors.DataError):
        stages_data.prepare(data_params(run_dir, data_path=str(bad)))
    assert {p.name: p.read_bytes() for p in (run_dir / "data").iterdir()} == before
    assert [p.name for p in run_dir.parent.iterdir()] == ["r"]


@pytest.mark.parametrize("kwargs", [{"val_frac": 0.0}, {"test_frac": 1.2}, {"val_frac": 0.5, "test_frac": 0.5}])
def test_invalid_split_fractions_are_refused(tmp_path, kwargs):
    with pytest.raises(ValueError, match="frac"):
        stages_data.prepare(data_params(tmp_path / "r", data_path=str(write_cases(tmp_path / "good.csv")), **kwargs))
    assert not (tmp_path / "r").exists()


def test_prepare_and_the_profile_validator_share_one_max_len_bound(tmp_path):
    from helpers.config.resolve import resolve
    from helpers.core.constants import MIN_MAX_LEN
    from helpers.core.errors import ConfigError

    good = str(write_cases(tmp_path / "good.csv"))
    with pytest.raises(ConfigError, match=f"parameter max_len: must be at least {MIN_MAX_LEN}"):
        stages_data.prepare(data_params(tmp_path / "r", data_path=good, max_len=MIN_MAX_LEN - 1))
    with pytest.raises(ConfigError, match=f"parameter max_len: must be at least {MIN_MAX_LEN}"):
        resolve("smoke", overrides=[("max_len", str(MIN_MAX_LEN - 1))])
    assert not (tmp_path / "r").exists()


def test_template_is_applied_and_missing_parties_are_empty(tmp_path):
    extra = [{"ID": 999, "first_party": "", "second_party": "", "facts": "<p>Party names unknown here.</p>",
              "first_party_winner": "FALSE", "issue_area": "Privacy"}]
    path = write_cases(tmp_path / "c.csv", extra=extra)
    stages_data.prepare(data_params(tmp_path / "r", data_path=str(path),
                                    text_template="{facts} [{issue_area}, {term}]"))
    cases = pd.concat(data_store.load_splits(tmp_path / "r").values())
    row = cases.set_index("id").loc["100"]
    assert row["text"] == "Case 0 concerns contract number 0 and a dispute over wheat. [Economic Activity, 1999]"
    stages_data.prepare(data_params(tmp_path / "r2", data_path=str(path)))
    cases = pd.concat(data_store.load_splits(tmp_path / "r2").values()).set_index("id")
    assert cases.loc["100", "text"].startswith("Alpha0 v. Beta0. Case 0 concerns")
    assert cases.loc["999", "text"] == "v. . Party names unknown here."
    assert cases.loc["999", "first_party"] == "" and not cases["text"].str.contains("nan|LEAK").any()


@pytest.mark.parametrize("template,word", [("{facts} {disposition}", "disposition"),
                                           ("{majority_vote} {facts}", "majority_vote"),
                                           ("{facts} {first_party_winner}", "first_party_winner"),
                                           ("{facts} {judge}", "judge")])
def test_leaking_or_unknown_template_fields_are_refused(tmp_path, template, word):
    with pytest.raises(ValueError) as err:
        stages_data.prepare(data_params(tmp_path / "r", data_path=str(write_cases(tmp_path / "c.csv")),
                                        text_template=template))
    assert "text_template" in str(err.value) and word in str(err.value)
    assert not (tmp_path / "r").exists()


def test_split_is_stratified_and_duplicates_never_straddle(tmp_path):
    extra, groups = [], {}
    for g, label in enumerate(["TRUE", "FALSE", "TRUE"]):
        base = f"The union struck plant {g} after wages were cut by a third."
        variants = [base, base, base.upper(), base.replace(" ", "  "), base.lower().replace(".", " ."),
                    base.replace("union", "Union"), base.replace("third.", "third .")]
        for k, facts in enumerate(variants):
            case_id = 500 + 10 * g + k
            groups.setdefault(g, []).append(str(case_id))
            extra.append({"ID": case_id, "first_party": "Local 7", "second_party": "Acme",
                          "facts": f"<p>{facts}</p>", "first_party_winner": label})
    path = write_cases(tmp_path / "c.csv", n_pos=120, n_neg=80, extra=extra)
    card = stages_data.prepare(data_params(tmp_path / "r", data_path=str(path)))
    splits = data_store.load_splits(tmp_path / "r")
    found = pd.concat(splits.values())["id"]
    assert card["n_duplicates_removed"] == 6 and found.is_unique
    for ids in groups.values():
        dropped = {ids[1], ids[3]}  # the exact copy and the whitespace variant (identical once cleaned)
        kept = [i for i in ids if i not in dropped]
        assert not dropped & set(found) and set(kept) <= set(found)
        assert len({s for s, df in splits.items() if df["id"].isin(kept).any()}) == 1
    overall = pd.concat(splits.values())["label"].mean()
    for s in core_constants.SPLITS:
        assert abs(splits[s]["label"].mean() - overall) < 0.03
    assert card["n_val"] == pytest.approx(0.2 * len(found), abs=8)


def test_split_is_reproducible_and_seed_dependent(tmp_path):
    path = write_cases(tmp_path / "c.csv", n_pos=60, n_neg=40)
    ids = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        stages_data.prepare(data_params(tmp_path / name, data_path=str(path), split_seed=seed))
        ids[name] = data_store.load_splits(tmp_path / name)["test"]["id"].tolist()
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]


def test_prepare_synthetic_writes_the_documented_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    card = stages_data.prepare(data_params(run_dir, synthetic_n=300, synthetic_seed=1, max_len=64))
    files = {p.name for p in (run_dir / "data").iterdir()}
    assert files == {"raw.csv", "raw_rationales.jsonl", "train.csv", "val.csv", "test.csv", "rationales.jsonl",
                     "data_card.json", "vocab.json", "classes.json"}
    assert card == data_store.load_data_card(run_dir)
    keys = {"source", "n_raw", "n_dropped_blank_label", "n_dropped_empty_text", "n_duplicates_removed", "n_train",
            "n_val", "n_test", "majority_rate", "majority_label", "label_rate_by_split", "text_template", "max_len",
            "truncated_share", "split_seed", "val_frac", "test_frac", "baselines", "bayes_accuracy",
            "visible_rule_accuracy", "cue_within_max_len_share"}
    assert keys <= set(card)
    assert card["source"] == "synthetic(n=300, seed=1)" and card["max_len"] == 64
    for model in ("majority", "tfidf_logreg"):
        for s in ("val", "test"):
            assert set(card["baselines"][model][s]) == {"accuracy", "macro_f1", "roc_auc"}
    assert card["baselines"]["majority"]["test"]["roc_auc"] == 0.5
    splits = data_store.load_splits(run_dir)
    assert all(list(df.columns) == data_schema.SPLIT_COLUMNS for df in splits.values())
    assert sum(len(df) for df in splits.values()) == card["n_raw"] - card["n_dropped_blank_label"] - card[
        "n_duplicates_removed"]
    row = splits["train"].iloc[0]
    assert isinstance(row["id"], str) and row["label"] in (0, 1)
    assert row["n_tokens"] == len(get_tokenizer()(row["text"])["input_ids"])
    assert card["truncated_share"]["train"] == round(float((splits["train"]["n_tokens"] > 64).mean()), 4)
    spans = data_rationales.load_rationales(run_dir)
    texts = pd.concat(splits.values()).set_index("id")["text"]
    assert set(spans) == set(texts.index)
    lines = [json.loads(x) for x in (run_dir / "data" / "rationales.jsonl").read_text().splitlines()]
    phrases = {(r["ID"], c["phrase"]) for r in map(json.loads, (run_dir / "data" / "raw_rationales.jsonl")
                                                    .read_text().splitlines()) for c in r["cues"]}
    for rec in lines:
        assert 0 < rec["rule_prob"] < 1
        for start, end, _cue in rec["spans"]:
            assert (int(rec["id"]), texts[rec["id"]][start:end]) in phrases


def test_figures_tables_and_examples(tmp_path):
    run_dir = tmp_path / "run"
    card = stages_data.prepare(data_params(run_dir, synthetic_n=200, synthetic_seed=2))
    splits = data_store.load_splits(run_dir)
    views_data.plot_label_balance(splits, run_dir)
    fig = views_data.plot_lengths(splits, 128, run_dir)
    views_data.plot_issue_areas(splits, run_dir)
    assert {p.name for p in (run_dir / "figures").iterdir()} == {
        "01_label_balance.png", "01_lengths.png", "01_issue_areas.png"}
    assert "truncated" in fig.axes[1].get_title()
    table = views_data.baselines_table(card)
    assert list(table.columns) == ["model", "split", "accuracy", "macro_f1", "roc_auc"]
    assert set(table["model"]) == {*data_baselines.BASELINE_LABELS.values(), data_baselines.BAYES_ORACLE,
                                   data_baselines.VISIBLE_RULE}
    examples = views_data.example_cases(splits, n=3, run_dir=run_dir)
    assert len(examples) == 3 and set(examples["label"]) == {0, 1} and "cues" in examples
    assert data_baselines.baselines(splits)["tfidf_logreg"]["val"] == {
        k: pytest.approx(v, abs=1e-4) for k, v in card["baselines"]["tfidf_logreg"]["val"].items()}


def test_visible_rule_ceiling_counts_only_the_cues_inside_max_len(tmp_path):
    from helpers.synthetic.generator import rule_prob

    # one case whose only deciding cue sits after 60 words: cut away at max_len 16, seen at 512
    text = "the parties met again " * 12 + "the trial judge refused to hear the petitioner's witnesses"
    start = text.index("the trial judge")
    case = pd.DataFrame({"text": [text], "issue_area": ["Civil Rights"]})
    rec = [{"spans": [[start, len(text), "hearing_denied"]]}]
    for max_len, seen in ((16, set()), (512, {"hearing_denied"})):
        inside = data_rationales._spans_inside(case, rec, max_len)
        assert inside == [[bool(seen)]]
        assert data_baselines._visible_rule_prob(case, rec, inside) == [rule_prob("Civil Rights", seen)]
    # through prepare: the oracle ignores max_len; the visible ceiling equals it when every cue is inside, and
    # falls below it when truncation hides cues
    short = stages_data.prepare(data_params(tmp_path / "short", synthetic_n=300, synthetic_seed=1, max_len=12))
    long = stages_data.prepare(data_params(tmp_path / "long", synthetic_n=300, synthetic_seed=1, max_len=512))
    assert short["bayes_accuracy"] == long["bayes_accuracy"]
    assert long["cue_within_max_len_share"] == 1.0 and long["visible_rule_accuracy"] == long["bayes_accuracy"]
    assert short["cue_within_max_len_share"] < 0.5
    assert np.mean(list(short["visible_rule_accuracy"].values())) < np.mean(list(short["bayes_accuracy"].values()))


def test_absolute_split_sizes_and_the_synthetic_transfer_pool(tmp_path):
    run_dir = tmp_path / "run"
    card = stages_data.prepare(data_params(run_dir, synthetic_n=600, synthetic_seed=3, max_len=48, val_n=120,
                                           test_n=300, synthetic_transfer_n=200))
    assert abs(card["n_val"] - 120) <= 2 and abs(card["n_test"] - 300) <= 2
    transfer = data_store.load_transfer(run_dir)
    assert card["n_transfer"] == len(transfer) > 150 and list(transfer.columns) == ["id", "text", "issue_area",
                                                                                   "n_tokens"]
    assert transfer["id"].str.startswith("T").all() and transfer["id"].is_unique
    labelled = pd.concat(data_store.load_splits(run_dir).values())
    key = lambda t: t.str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()  # noqa: E731
    assert not set(key(transfer["text"])) & set(key(labelled["text"]))  # no near-duplicate of a labelled case
    assert "label" not in transfer.columns and "first_party_winner" not in transfer.columns
    truth = pd.read_csv(run_dir / "data" / "transfer_truth.csv", dtype={"id": str})
    assert set(truth["id"]) <= set(transfer["id"]) and set(truth["label"]) <= {0, 1}
    vocab = data_store.load_vocabulary(run_dir)
    used = {i for t in list(labelled["text"]) + list(transfer["text"])
            for i in get_tokenizer()(t, truncation=True, max_length=48)["input_ids"]}
    assert used <= set(vocab) and {0, 100, 101, 102, 103} <= set(vocab) and card["vocabulary_size"] == len(vocab)


def test_transfer_csv_labels_are_ignored_and_sizes_too_large_are_refused(tmp_path):
    path = write_cases(tmp_path / "c.csv", n_pos=60, n_neg=40)
    pool = tmp_path / "pool.csv"
    pd.DataFrame([{"ID": 9000 + i, "first_party": f"Gamma{i}", "second_party": f"Delta{i}",
                   "facts": f"<p>Pool case {i} about a lease of barley.</p>", "first_party_winner": ""}
                  for i in range(10)] + [{"ID": 100, "first_party": "Alpha0", "second_party": "Beta0",
                                          "facts": "<p>Case 0 concerns contract number 0 and a dispute over wheat.</p>",
                                          "first_party_winner": "TRUE"}]).to_csv(pool, index=False)
    card = stages_data.prepare(data_params(tmp_path / "run", data_path=str(path), transfer_path=str(pool)))
    assert card["n_transfer"] == 10 and card["transfer_source"].endswith("pool.csv")
    assert card["n_transfer_dropped_overlap"] == 1  # a copy of a labelled case never enters the pool
    assert not (tmp_path / "run" / "data" / "transfer_truth.csv").exists()
    with pytest.raises(core_errors.DataError, match="val_n"):
        stages_data.prepare(data_params(tmp_path / "run2", data_path=str(path), val_n=60, test_n=40))
    assert not (tmp_path / "run2" / "data").exists()


def test_a_near_duplicate_group_with_both_labels_stays_in_one_split():
    # 60 single-case groups per label plus 12 groups holding cases of both labels (conflicting duplicates)
    labels, groups = [], []
    for c in (0, 1):
        for i in range(60):
            labels.append(c)
            groups.append(f"solo-{c}-{i}")
    for g in range(12):
        for c in (0, 1, g % 2):
            labels.append(c)
            groups.append(f"mixed-{g}")
    labels, groups = pd.Series(labels), pd.Series(groups)
    for seed in range(5):
        split = data_splits.stratified_group_split(labels, groups, val_frac=0.2, test_frac=0.2, seed=seed)
        assert split.notna().all() and set(split) == {"train", "val", "test"}
        per_group = split.groupby(groups).nunique()
        assert (per_group == 1).all(), per_group[per_group > 1]
        for name in ("train", "val", "test"):
            assert set(labels[split == name]) == {0, 1}
