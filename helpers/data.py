"""Load, clean, validate and split a JUSTICE-schema csv; score baselines; write run_dir/data/* and stage-01 figures."""
from __future__ import annotations

import html
import io
import json
import math
import re
import shutil
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from helpers.synthetic import generate_justice_csv, rationales_path
from helpers.tokenization import get_tokenizer, tokenize

from .config import MIN_MAX_LEN
from .evaluation import safe_auc
from .run_folder import save_figure as _save

SPLITS = ("train", "val", "test")
TRANSFER = "transfer"  # key of the unlabelled transfer pool next to the splits (see load_cases)
REQUIRED_COLUMNS = ("first_party", "second_party", "facts", "first_party_winner")
TEMPLATE_FIELDS = ("first_party", "second_party", "facts", "term", "issue_area", "name")
LEAKING_COLUMNS = ("majority_vote", "minority_vote", "decision_type", "disposition", "first_party_winner")
LABEL_VALUES = {"TRUE": 1, "True": 1, "true": 1, "1": 1, "1.0": 1,
                "FALSE": 0, "False": 0, "false": 0, "0": 0, "0.0": 0}
SPLIT_COLUMNS = ["id", "text", "label", "first_party", "second_party", "issue_area", "term", "n_words", "n_tokens"]
TFIDF_C_GRID = (0.1, 1.0, 10.0, 100.0)
OUTCOME = {0: "second party wins", 1: "first party wins"}
# The synthetic data's two ceilings, as every table names them: the generator's rule on its own inputs (an oracle that
# knows every cue and the issue area), and the same rule on the cues inside the first max_len tokens (what the text a
# model reads can support; cues truncated away cannot count).
BAYES_ORACLE = "Bayes (oracle on generator inputs)"
VISIBLE_RULE = "rule on the cues within max_len"
_BLOCK_TAG = re.compile(r"</?(p|br|div|li|ul|ol|h[1-6]|blockquote|tr|td|table)\b[^>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"<[^>]+>")


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and the problem."""


def clean_facts(html_text: str) -> str:
    """Plain text from HTML facts: tags removed, entities unescaped, whitespace collapsed."""
    if not isinstance(html_text, str):
        return ""
    text = _ANY_TAG.sub("", _BLOCK_TAG.sub(" ", html_text))
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _clean_field(value: object) -> str:
    return clean_facts(value) if isinstance(value, str) else ""


def check_template(text_template: str) -> list[str]:
    """Fields named by text_template; raises ValueError for unknown or outcome-leaking fields."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text_template) if f is not None]
    except ValueError as err:
        raise ValueError(f"text_template {text_template!r} is not a valid format string: {err}") from err
    leaking = [f for f in fields if f in LEAKING_COLUMNS]
    if leaking:
        raise ValueError(f"text_template {text_template!r} names {leaking}, which reveal the outcome and must "
                         f"never reach the model; allowed fields: {list(TEMPLATE_FIELDS)}")
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise ValueError(f"text_template {text_template!r} names unknown field(s) {unknown}; "
                         f"allowed fields: {list(TEMPLATE_FIELDS)}")
    if not fields:
        raise ValueError(f"text_template {text_template!r} names no field; use e.g. '{{facts}}'")
    return fields


def _check_params(val_frac: float, test_frac: float, max_len: int) -> None:
    for name, frac in (("val_frac", val_frac), ("test_frac", test_frac)):
        if not 0 < frac < 1:
            raise ValueError(f"{name} must be in (0, 1), got {frac}")
    if val_frac + test_frac >= 1:
        raise ValueError(f"val_frac + test_frac must be below 1 to leave training cases, got {val_frac + test_frac}")
    if int(max_len) < MIN_MAX_LEN:
        raise ValueError(f"max_len must be at least {MIN_MAX_LEN} tokens, got {max_len}")


def read_justice_csv(path: Path) -> pd.DataFrame:
    """The csv at path as strings (blanks kept as ''), or DataError saying why it cannot be read."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a CSV file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: file is empty")
    if b"\x00" in raw:
        raise DataError(f"{path}: not a CSV text file (binary content with NUL bytes: a spreadsheet, an image, "
                        "or UTF-16 text?)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                        "re-save the file as UTF-8") from err
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise DataError(f"{path}: could not be parsed as CSV: {err}") from err
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        hint = " (is it a comma-separated CSV?)" if len(df.columns) <= 1 else ""
        raise DataError(f"{path}: required column(s) missing: {missing}; found {list(df.columns)[:20]}{hint}")
    return df.drop(columns=[c for c in df.columns if c == "" or c.startswith("Unnamed: ")])


def parse_labels(series: pd.Series, path: str | Path) -> pd.Series:
    """first_party_winner as nullable 0/1 (NA where blank); DataError listing values outside the accepted set."""
    def norm(v: object) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (bool, np.bool_)):
            return "True" if v else "False"
        return str(v).strip()

    values = [norm(v) for v in series]
    bad = [(i + 1, v) for i, v in enumerate(values) if v and v not in LABEL_VALUES]
    if bad:
        shown = ", ".join(f"row {r}: {v!r}" for r, v in bad[:5])
        raise DataError(f"{path}: {len(bad)} label(s) in first_party_winner outside the accepted set "
                        f"{sorted(set(LABEL_VALUES))} (rows counted from 1 after the header): {shown}")
    return pd.Series([LABEL_VALUES[v] if v else pd.NA for v in values], index=series.index, dtype="Int64")


def _group_keys(texts: pd.Series) -> pd.Series:
    """Near-duplicate key: lower case, punctuation and whitespace runs collapsed."""
    return texts.str.lower().str.replace(r"[\W_]+", " ", regex=True).str.strip()


def _check_class_sizes(labels: pd.Series, groups: pd.Series, path: str | Path) -> None:
    counts = {c: int((labels == c).sum()) for c in (0, 1)}
    n_groups = {c: int(groups[labels == c].nunique()) for c in (0, 1)}
    if min(n_groups.values()) < 3:
        detail = "; ".join(f"label {c} ({OUTCOME[c]}): {counts[c]} case(s) in {n_groups[c]} distinct text(s)"
                           for c in (0, 1))
        raise DataError(f"{path}: too few cases of a class to split: {detail}; a stratified train/val/test "
                        "split needs at least 3 distinct cases of each class (one per split)")


def stratified_group_split(labels: pd.Series, groups: pd.Series, val_frac: float, test_frac: float,
                           seed: int) -> pd.Series:
    """Split name per row: stratified by label, near-duplicate groups never straddling splits."""
    first = pd.DataFrame({"label": labels.to_numpy(), "group": groups.to_numpy()}).drop_duplicates("group")
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = groups.value_counts()
    assign: dict[str, str] = {}
    for c in (0, 1):
        keys = first.loc[first["label"] == c, "group"].to_numpy()
        keys = keys[rng.permutation(len(keys))]
        n_c = int(sizes[keys].sum())
        targets = {"val": max(1, round(n_c * val_frac)), "test": max(1, round(n_c * test_frac))}
        filled = {"val": 0, "test": 0}
        for i, key in enumerate(keys):
            left = len(keys) - i - 1
            if filled["val"] < targets["val"] and left >= 2 - (filled["test"] > 0):
                name = "val"
            elif filled["test"] < targets["test"] and left >= 1:
                name = "test"
            else:
                name = "train"
            assign[key] = name
            if name != "train":
                filled[name] += int(sizes[key])
    return groups.map(assign)


def _metrics(y: np.ndarray, pred: np.ndarray, score: np.ndarray | None) -> dict:
    """accuracy, macro-F1 and ROC-AUC (of `score`, else of the hard predictions: 0.5 for a constant predictor;
    NaN, written as null, when the split holds one class), computed as for the models (evaluation.safe_auc)."""
    return {"accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "roc_auc": safe_auc(y, pred if score is None else score)}


def _tfidf_logreg(splits: dict[str, pd.DataFrame]) -> tuple[dict, float]:
    """TF-IDF word 1-2 grams + logistic regression: C picked on val accuracy; metrics on val and test."""
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x_train = vec.fit_transform(splits["train"]["text"])
    xs = {s: vec.transform(splits[s]["text"]) for s in ("val", "test")}
    ys = {s: splits[s]["label"].to_numpy(int) for s in SPLITS}
    best = None
    for c in TFIDF_C_GRID:
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, ys["train"])
        acc = accuracy_score(ys["val"], model.predict(xs["val"]))
        if best is None or acc > best[0]:
            best = (acc, c, model)
    _, c, model = best
    out = {s: _metrics(ys[s], model.predict(xs[s]), model.predict_proba(xs[s])[:, 1]) for s in ("val", "test")}
    return out, c


def _majority_label(train: pd.DataFrame) -> int:
    return int(train["label"].mean() > 0.5)


def _majority(splits: dict[str, pd.DataFrame]) -> dict:
    """Majority-class baseline (the train majority label) scored on val and test."""
    major = _majority_label(splits["train"])
    return {s: _metrics(splits[s]["label"].to_numpy(int), np.full(len(splits[s]), major), None)
            for s in ("val", "test")}


def baselines(splits: dict[str, pd.DataFrame]) -> dict:
    """Majority-class and TF-IDF + logistic-regression baselines scored on val and test."""
    return {"majority": _majority(splits), "tfidf_logreg": _tfidf_logreg(splits)[0]}


def _round(obj: object) -> object:
    if isinstance(obj, float):
        return round(obj, 4) if math.isfinite(obj) else None  # JSON has no NaN: undefined is null
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def _load_side_rationales(csv_path: Path) -> dict[str, dict] | None:
    side = rationales_path(csv_path)
    if not side.is_file():
        return None
    records = [json.loads(line) for line in side.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {str(r["ID"]): r for r in records}


def _spans(cases: pd.DataFrame, side: dict[str, dict], side_path: Path, uses_facts: bool) -> list[dict]:
    """Rationale char spans of each case's cue phrases, located in its model text."""
    out = []
    for case_id, text in zip(cases["id"], cases["text"]):
        rec = side.get(case_id)
        if rec is None:
            raise DataError(f"{side_path}: no rationale record for case ID {case_id}")
        spans = []
        for cue in rec["cues"]:
            start = text.find(cue["phrase"])
            if start < 0:
                if uses_facts:
                    raise DataError(f"{side_path}: cue phrase {cue['phrase']!r} not found in case {case_id}")
                continue
            end = start + len(cue["phrase"])
            assert text[start:end] == cue["phrase"]
            spans.append([start, end, cue["cue"]])
        out.append({"id": case_id, "spans": sorted(spans), "rule_prob": rec["rule_prob"]})
    return out


def _spans_inside(cases: pd.DataFrame, rationales: list[dict], max_len: int) -> list[list[bool]]:
    """Per case and rationale span: does its last character fall inside the first max_len tokens ([CLS]/[SEP]
    counted), i.e. can a model reading max_len tokens see that cue?"""
    tok = get_tokenizer()
    enc = tok(list(cases["text"]), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    out = []
    for offsets, rec in zip(enc["offset_mapping"], rationales):
        starts = np.array([s for s, _ in offsets])
        out.append([bool((starts < end).sum() <= max_len - 2) for _, end, _ in rec["spans"]])
    return out


def _cue_within_share(inside: list[list[bool]]) -> float:
    """Share of rationale spans a model reading max_len tokens sees."""
    flat = [x for case in inside for x in case]
    return sum(flat) / len(flat) if flat else float("nan")


def _visible_rule_prob(cases: pd.DataFrame, rationales: list[dict], inside: list[list[bool]]) -> list[float]:
    """The generator's rule on what survives truncation: p(label 1) from the issue area and the deciding cues whose
    span lies inside the first max_len tokens (cues cut away count as absent)."""
    from .synthetic import rule_prob

    return [rule_prob(area, {cue for (_, _, cue), seen in zip(rec["spans"], ins) if seen})
            for area, rec, ins in zip(cases["issue_area"], rationales, inside)]


def _model_texts(df: pd.DataFrame, path: Path, text_template: str, id_prefix: str = "") -> pd.DataFrame:
    """id, model text and the cleaned party/area/term columns of every row with non-empty facts."""
    fields = check_template(text_template)
    absent = [f for f in fields if f not in df.columns]
    if absent:
        raise DataError(f"{path}: text_template {text_template!r} names column(s) {absent} the file lacks")
    cols = {f: df[f].map(_clean_field) if f in df.columns else pd.Series("", index=df.index)
            for f in TEMPLATE_FIELDS if f != "facts"}
    cols["facts"] = df["facts"]
    text = pd.Series([re.sub(r"\s+", " ", text_template.format(**{f: cols[f][i] for f in fields})).strip()
                      for i in df.index], index=df.index, dtype=object)
    ids = df["ID"].map(str).str.strip() if "ID" in df.columns else pd.Series("", index=df.index)
    ids = pd.Series([id_prefix + (v or f"row{i + 1}") for i, v in zip(range(len(df)), ids)], index=df.index)
    out = pd.DataFrame({"id": ids, "text": text, "first_party": cols["first_party"],
                        "second_party": cols["second_party"], "issue_area": cols["issue_area"], "term": cols["term"]})
    return out[out["text"] != ""]


def _build_cases(df: pd.DataFrame, path: Path, text_template: str) -> tuple[pd.DataFrame, dict]:
    """Cleaned, labelled, deduplicated cases with their model text, and the drop counts."""
    check_template(text_template)
    labels = parse_labels(df["first_party_winner"], path)
    counts = {"n_raw": len(df), "n_dropped_blank_label": int(labels.isna().sum())}
    df = df.assign(label=labels)[labels.notna()]
    facts = df["facts"].map(clean_facts)
    counts["n_dropped_empty_text"] = int((facts == "").sum())
    df = df.assign(facts=facts)[facts != ""]
    cases = _model_texts(df, path, text_template)
    cases.insert(2, "label", df.loc[cases.index, "label"].astype(int))
    dup = cases["text"].duplicated(keep="first")
    counts["n_duplicates_removed"] = int(dup.sum())
    cases = cases[~dup].reset_index(drop=True)
    if cases.empty:
        raise DataError(f"{path}: no usable rows left after cleaning ({counts['n_raw']} raw rows, "
                        f"{counts['n_dropped_blank_label']} with a blank label, "
                        f"{counts['n_dropped_empty_text']} with empty facts)")
    seen: dict[str, int] = {}
    unique_ids = []
    for v in cases["id"]:  # a repeated ID gets a stable suffix so every case stays addressable
        seen[v] = seen.get(v, 0) + 1
        unique_ids.append(v if seen[v] == 1 else f"{v}-{seen[v]}")
    cases["id"] = unique_ids
    return cases, counts


def _build_transfer(df: pd.DataFrame, path: Path, text_template: str, labelled_groups: set[str]) -> tuple[
        pd.DataFrame, dict]:
    """Unlabelled transfer cases (any label column is ignored): cleaned, deduplicated, disjoint from the labelled
    cases' near-duplicate groups (a transfer case must never be a copy of a validation or test case)."""
    facts = df["facts"].map(clean_facts)
    df = df.assign(facts=facts)[facts != ""]
    cases = _model_texts(df, path, text_template, id_prefix="T")
    groups = _group_keys(cases["text"])
    overlap = groups.isin(labelled_groups)
    dup = groups.duplicated(keep="first") & ~overlap
    counts = {"n_transfer_raw": len(facts), "n_transfer_dropped_empty_text": int((facts == "").sum()),
              "n_transfer_dropped_overlap": int(overlap.sum()), "n_transfer_duplicates_removed": int(dup.sum())}
    cases = cases[~overlap & ~dup].reset_index(drop=True)
    return cases, counts


def write_vocabulary(folder: Path, texts: list[str], max_len: int) -> list[int]:
    """Wordpiece ids the run's texts use within max_len (+ specials) -> folder/vocab.json."""
    from .models import vocabulary_ids  # local import: the data stage itself needs no model code

    ids = vocabulary_ids(tokenize(texts, max_len, verbose=False)["input_ids"])
    (folder / "vocab.json").write_text(json.dumps({"max_len": int(max_len), "n": len(ids), "ids": ids}) + "\n",
                                       encoding="utf-8")
    return ids


def load_vocabulary(run_dir: str | Path) -> list[int]:
    """The wordpiece ids written by prepare() (data/vocab.json)."""
    return json.loads((Path(run_dir) / "data" / "vocab.json").read_text(encoding="utf-8"))["ids"]


def load_transfer(run_dir: str | Path) -> pd.DataFrame | None:
    """The unlabelled transfer cases (data/transfer.csv: id, text, n_tokens), or None when the run has none."""
    path = Path(run_dir) / "data" / "transfer.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"id": str, "text": str, "n_tokens": int}, keep_default_na=False)


def _sizes_as_fractions(n: int, val_n: int, test_n: int, val_frac: float, test_frac: float,
                        path: str | Path) -> tuple[float, float]:
    """val/test fractions from absolute sizes (0 keeps the fraction)."""
    if val_n or test_n:
        need = (val_n or round(n * val_frac)) + (test_n or round(n * test_frac))
        if need >= n - 10:
            raise DataError(f"{path}: {n} usable cases cannot hold val_n={val_n} and test_n={test_n} and leave "
                            f"training cases; lower val_n/test_n or add cases")
    return (val_n / n if val_n else val_frac), (test_n / n if test_n else test_frac)


def prepare(run_dir: str | Path, *, data_path: str = "", synthetic_n: int = 1600, synthetic_seed: int = 7,
            text_template: str = "{first_party} v. {second_party}. {facts}", val_frac: float = 0.2,
            test_frac: float = 0.2, split_seed: int = 42, max_len: int = 128, val_n: int = 0, test_n: int = 0,
            transfer_path: str = "", synthetic_transfer_n: int = 0) -> dict:
    """Load (or generate) the cases, clean, split, score baselines; write run_dir/data/*; return the data card.

    Args:
        val_n, test_n: absolute validation/test sizes (0: use val_frac/test_frac of the usable cases).
        transfer_path: a JUSTICE-schema csv whose rows become the unlabelled transfer pool (labels ignored).
        synthetic_transfer_n: with the synthetic source and no transfer_path, generate this many unlabelled
            transfer cases (their true labels go to data/transfer_truth.csv for analysis only).
    """
    _check_params(val_frac, test_frac, max_len)
    check_template(text_template)
    run_dir = Path(run_dir).resolve()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-data-", dir=run_dir.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the run folder is meant to be shared and read
    try:
        if data_path == "":
            path = staging / "raw.csv"
            generate_justice_csv(path, synthetic_n, synthetic_seed)
            source = f"synthetic(n={synthetic_n}, seed={synthetic_seed})"
        else:
            path = Path(data_path).expanduser().resolve()
            source = str(path)
        cases, counts = _build_cases(read_justice_csv(path), path, text_template)
        groups = _group_keys(cases["text"])
        _check_class_sizes(cases["label"], groups, path)
        val_frac, test_frac = _sizes_as_fractions(len(cases), val_n, test_n, val_frac, test_frac, path)
        cases["split"] = stratified_group_split(cases["label"], groups, val_frac, test_frac, split_seed).to_numpy()
        cases["n_words"] = cases["text"].str.split().str.len()
        enc = get_tokenizer()(list(cases["text"]), add_special_tokens=True, verbose=False)
        cases["n_tokens"] = [len(ids) for ids in enc["input_ids"]]
        splits = {s: cases.loc[cases["split"] == s, SPLIT_COLUMNS].reset_index(drop=True) for s in SPLITS}

        tfidf, tfidf_c = _tfidf_logreg(splits)
        major = _majority_label(splits["train"])
        card: dict = {
            "source": source, **counts,
            **{f"n_{s}": len(splits[s]) for s in SPLITS},
            "majority_rate": float((splits["train"]["label"] == major).mean()),
            "majority_label": major,
            "label_rate_by_split": {s: float(splits[s]["label"].mean()) for s in SPLITS},
            "text_template": text_template, "max_len": int(max_len),
            "truncated_share": {s: float((splits[s]["n_tokens"] > max_len).mean()) for s in SPLITS},
            "split_seed": split_seed, "val_frac": val_frac, "test_frac": test_frac, "val_n": val_n, "test_n": test_n,
            "baselines": {"majority": _majority(splits), "tfidf_logreg": tfidf},
            "tfidf_logreg_C": tfidf_c,
        }
        side = _load_side_rationales(path)
        rationales: list[dict] = []
        if side is not None:
            ordered = pd.concat([splits[s] for s in SPLITS], ignore_index=True)
            rationales = _spans(ordered, side, rationales_path(path), "facts" in check_template(text_template))
            inside = _spans_inside(ordered, rationales, max_len)
            # bayes_accuracy is an oracle: the rule on the generator's own inputs (every cue, however far into the
            # text); visible_rule_accuracy applies it to the cues inside max_len tokens, the text a model sees.
            for key, probs in (("bayes_accuracy", [r["rule_prob"] for r in rationales]),
                               ("visible_rule_accuracy", _visible_rule_prob(ordered, rationales, inside))):
                prob = dict(zip(ordered["id"], probs))
                card[key] = {s: float(((splits[s]["id"].map(prob) > 0.5).astype(int) == splits[s]["label"]).mean())
                             for s in SPLITS}
            card["cue_within_max_len_share"] = _cue_within_share(inside)
        transfer, truth = None, None
        if transfer_path or (data_path == "" and synthetic_transfer_n > 0):
            if transfer_path:
                t_path = Path(transfer_path).expanduser().resolve()
                t_raw = read_justice_csv(t_path)
                card["transfer_source"] = str(t_path)
            else:
                from .synthetic import generate_cases

                t_path = staging / "transfer_raw.csv"
                t_raw, _ = generate_cases(synthetic_transfer_n, synthetic_seed + 1)
                t_raw = t_raw.astype(str)
                card["transfer_source"] = f"synthetic(n={synthetic_transfer_n}, seed={synthetic_seed + 1})"
            transfer, t_counts = _build_transfer(t_raw, t_path, text_template, set(groups))
            if not transfer_path:  # the generator's labels, kept for analysis only, never read by a model
                labels_by_id = dict(zip("T" + t_raw["ID"].astype(str).str.strip(), t_raw["first_party_winner"]))
                truth = pd.DataFrame({"id": transfer["id"], "label": transfer["id"].map(labels_by_id)})
                truth = truth[truth["label"] != ""].assign(label=lambda d: (d["label"] == "TRUE").astype(int))
            transfer["n_tokens"] = [len(i) for i in get_tokenizer()(list(transfer["text"]), verbose=False)["input_ids"]]
            card.update(t_counts, n_transfer=len(transfer))
        else:
            card["n_transfer"] = 0
        texts = [t for s in SPLITS for t in splits[s]["text"]] + ([] if transfer is None else list(transfer["text"]))
        card["vocabulary_size"] = len(write_vocabulary(staging, texts, max_len))
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
        _swap_into_place(staging, run_dir / "data")
        return card
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap_into_place(staging: Path, target: Path) -> None:
    """Replace target with staging in two renames, so a reader sees the old or the new folder, never a mix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}-old-{staging.name}")
        target.rename(backup)
    staging.rename(target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def load_splits(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The train/val/test cases written by prepare()."""
    dtypes = {"id": str, "text": str, "label": int, "first_party": str, "second_party": str,
              "issue_area": str, "term": str, "n_words": int, "n_tokens": int}
    return {s: pd.read_csv(Path(run_dir) / "data" / f"{s}.csv", dtype=dtypes, keep_default_na=False)
            for s in SPLITS}


def load_cases(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The labelled splits plus, when the run has one, the unlabelled transfer pool under TRANSFER."""
    cases = load_splits(run_dir)
    transfer = load_transfer(run_dir)
    if transfer is not None:
        cases[TRANSFER] = transfer
    return cases


def load_data_card(run_dir: str | Path) -> dict:
    """The data card written by prepare()."""
    return json.loads((Path(run_dir) / "data" / "data_card.json").read_text(encoding="utf-8"))


def load_rationales(run_dir: str | Path) -> dict[str, list[tuple[int, int, str]]]:
    """Case id -> [(start, end, cue)] char spans in its text; {} when the data has no rationales."""
    path = Path(run_dir) / "data" / "rationales.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rec = json.loads(line)
            out[str(rec["id"])] = [(int(a), int(b), str(c)) for a, b, c in rec["spans"]]
    return out


def plot_label_balance(splits: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> Figure:
    """Cases per outcome in each split, with the first-party win rate."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = np.arange(len(SPLITS))
    for k, c in enumerate((0, 1)):
        counts = [int((splits[s]["label"] == c).sum()) for s in SPLITS]
        bars = ax.bar(x + (k - 0.5) * 0.38, counts, width=0.38, label=f"{c}: {OUTCOME[c]}")
        ax.bar_label(bars, fontsize=9)
    ax.set_xticks(x, [f"{s}\n(first party wins {splits[s]['label'].mean():.0%})" for s in SPLITS])
    ax.set_xlabel("split")
    ax.set_ylabel("cases")
    ax.set_title("Outcome balance per split (stratified)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.2)
    ax.legend(title="label")
    return _save(fig, run_dir, "01_label_balance.png")


def plot_lengths(splits: dict[str, pd.DataFrame], max_len: int, run_dir: str | Path | None = None) -> Figure:
    """Case length in words and in WordPiece tokens, with the truncation point."""
    cases = pd.concat(list(splits.values()), ignore_index=True)
    truncated = float((cases["n_tokens"] > max_len).mean())
    fig = Figure(figsize=(11, 4))
    ax_w, ax_t = fig.subplots(1, 2)
    ax_w.hist(cases["n_words"], bins=40, color="tab:gray")
    ax_w.axvline(cases["n_words"].median(), color="black", ls=":", label=f"median {cases['n_words'].median():.0f}")
    ax_w.set_xlabel("words per case (model text)")
    ax_w.set_ylabel("cases")
    ax_w.set_title("Length in words")
    ax_w.legend()
    ax_t.hist(cases["n_tokens"], bins=40, color="tab:blue")
    ax_t.axvline(max_len, color="tab:red", lw=2, label=f"max_len = {max_len}")
    ax_t.set_xlabel("WordPiece tokens per case (incl. [CLS], [SEP])")
    ax_t.set_ylabel("cases")
    ax_t.set_title(f"Length in tokens: {truncated:.1%} of cases truncated at {max_len}")
    ax_t.legend()
    return _save(fig, run_dir, "01_lengths.png")


def plot_issue_areas(splits: dict[str, pd.DataFrame], run_dir: str | Path | None = None) -> Figure:
    """Cases per issue area, split by outcome."""
    cases = pd.concat(list(splits.values()), ignore_index=True)
    area = cases["issue_area"].replace("", "(none)")
    table = pd.crosstab(area, cases["label"]).reindex(columns=[0, 1], fill_value=0)
    table = table.loc[table.sum(axis=1).sort_values().index]
    fig = Figure(figsize=(8, 0.35 * len(table) + 1.5))
    ax = fig.subplots()
    left = np.zeros(len(table))
    for c in (0, 1):
        ax.barh(table.index, table[c], left=left, label=f"{c}: {OUTCOME[c]}")
        left += table[c].to_numpy()
    for y, (total, wins) in enumerate(zip(left, table[1])):
        ax.text(total, y, f"  {wins / total:.0%} first-party wins", va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.35)
    ax.set_xlabel("cases (all splits)")
    ax.set_ylabel("issue area")
    ax.set_title("Issue areas and outcomes")
    ax.legend(title="label", loc="lower right")
    return _save(fig, run_dir, "01_issue_areas.png")


def example_cases(splits: dict[str, pd.DataFrame], n: int = 3, run_dir: str | Path | None = None) -> pd.DataFrame:
    """A few training cases of both outcomes, with their deciding cue phrases when rationales exist."""
    train = splits["train"].sample(frac=1.0, random_state=0)
    picks = [train[train["label"] == c] for c in (1, 0)]
    rows = pd.concat([picks[i % 2].iloc[[i // 2]] for i in range(n) if i // 2 < len(picks[i % 2])])
    out = rows[["id", "label", "issue_area", "n_tokens", "text"]].assign(outcome=rows["label"].map(OUTCOME))
    if run_dir is not None:
        spans = load_rationales(run_dir)
        if spans:
            out["cues"] = [", ".join(f"{cue}: '{t[a:b]}'" for a, b, cue in spans.get(i, []))
                           for i, t in zip(out["id"], out["text"])]
    return out.reset_index(drop=True)


def baselines_table(card: dict) -> pd.DataFrame:
    """The card's baselines (and, when known, the rule's oracle Bayes accuracy and its accuracy on the cues inside
    max_len) as one row per model and split."""
    rows = [{"model": m, "split": s, **card["baselines"][m][s]} for m in card["baselines"] for s in ("val", "test")]
    for key, name in (("bayes_accuracy", BAYES_ORACLE), ("visible_rule_accuracy", VISIBLE_RULE)):
        if key in card:
            rows += [{"model": name, "split": s, "accuracy": card[key][s]} for s in ("val", "test")]
    return pd.DataFrame(rows, columns=["model", "split", "accuracy", "macro_f1", "roc_auc"])
