"""Every parameter, declared once: its default, help text and check, grouped into one typed object per stage.

`profiles/default.yaml` and each notebook's `parameters` cell are renderings of these declarations
(`render_default_profile`, `render_parameters_cell`), kept identical by tests/test_repository.py. A stage entry
point takes its stage's object (`run_student_stage(StudentParams.from_globals(globals()))` in a notebook), so no
signature default can drift from the profile and no parameter is renamed between the profile and the code.
Checks here concern one value each; checks across parameters or against the model registry live in
helpers.config.validation.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from helpers.core.constants import ARMS, BEYOND_ARMS, LAUNCHERS, LOGIT_ARMS, MIN_MAX_LEN, PRECISIONS
from helpers.core.errors import ConfigError

P = TypeVar("P", bound="StageParams")
Check = Callable[[Any], str | None]  # None when the value is fine, else what it must be


# ---------------------------------------------------------------- checks (each returns None or what is expected)
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def positive_int(v: Any) -> str | None:
    return None if _is_int(v) and v > 0 else f"must be a positive integer, got {v!r}"


def non_negative_int(v: Any) -> str | None:
    return None if _is_int(v) and v >= 0 else f"must be an integer >= 0, got {v!r}"


def one_of(*choices: str) -> Check:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be {', '.join(choices[:-1])} or {choices[-1]}, got {v!r}"
    return check


def boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false, got {v!r}"


def text(v: Any) -> str | None:
    return None if isinstance(v, str) else f"must be a string, got {v!r}"


def fraction(v: Any) -> str | None:
    return None if _is_num(v) and 0 < v < 1 else f"must be in (0, 1), got {v!r}"


def seed_list(v: Any) -> str | None:
    if not (isinstance(v, list) and v and all(_is_int(s) for s in v)):
        return f"must be a non-empty list of integers, got {v!r}"
    return None if len(set(v)) == len(v) else "seeds must be distinct"


def seed_list_or_empty(v: Any) -> str | None:
    return None if v == [] else seed_list(v)


def lr_list(v: Any) -> str | None:
    ok = isinstance(v, list) and v and all(_is_num(x) and x > 0 for x in v)
    return None if ok else f"must be a non-empty list of learning rates > 0, got {v!r}"


def positive_number(v: Any) -> str | None:
    return None if _is_num(v) and v > 0 and math.isfinite(v) else f"must be > 0, got {v!r}"


def _all(*checks: Check) -> Check:
    def check(v: Any) -> str | None:
        return next((m for m in (c(v) for c in checks) if m), None)
    return check


# ---------------------------------------------------------------- one declaration
def param(default: Any, help: str, check: Check | None = None) -> Any:
    """A parameter's one declaration: default (the default profile's value), help text, and a one-value check."""
    meta = {"help": help, "check": check}
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class StageParams:
    """A stage's parameters: a frozen dataclass whose fields are exactly its notebook's `parameters` cell."""

    STAGE: ClassVar[str] = ""  # notebook number (01 .. 05)
    TITLE: ClassVar[str] = ""  # the section title in profiles/default.yaml

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            message = check(getattr(self, f.name)) if check else None
            if message:
                raise ConfigError(f"parameter {f.name}: {message}")
        for name, message in self._together():
            raise ConfigError(f"parameter {name}: {message}")

    def _together(self) -> list[tuple[str, str]]:
        """(parameter, what is wrong) for every failed check across this stage's parameters."""
        return []

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls: type[P], values: Mapping[str, Any], **overrides: Any) -> P:
        """The stage's fields taken from `values` (a resolved profile, or a notebook's globals()), then `overrides`.

        Names `values` lacks keep their declared default; names outside the stage are ignored.
        """
        names = set(cls.names())
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown parameter(s) {', '.join(unknown)}")
        picked = {k: v for k, v in values.items() if k in names}
        return cls(**{**picked, **overrides})

    @classmethod
    def from_globals(cls: type[P], namespace: Mapping[str, Any]) -> P:
        """The stage's parameters from a notebook's namespace (its `parameters` cell, as papermill injected it)."""
        missing = [n for n in cls.names() if n not in namespace]
        if missing:
            raise ConfigError(f"{cls.__name__}: the notebook defines no {', '.join(missing)} (its parameters cell)")
        return cls.from_mapping(namespace)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# ---------------------------------------------------------------- the parameters, by stage
# Shared groups come first; a stage's class combines the groups its notebook reads. Field order = profile order.
@dataclasses.dataclass(frozen=True, kw_only=True)
class RunFolderParams(StageParams):
    """What every stage reads: the run folder, CPU threads and the sequence length."""

    run_dir: str = param("runs/default", "run folder every stage reads and writes", text)
    threads: int = param(2, "torch CPU threads (0 keeps the torch default)", non_negative_int)
    max_len: int = param(64, "WordPiece tokens per case (truncation; the paper profile reads 256)",
                         _all(positive_int, lambda v: None if v >= MIN_MAX_LEN
                              else f"must be at least {MIN_MAX_LEN} tokens"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceParams(RunFolderParams):
    device: str = param("auto", "auto | cpu | cuda", one_of("auto", "cpu", "cuda"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingParams(DeviceParams):
    """What the teacher and the student stages share."""

    precision: str = param("auto", "auto | fp32 | bf16: auto means bf16 autocast where the hardware runs bf16 "
                                   "natively", one_of(*PRECISIONS))
    model_overrides: dict = param({}, "per spec name: a local checkpoint folder, or \"random\" "
                                      "(e.g. {Teacher_BERT: /models/bert})",
                                  lambda v: None if isinstance(v, dict) else "must be a mapping {spec name: "
                                                                             "folder|random}")
    batch_size: int = param(16, "training batch size (teacher and students)", positive_int)
    class_weighted: bool = param(False, "class-weighted cross-entropy for imbalanced data", boolean)
    selection_metric: str = param("macro_f1", "validation metric picking the best epoch or step (and the students' "
                                              "learning rate)", one_of("accuracy", "macro_f1", "roc_auc"))
    trim_vocab: bool = param(True, "teacher and students keep only the word-embedding rows the corpus uses (ids "
                                   "unchanged)", boolean)
    workers: int = param(2, "training runs side by side (CPU: teachers, students), each with threads / workers "
                            "threads", positive_int)
    launcher: str = param("inprocess", "inprocess | accelerate: each training run data-parallel under `accelerate "
                                       "launch` (docs/scale-out.md)", one_of(*LAUNCHERS))
    processes: int = param(0, "processes per training run with launcher accelerate (0: accelerate's config, else "
                              "per GPU)", non_negative_int)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BootstrapParams(StageParams):
    bootstrap_n: int = param(1000, "bootstrap resamples for confidence intervals", positive_int)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataParams(RunFolderParams):
    """Stage 01: the cases, their cleaning and splits."""

    STAGE: ClassVar[str] = "01"
    TITLE: ClassVar[str] = "data (01)"
    task: str = param("outcome", "outcome (first_party_winner, two classes) | issue_area (many classes, names in "
                                 "data/classes.json)", one_of("outcome", "issue_area"))
    label_column: str = param("", "empty: the task's label column (first_party_winner | issue_area); else a csv "
                                  "column", lambda v: None if isinstance(v, str)
                              else "must be a column name ('' = the task's own)")
    rare_classes: str = param("merge", "many-class tasks: merge rare classes into one class named Other, or drop "
                                       "their cases", one_of("merge", "drop"))
    min_class_count: int = param(30, "many-class tasks: a class with fewer usable cases than this is rare",
                                 lambda v: None if _is_int(v) and v >= 3
                                 else "must be an integer >= 3 (one case per split)")
    data_path: str = param("", "empty: generate the synthetic JUSTICE-schema corpus; else a justice.csv path", text)
    synthetic_n: int = param(3150, "synthetic labelled cases generated (train + val + test)", positive_int)
    synthetic_seed: int = param(7, "synthetic generator seed", lambda v: None if _is_int(v) else "must be an integer")
    synthetic_style: str = param("short", "short (the default corpus) | justice (the real JUSTICE file's lengths and "
                                          "class shares)", one_of("short", "justice"))
    synthetic_transfer_n: int = param(3000, "synthetic unlabelled transfer cases (labels withheld from every model)",
                                      non_negative_int)
    transfer_path: str = param("", "empty: the synthetic pool (or none for real data); else a csv whose labels are "
                                   "ignored", lambda v: None if isinstance(v, str)
                               else "must be a path string ('' = none)")
    transfer_augment: int = param(0, "transfer cases built from the training split alone (windows past what the "
                                     "models read, recombined sentences; 0: none; transfer_path wins)",
                                  non_negative_int)
    text_template: str = param("{first_party} v. {second_party}. {facts}", "model input built from the cleaned "
                                                                           "columns", text)
    val_frac: float = param(0.2, "share of cases in validation", fraction)
    test_frac: float = param(0.2, "share of cases in test", fraction)
    val_n: int = param(500, "validation cases (0: use val_frac)", non_negative_int)
    test_n: int = param(2000, "test cases (0: use test_frac)", non_negative_int)
    split_seed: int = param(42, "stratified split seed", lambda v: None if _is_int(v) else "must be an integer")
    cv_folds: int = param(0, "cross-fitting (`python -m helpers crossfit` sets it): the cases fall into this many "
                             "stratified folds and fold cv_fold is the test split (0: one split by test_n/test_frac)",
                          lambda v: None if _is_int(v) and (v == 0 or v >= 2) else "must be 0 or an integer >= 2")
    cv_fold: int = param(0, "with cv_folds: the fold held out as the test split (0 .. cv_folds - 1)",
                         non_negative_int)

    def _together(self) -> list[tuple[str, str]]:
        out = [("val_frac", "val_frac + test_frac must be < 1 (to leave training cases)")] \
            if self.val_frac + self.test_frac >= 1 and not self.cv_folds else []
        if self.cv_folds and self.cv_fold >= self.cv_folds:
            out.append(("cv_fold", f"must be below cv_folds ({self.cv_folds}): folds are numbered 0 .. "
                                   f"{self.cv_folds - 1}"))
        if self.cv_folds and self.test_n:
            out.append(("test_n", f"must be 0 with cv_folds {self.cv_folds}: the test split is one fold, a "
                                  f"1/{self.cv_folds} share of the cases"))
        if self.cv_folds and self.val_frac + 1 / self.cv_folds >= 1:
            out.append(("val_frac", "val_frac + 1/cv_folds must be < 1 (to leave training cases)"))
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherParams(TrainingParams):
    """Stage 02: the teacher and the teacher retrained with other seeds (the reference)."""

    STAGE: ClassVar[str] = "02"
    TITLE: ClassVar[str] = "teacher (02)"
    teacher: str = param("MiniLM_L6_Teacher", "model spec name (helpers.models.specs.REGISTRY)", text)
    teacher_epochs: int = param(4, "fine-tuning epochs (at most, with teacher_patience)", positive_int)
    teacher_lr: float = param(1.0e-4, "teacher learning rate", positive_number)
    teacher_patience: int = param(0, "epochs without validation improvement before a teacher stops (0: never; then "
                                     "teacher_epochs is the budget)", non_negative_int)
    teacher_seed: int = param(0, "teacher seed", lambda v: None if _is_int(v) else "must be an integer")
    reference_seeds: list = param([1, 2, 3], "the teacher retrained with these seeds: the teacher-vs-teacher "
                                             "reference of attribution agreement (04) and the teacher's seed spread "
                                             "([]: none; 04 then shows no reference)",
                                  seed_list_or_empty)

    def _together(self) -> list[tuple[str, str]]:
        if self.teacher_seed in self.reference_seeds:
            return [("reference_seeds", f"must not contain teacher_seed ({self.teacher_seed})")]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudentParams(TrainingParams, BootstrapParams):
    """Stage 03: every student in every arm."""

    STAGE: ClassVar[str] = "03"
    TITLE: ClassVar[str] = "students (03)"
    students: list = param(["S1_Third_2x384", "S5_Minimal_2x192"], "student spec names (the five-student run: "
                                                                   "profiles/full.yaml)",
                           lambda v: None if isinstance(v, list) and v else "must be a non-empty list")
    arms: list = param(list(LOGIT_ARMS), "training arms per student (chain: each student from the next larger; "
                                         "beyond logits: distilled_hidden, distilled_attention, "
                                         "distilled_attribution)",
                       lambda v: None if isinstance(v, list) and "independent" in v and set(v) <= set(ARMS)
                       else f"must be a list of {', '.join(ARMS)} that includes independent, got {v!r}")
    transfer_students: list = param(["S5_Minimal_2x192"], "students that get the transfer arms (empty list: all)",
                                    lambda v: None if isinstance(v, list) else "must be a list of student names")
    transfer_n: int = param(3000, "transfer cases the transfer arms use (at most the pool)", non_negative_int)
    student_max_passes: float = param(15, "at most this many passes over the labelled training cases per student run "
                                          "(every arm; early stopping on validation decides within it)",
                                      positive_number)
    student_max_steps: int = param(0, "a hard cap on a student run's optimizer steps (0: none, the passes decide)",
                                   non_negative_int)
    transfer_batch: int = param(16, "transfer cases added on top of each labelled batch in the transfer arms",
                                positive_int)
    eval_every: int = param(50, "steps between validation evaluations", positive_int)
    patience: int = param(2, "evaluations without improvement before stopping early (0: never); counted "
                          "only once a run predicts more than one class on validation", non_negative_int)
    student_lr_grid: list = param([2.5e-4, 5.0e-4], "learning rates every arm tries first for random-init students",
                                  lr_list)
    student_lr_grid_warm: list = param([2.5e-4, 5.0e-4], "... for students that start from teacher layers or "
                                                         "pretrained", lr_list)
    lr_tune_seeds: int = param(2, "each arm's rate is chosen on its mean validation score over this many first "
                                  "seeds (at most all)", positive_int)
    student_lr_extend: int = param(2, "rates added past a grid's edge when an arm's best rate sits there (0: never)",
                                   non_negative_int)
    seeds: list = param([0, 1, 2, 3, 4], "student seeds (each student x arm x seed)", seed_list)
    transfer_curve: list = param([2], "transfer-pool sizes (multiples of the labelled set) for one student's curve "
                                      "([] skips)",
                                 lambda v: None if isinstance(v, list) and all(_is_num(x) and x > 0 for x in v)
                                 else "must be a list of positive multiples of the labelled training set ([] skips "
                                      "the curve)")
    transfer_curve_seeds: list = param([0], "seeds of the transfer curve", seed_list)
    alpha: float = param(0.5, "weight of the distillation term",
                         lambda v: None if _is_num(v) and 0 <= v <= 1 else f"must be within [0, 1], got {v!r}")
    temperature: float = param(4.0, "softmax temperature T", positive_number)
    teacher_mode: str = param("cached", "cached (teacher logits from disk) | online (teacher forward per batch)",
                              one_of("cached", "online"))
    hidden_weight: float = param(1.0, "distilled_hidden: weight of the TinyBERT hidden-state + attention-score "
                                      "term added to the distilled loss (chosen on validation: `helpers weights`)",
                                 positive_number)
    attention_weight: float = param(1.0, "distilled_attention: weight of the MiniLM attention + value-relation "
                                         "term (chosen on validation)", positive_number)
    attribution_weight: float = param(1.0, "distilled_attribution: weight of the AD-KD token-attribution term "
                                           "(chosen on validation)", positive_number)

    def _together(self) -> list[tuple[str, str]]:
        wrong = []
        beyond = [a for a in self.arms if a in BEYOND_ARMS]
        if beyond and "distilled" not in self.arms:
            wrong.append(("arms", f"{', '.join(beyond)} need(s) distilled (each adds one term to its loss and is "
                                  f"compared with it)"))
        if "chain" in self.arms and "distilled" not in self.arms:
            wrong.append(("arms", "chain needs distilled (its first link is direct distillation, and it is compared "
                                  "with it)"))
        if not set(self.transfer_students) <= set(self.students):
            wrong.append(("transfer_students", "must be a subset of students ([] = all)"))
        if self.transfer_curve and not set(self.transfer_curve_seeds) <= set(self.seeds):
            wrong.append(("transfer_curve_seeds", f"must be a non-empty subset of seeds {self.seeds}"))
        return wrong


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttributionParams(DeviceParams, BootstrapParams):
    """Stage 04: token attributions and their agreement with the teacher's."""

    STAGE: ClassVar[str] = "04"
    TITLE: ClassVar[str] = "attributions (04)"
    ig_examples: int = param(80, "stratified test cases explained (the same for every model; the seed term dominates "
                                 "attribution intervals, so seeds narrow them more than cases)", positive_int)
    ig_steps: int = param(16, "Integrated Gradients steps every case starts with", positive_int)
    ig_max_steps: int = param(64, "cases whose relative convergence delta exceeds ig_delta_threshold are explained "
                                  "again with twice the steps, up to this", positive_int)
    ig_internal_batch_size: int = param(16, "IG internal batch size (steps per forward pass, per example)",
                                        positive_int)
    ig_delta_threshold: float = param(0.05, "|convergence delta| / max(|logit change|, 1) tolerated; a case over it "
                                            "at ig_max_steps is left out of means, counted", positive_number)
    topk: int = param(10, "k of top-k overlap and rationale recall", positive_int)
    attribution_target: float = param(0.03, "half-width in attribution cosine that 04's plan aims each contrast at "
                                            "(it says the seeds and cases that would reach it)", positive_number)
    attribution_seeds: list = param([0, 1, 2, 3, 4], "student seeds explained (intervals treat seeds and cases as "
                                                     "random; one seed: they cover one training run)", seed_list)
    aggregate_words: bool = param(False, "sum word pieces into words before comparing", boolean)
    faithfulness_replacement: str = param("pad", "pad | mask: token used to remove tokens in comprehensiveness/"
                                                 "sufficiency", one_of("pad", "mask"))

    def _together(self) -> list[tuple[str, str]]:
        if self.ig_max_steps < self.ig_steps:
            return [("ig_max_steps", f"must be at least ig_steps ({self.ig_steps}): it caps the step doubling")]
        return []


@dataclasses.dataclass(frozen=True, kw_only=True)
class ReportParams(DeviceParams):
    """Stage 05: the benchmark and the report."""

    STAGE: ClassVar[str] = "05"
    TITLE: ClassVar[str] = "benchmark and report (05)"
    profile: str = param("default", "name recorded in summary.json", text)
    bench_seeds: list = param([0], "student seeds whose checkpoints get deployment variants (bf16, int8) scored",
                              seed_list)
    bench_cases: int = param(500, "test cases the deployment variants are scored on (0: all)", non_negative_int)
    bench_repeats: int = param(10, "timed runs per latency figure", positive_int)
    bench_warmup: int = param(3, "untimed warm-up runs", non_negative_int)
    paper_benchmark: bool = param(True, "also time the seed's six architectures (random weights)", boolean)
    paper_repeats: int = param(5, "timed runs per latency figure of those six (0: bench_repeats)", non_negative_int)
    recommend_tolerance: float = param(0.02, "recommend the smallest model within this accuracy of the teacher",
                                       lambda v: None if _is_num(v) and 0 <= v < 1 else "must be within [0, 1)")


STAGES: tuple[type[StageParams], ...] = (DataParams, TeacherParams, StudentParams, AttributionParams, ReportParams)
GENERAL = ("profile", "run_dir", "device", "threads", "precision")  # listed first in profiles/default.yaml


def declarations() -> dict[str, dataclasses.Field]:
    """Every parameter's field, in profile order: the general ones, then each stage's own."""
    fields: dict[str, dataclasses.Field] = {}
    by_name = {f.name: f for cls in STAGES for f in dataclasses.fields(cls)}
    for name in GENERAL:
        fields[name] = by_name[name]
    for cls in STAGES:
        for f in dataclasses.fields(cls):
            fields.setdefault(f.name, f)
    return fields


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def defaults() -> dict[str, Any]:
    """Every known parameter and its default value (the default profile), in profile order."""
    return {name: default_of(f) for name, f in declarations().items()}


def stage_of(name: str) -> str:
    """The profile section a parameter is listed under."""
    if name in GENERAL:
        return ""
    return next(cls.TITLE for cls in STAGES if name in cls.names() and name not in _listed_before(cls))


def _listed_before(cls: type[StageParams]) -> set[str]:
    earlier = STAGES[:STAGES.index(cls)]
    return set(GENERAL) | {n for c in earlier for n in c.names()}


# ---------------------------------------------------------------- renderings (the profile, the notebook cells)
def literal(value: Any, style: str = "yaml") -> str:
    """A value as the literal the profile (yaml) or a notebook (python) writes."""
    if isinstance(value, bool):
        return ("true" if value else "false") if style == "yaml" else repr(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-2:
            mantissa, exponent = f"{value:.1e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"' if (style == "python" or not value or "{" in value) else value
    if isinstance(value, list):
        return "[" + ", ".join(literal(v, style) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k, style)}: {literal(v, style)}" for k, v in value.items()) + "}"
    return repr(value)


def render_default_profile() -> str:
    """profiles/default.yaml, from the declarations."""
    lines = ["# Default profile: offline, CPU, the whole suite in about 14 minutes on a 2-core machine (budget: 25).",
             "# Generated from helpers/core/params.py (`python -m helpers params > profiles/default.yaml`); every",
             "# notebook's `parameters` cell holds these same defaults. Other profiles list only what they change."]
    section = None
    for name, f in declarations().items():
        title = stage_of(name)
        if title != section and title:
            lines.append(f"# --- {title}")
        section = title
        lines.append(f"{name + ': ' + literal(default_of(f)):<27} # {f.metadata['help']}".rstrip())
    return "\n".join(lines) + "\n"


def render_parameters_cell(cls: type[StageParams]) -> str:
    """A notebook's `parameters` cell for stage `cls`: one literal a line, in profile order, with its help."""
    order = list(declarations())
    names = sorted(cls.names(), key=order.index)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return "\n".join(f"{n} = {literal(default_of(fields[n]), 'python')}  # {fields[n].metadata['help']}"
                     for n in names) + "\n"


def render_parameters_markdown() -> str:
    """The parameter reference of docs/parameters.md: one table per profile section, from the declarations."""
    out, section = [], None
    for name, f in declarations().items():
        title = stage_of(name) or "whole run"
        if title != section:
            out += ["", f"### {title[0].upper() + title[1:]}", "", "| parameter | default | meaning |", "|---|---|---|"]
            section = title
        value = literal(default_of(f)).replace("|", "\\|")
        out.append(f"| `{name}` | `{value}` | {f.metadata['help'].replace('|', chr(92) + '|')} |")
    return "\n".join(out[1:]) + "\n"
