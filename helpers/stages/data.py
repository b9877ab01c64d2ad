"""Stage 01: clean, validate and split a JUSTICE-schema csv (or the synthetic corpus), score the baselines."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from helpers.core.constants import SPLITS
from helpers.core.params import DataParams
from helpers.data.augment import augmented_pool
from helpers.data.baselines import (
    _cue_within_share,
    _majority,
    _majority_label,
    _tfidf_logreg,
    _visible_rule_prob,
)
from helpers.data.rationales import _load_side_rationales, _spans, _spans_inside
from helpers.data.schema import (
    OTHER,
    OUTCOME,
    REQUIRED_COLUMNS,
    SPLIT_COLUMNS,
    _build_cases,
    _build_transfer,
    _group_keys,
    check_template,
    label_column_for,
    read_justice_csv,
)
from helpers.data.splits import (
    _assign_classes,
    _check_class_sizes,
    _sizes_as_fractions,
    crossfit_split,
    stratified_group_split,
)
from helpers.data.store import _swap_into_place, write_classes, write_vocabulary
from helpers.models.tokenization import get_tokenizer, text_read
from helpers.synthetic.generator import generate_cases, generate_justice_csv, rationales_path


def _round(obj: object) -> object:
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None  # JSON has no NaN: undefined is null
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def prepare(p: DataParams) -> dict:
    """Load (or generate) the cases, clean, split, score baselines; write run_dir/data/*; return the data card.

    Args:
        task: `outcome` (first_party_winner, two classes) or `issue_area` (many classes, names mapped to ids in
            data/classes.json); `label_column` overrides the task's label column.
        rare_classes, min_class_count: many-class tasks only: classes with fewer usable cases than min_class_count
            (or fewer than 3 distinct texts) are merged into one class named Other (`merge`) or dropped (`drop`).
        val_n, test_n: absolute validation/test sizes (0: use val_frac/test_frac of the usable cases).
        transfer_path: a JUSTICE-schema csv whose rows become the unlabelled transfer pool (labels ignored).
        synthetic_transfer_n: with the synthetic source and no transfer_path, generate this many unlabelled
            transfer cases (their true labels go to data/transfer_truth.csv for analysis only).
    """
    val_frac, test_frac = p.val_frac, p.test_frac
    label_col = label_column_for(p.task, p.label_column)
    multi = p.task != "outcome"
    check_template(p.text_template, label_col if multi else None)
    run_dir = Path(p.run_dir).resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-data-", dir=run_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the run folder is meant to be shared and read
    try:
        if p.data_path == "":
            path = staging / "raw.csv"
            generate_justice_csv(path, p.synthetic_n, p.synthetic_seed, task=p.task, style=p.synthetic_style)
            style = "" if p.synthetic_style == "short" else f", style={p.synthetic_style}"
            source = f"synthetic(n={p.synthetic_n}, seed={p.synthetic_seed}{style})"
        else:
            path = Path(p.data_path).expanduser().resolve()
            source = str(path)
        cases, counts = _build_cases(read_justice_csv(path, label_col), path, p.text_template, p.task, label_col)
        groups = _group_keys(cases["text"])
        if multi:
            cases, groups, classes, class_info = _assign_classes(cases, groups, p.rare_classes, p.min_class_count, path)
        else:
            classes, class_info = [OUTCOME[0], OUTCOME[1]], {}
        _check_class_sizes(cases["label"], groups, path, classes)
        val_frac, test_frac = _sizes_as_fractions(len(cases), p.val_n, p.test_n, val_frac, test_frac, path)
        if p.cv_folds:  # cross-fitting: fold cv_fold is the test split (helpers.run.crossfit runs every fold)
            test_frac = 1 / p.cv_folds
            cases["split"] = crossfit_split(cases["label"], groups, p.cv_folds, p.cv_fold, val_frac,
                                            p.split_seed).to_numpy()
        else:
            cases["split"] = stratified_group_split(cases["label"], groups, val_frac, test_frac,
                                                    p.split_seed).to_numpy()
        cases["n_words"] = cases["text"].str.split().str.len()
        enc = get_tokenizer()(list(cases["text"]), add_special_tokens=True, verbose=False)
        cases["n_tokens"] = [len(ids) for ids in enc["input_ids"]]
        splits = {s: cases.loc[cases["split"] == s, SPLIT_COLUMNS].reset_index(drop=True) for s in SPLITS}

        tfidf, tfidf_c = _tfidf_logreg(splits)
        # the same baseline on the text the models read (the first max_len tokens): what truncation costs
        read = {s: splits[s].assign(text_read=text_read(list(splits[s]["text"]), p.max_len)) for s in SPLITS}
        tfidf_read, _ = _tfidf_logreg(read, "text_read")
        major = _majority_label(splits["train"])
        card: dict = {
            "source": source, **counts,
            **{f"n_{s}": len(splits[s]) for s in SPLITS},
            "majority_rate": float((splits["train"]["label"] == major).mean()),
            "majority_label": major,
            "task": p.task, "label_column": label_col, "classes": classes,
            **({"label_rate_by_split": {s: float(splits[s]["label"].mean()) for s in SPLITS}} if not multi else {}),
            "class_counts": {s: {classes[k]: int(n) for k, n in enumerate(
                np.bincount(splits[s]["label"].to_numpy(int), minlength=len(classes)))} for s in SPLITS},
            **class_info,
            "text_template": p.text_template, "max_len": int(p.max_len),
            "truncated_share": {s: float((splits[s]["n_tokens"] > p.max_len).mean()) for s in SPLITS},
            "split_seed": p.split_seed, "val_frac": val_frac, "test_frac": test_frac, "val_n": p.val_n,
            "test_n": p.test_n, **({"cv_folds": p.cv_folds, "cv_fold": p.cv_fold} if p.cv_folds else {}),
            "baselines": {"majority": _majority(splits), "tfidf_logreg": tfidf, "tfidf_logreg_read": tfidf_read},
            "tfidf_logreg_C": tfidf_c,
        }
        side = _load_side_rationales(path) if not multi else None  # the rationales explain the outcome only
        rationales: list[dict] = []
        if side is not None:
            ordered = pd.concat([splits[s] for s in SPLITS], ignore_index=True)
            rationales = _spans(ordered, side, rationales_path(path), "facts" in check_template(p.text_template, None))
            inside = _spans_inside(ordered, rationales, p.max_len)
            # bayes_accuracy is an oracle: the rule on the generator's own inputs (every cue, however far into the
            # text); visible_rule_accuracy applies it to the cues inside max_len tokens, the text a model sees.
            for key, probs in (("bayes_accuracy", [r["rule_prob"] for r in rationales]),
                               ("visible_rule_accuracy", _visible_rule_prob(ordered, rationales, inside))):
                prob = dict(zip(ordered["id"], probs))
                card[key] = {s: float(((splits[s]["id"].map(prob) > 0.5).astype(int) == splits[s]["label"]).mean())
                             for s in SPLITS}
            card["cue_within_max_len_share"] = _cue_within_share(inside)
        transfer, truth = None, None
        if p.transfer_path or p.transfer_augment or (p.data_path == "" and p.synthetic_transfer_n > 0):
            if not p.transfer_path and p.transfer_augment:  # from the training split alone, no labels kept
                transfer, t_counts = augmented_pool(splits, p.transfer_augment, list(read["train"]["text_read"]),
                                                    p.split_seed)
                t_counts["n_transfer_raw"] = p.transfer_augment
                card["transfer_source"] = (f"augmented from the training split (n={p.transfer_augment}: "
                                           f"{t_counts['transfer_augment_windows']} windows past the first "
                                           f"{p.max_len} tokens, {t_counts['transfer_augment_recombinations']} "
                                           f"recombinations)")
            elif p.transfer_path:
                t_path = Path(p.transfer_path).expanduser().resolve()
                t_raw = read_justice_csv(t_path, REQUIRED_COLUMNS[0] if multi else label_col)  # labels ignored
                card["transfer_source"] = str(t_path)
            else:
                t_path = staging / "transfer_raw.csv"
                t_raw, _ = generate_cases(p.synthetic_transfer_n, p.synthetic_seed + 1, task=p.task,
                                          style=p.synthetic_style)
                t_raw = t_raw.astype(str)
                card["transfer_source"] = f"synthetic(n={p.synthetic_transfer_n}, seed={p.synthetic_seed + 1})"
            if p.transfer_path or not p.transfer_augment:
                transfer, t_counts = _build_transfer(t_raw, t_path, p.text_template, set(groups),
                                                     label_col if multi else None)
            if not p.transfer_path and not p.transfer_augment:  # the generator's labels, for analysis only
                labels_by_id = dict(zip("T" + t_raw["ID"].astype(str).str.strip(), t_raw[label_col]))
                truth = pd.DataFrame({"id": transfer["id"], "label": transfer["id"].map(labels_by_id)})
                if multi:  # class ids as in data/classes.json (merged classes -> Other; dropped ones left out)
                    ids = {n: i for i, n in enumerate(classes)}
                    other = ids.get(OTHER)
                    merged = class_info.get("merged_into_other", {})
                    truth["label"] = [ids.get(v, other if v in merged else None) for v in truth["label"]]
                    truth = truth.dropna(subset=["label"]).astype({"label": int})
                else:
                    truth = truth[truth["label"] != ""].assign(label=lambda d: (d["label"] == "TRUE").astype(int))
            transfer["n_tokens"] = [len(i) for i in get_tokenizer()(list(transfer["text"]), verbose=False)["input_ids"]]
            card.update(t_counts, n_transfer=len(transfer))
        else:
            card["n_transfer"] = 0
        texts = [t for s in SPLITS for t in splits[s]["text"]] + ([] if transfer is None else list(transfer["text"]))
        card["vocabulary_size"] = len(write_vocabulary(staging, texts, p.max_len))
        card = _round(card)

        if transfer is not None:
            transfer[["id", "text", "issue_area", "n_tokens"]].to_csv(staging / "transfer.csv", index=False,
                                                                       lineterminator="\n")
            if truth is not None:
                truth.to_csv(staging / "transfer_truth.csv", index=False, lineterminator="\n")
            (staging / "transfer_raw.csv").unlink(missing_ok=True)
        for s in SPLITS:
            splits[s].to_csv(staging / f"{s}.csv", index=False, lineterminator="\n")
        if rationales:
            with open(staging / "rationales.jsonl", "w", encoding="utf-8", newline="\n") as fh:
                for rec in rationales:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        (staging / "data_card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        write_classes(staging, p.task, label_col, classes)
        _swap_into_place(staging, run_dir / "data")
        return card
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
