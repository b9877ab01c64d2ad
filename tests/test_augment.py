"""The transfer pool built from the training split alone (transfer_augment), and the corpus shaped like real data."""
from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import data_params

from helpers.data import augment
from helpers.data import store as data_store
from helpers.models.tokenization import get_tokenizer, text_read
from helpers.stages import data as stages_data
from helpers.synthetic.generator import JUSTICE_AREAS, generate_cases


def test_text_read_is_the_prefix_the_first_max_len_tokens_cover():
    text = "Alpha v. Beta. The tenant paid rent for nine years before the landlord sold the building."
    read = text_read([text], 8)[0]
    assert text.startswith(read) and len(read) < len(text)
    ids = get_tokenizer()(text, truncation=True, max_length=8)["input_ids"]
    assert get_tokenizer()(read)["input_ids"] == ids  # re-tokenising the prefix gives exactly the model's input


def test_windows_start_past_the_part_a_model_reads_and_keep_the_parties():
    sentences = [f"Sentence number {i} tells the story of the lease at issue in some detail." for i in range(12)]
    train = pd.DataFrame({"id": ["c1"], "first_party": ["Alpha"], "second_party": ["Beta"],
                          "text": ["Alpha v. Beta. " + " ".join(sentences)]})
    read = text_read(train["text"].tolist(), 32)[0]
    wins = augment.windows(train, [read])
    assert len(wins) >= 2 and [w[0] for w in wins] == [f"Ac1-w{k}" for k in range(len(wins))]
    for _, text in wins:
        assert text.startswith("Alpha v. Beta. ")
        body = text[len("Alpha v. Beta. "):]
        assert body not in read and body.split(" Sentence")[0] not in read  # nothing the model already read
    covered = " ".join(t[len("Alpha v. Beta. "):] for _, t in wins)
    assert sentences[-1] in covered  # the windows reach the end of the case


def test_near_duplicates_of_one_held_out_case_are_found_and_shared_boilerplate_is_not():
    held = ["the court held that the search of the car without a warrant violated the fourth amendment rights of "
            "the driver and suppressed the evidence found in the trunk",
            "a second unrelated case about taxes owed by a farm cooperative on grain sold across state lines in 1990"]
    copy = held[0].replace("driver", "motorist")
    mixed = ("the court held that the search of the car without a warrant was new. a second unrelated case about "
             "taxes owed by a farm cooperative on grain")
    fresh = "an entirely different story about a union election in a steel mill and the ballots counted twice"
    assert augment.near_duplicates([copy, mixed, fresh], held).tolist() == [True, False, False]


def test_the_augmented_pool_comes_from_training_cases_only(tmp_path):
    run_dir = tmp_path / "run"
    card = stages_data.prepare(data_params(run_dir, task="issue_area", synthetic_n=500, synthetic_seed=4, max_len=64,
                                           synthetic_style="justice", synthetic_transfer_n=0, transfer_augment=300,
                                           min_class_count=10))
    pool = data_store.load_transfer(run_dir)
    splits = data_store.load_splits(run_dir)
    assert card["n_transfer"] == len(pool) > 250 and pool["id"].is_unique and pool["id"].str.startswith("A").all()
    assert card["transfer_augment_windows"] > 0 and card["transfer_augment_recombinations"] > 0
    assert card["transfer_source"].startswith("augmented from the training split")
    train_ids = set(splits["train"]["id"].astype(str))
    sources = {p for i in pool["id"] for p in i[1:].split("-w")[0].split("+")}
    assert sources <= train_ids  # every view is made of training cases, never of validation or test cases
    held = [t for s in ("val", "test") for t in splits[s]["text"]]
    assert not augment.near_duplicates(pool["text"].tolist(), held).any()
    assert not (run_dir / "data" / "transfer_truth.csv").exists()  # nothing labelled it but the teacher, later


def test_the_justice_style_imitates_the_real_file_and_leaves_the_default_corpus_alone():
    short, _ = generate_cases(300, 11, "issue_area")
    again, _ = generate_cases(300, 11, "issue_area", "short")
    pd.testing.assert_frame_equal(short, again)  # the default style is the corpus it always was
    justice, _ = generate_cases(1500, 11, "issue_area", "justice")
    words = justice["facts"].str.replace(r"<[^>]+>", " ", regex=True).str.split().str.len()
    assert 150 < words.median() < 215  # the real file's median is about 155 words of facts
    shares = justice["issue_area"].replace("", np.nan).dropna().value_counts(normalize=True)
    assert abs(shares["Criminal Procedure"] - JUSTICE_AREAS["Criminal Procedure"]) < 0.04
    assert shares.iloc[-1] < 0.015  # small areas that a min_class_count of 40 merges at the real file's size


def test_tfidf_is_shown_on_the_full_text_and_on_what_the_models_read(tmp_path):
    card = stages_data.prepare(data_params(tmp_path / "run", task="issue_area", synthetic_n=600, synthetic_seed=2,
                                           max_len=32, synthetic_style="justice", min_class_count=10))
    full, read = card["baselines"]["tfidf_logreg"]["test"], card["baselines"]["tfidf_logreg_read"]["test"]
    assert read["accuracy"] < full["accuracy"]  # 32 tokens hold less of the topic than the whole facts
