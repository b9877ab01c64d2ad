"""Building, saving and loading sequence classifiers from specs (safetensors only), vocabulary trimming."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    PreTrainedModel,
)

from helpers.models.specs import PACKAGE_SOURCE, SPECIAL_IDS, UNK_ID, VOCAB_SIZE, ModelSourceError, ModelSpec
from helpers.models.tokenization import bundled_model_dir, get_tokenizer


class TrimmedEmbedding(nn.Embedding):
    """Word embeddings for the wordpieces a corpus uses: token ids are mapped to rows, unknown ids to [UNK].

    Input ids stay bert-base-uncased ids (the tokenizer, and the token alignment attributions rely on, are
    unchanged); `id_map[token_id]` gives the row. Rows start as the full matrix's rows, so a trimmed model computes
    exactly what the untrimmed one does on every text made of kept wordpieces, while the optimizer no longer
    updates (and the checkpoint no longer stores) ~30k rows no case ever looks up.
    """

    def __init__(self, weight: torch.Tensor, keep_ids: torch.Tensor, padding_idx: int | None = 0):
        super().__init__(weight.shape[0], weight.shape[1], padding_idx=padding_idx)
        with torch.no_grad():
            self.weight.copy_(weight)
        id_map = torch.full((VOCAB_SIZE,), int((keep_ids == UNK_ID).nonzero()[0, 0]), dtype=torch.long)
        id_map[keep_ids] = torch.arange(len(keep_ids))
        self.register_buffer("id_map", id_map)

    @property
    def keep_ids(self) -> torch.Tensor:
        """The bert-base-uncased ids that have a row, in row order."""
        rows = torch.full((self.num_embeddings,), -1, dtype=torch.long)
        ids = torch.arange(VOCAB_SIZE)
        hit = self.id_map[ids] != self.id_map[UNK_ID]
        rows[self.id_map[ids[hit]]] = ids[hit]
        rows[self.id_map[UNK_ID]] = UNK_ID
        return rows

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(self.id_map[input_ids])


def trim_vocabulary(model: PreTrainedModel, keep_ids: list[int] | torch.Tensor) -> PreTrainedModel:
    """Replace the word-embedding matrix by the rows of `keep_ids` (in place; returns the model)."""
    keep = torch.as_tensor(sorted(set(int(i) for i in keep_ids) | set(SPECIAL_IDS)), dtype=torch.long)
    old = model.get_input_embeddings()
    if isinstance(old, TrimmedEmbedding):
        raise ValueError("the model's vocabulary is already trimmed")
    new = TrimmedEmbedding(old.weight.detach()[keep], keep, padding_idx=old.padding_idx)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    model.config.trimmed_vocabulary = True
    return model


def full_vocabulary_params(model: nn.Module) -> int:
    """Parameters the model would have with the whole 30,522-row vocabulary (its own count when untrimmed)."""
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings()
    if isinstance(emb, TrimmedEmbedding):
        total += (VOCAB_SIZE - emb.num_embeddings) * emb.embedding_dim
    return total


def config_for(spec: ModelSpec, num_labels: int = 2):
    """A transformers config for `spec` with the shared bert-base-uncased vocabulary."""
    if spec.family == "bert":
        return BertConfig(vocab_size=VOCAB_SIZE, hidden_size=spec.hidden, num_hidden_layers=spec.layers,
                          num_attention_heads=spec.heads, intermediate_size=spec.intermediate,
                          max_position_embeddings=spec.max_positions, num_labels=num_labels)
    if spec.family == "distilbert":
        return DistilBertConfig(vocab_size=VOCAB_SIZE, dim=spec.hidden, n_layers=spec.layers, n_heads=spec.heads,
                                hidden_dim=spec.intermediate, max_position_embeddings=spec.max_positions,
                                num_labels=num_labels)
    raise ValueError(f"Spec {spec.name}: unknown family {spec.family!r} (bert | distilbert)")


def _resolve_source(source: str) -> str:
    return str(bundled_model_dir()) if source == PACKAGE_SOURCE else source


def _load_pretrained(spec: ModelSpec, num_labels: int) -> PreTrainedModel:
    source = _resolve_source(spec.source)
    local = Path(source).expanduser()
    is_folder = local.is_dir()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(local) if is_folder else source, num_labels=num_labels, use_safetensors=True,
            local_files_only=is_folder)
    except Exception as err:  # network errors, missing files, missing safetensors all end here
        raise ModelSourceError(
            f"Could not load pretrained weights for model spec {spec.name!r} from {spec.source!r} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). No model hub is reachable from this machine. "
            f"Point the spec at a local folder holding config.json and model.safetensors with "
            f"`-p model_overrides '{{{spec.name}: /path/to/folder}}'`, or train it from scratch with "
            f"`-p model_overrides '{{{spec.name}: random}}'`."
        ) from err
    cfg = model.config
    got = (cfg.model_type, getattr(cfg, "num_hidden_layers", getattr(cfg, "n_layers", None)),
           getattr(cfg, "hidden_size", getattr(cfg, "dim", None)))
    if got[1:] != (spec.layers, spec.hidden) or getattr(cfg, "vocab_size", 0) != VOCAB_SIZE:
        raise ModelSourceError(
            f"{spec.source!r} holds a {got[0]} {got[1]}x{got[2]} model with vocab {getattr(cfg, 'vocab_size', '?')}, "
            f"but spec {spec.name!r} is {spec.family} {spec.shape} with the bert-base-uncased vocabulary.")
    if is_folder:
        check_vocabulary(local, spec.name)
    return model


def folder_vocabulary(folder: Path) -> list[str] | None:
    """The wordpieces of a checkpoint folder in id order (vocab.txt, else tokenizer.json); None when it has none."""
    if (folder / "vocab.txt").is_file():
        return (folder / "vocab.txt").read_text(encoding="utf-8").rstrip("\n").split("\n")
    if (folder / "tokenizer.json").is_file():
        vocab = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            return [tok for tok, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
        if isinstance(vocab, list):  # unigram tokenizers: [[piece, score], ...]
            return [v[0] if isinstance(v, list) else str(v) for v in vocab]
    return None


def vocabulary_digest(tokens: list[str]) -> str:
    """sha256 of a vocabulary (its wordpieces in id order)."""
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def check_vocabulary(folder: Path, spec_name: str) -> None:
    """Refuse a local checkpoint folder whose vocabulary is not bert-base-uncased's, id for id.

    Every model shares one tokenizer, so a folder trained on another vocabulary would read the same ids as other
    words. A folder without a vocabulary file passes only when it was written by `save_model` (it has the spec.json
    this suite writes, and this suite only ever uses the shared vocabulary).
    """
    tokens = folder_vocabulary(folder)
    if tokens is None:
        if (folder / "spec.json").is_file():
            return
        raise ModelSourceError(
            f"{folder} (model spec {spec_name!r}) has no vocab.txt or tokenizer.json, so its vocabulary cannot be "
            f"checked against bert-base-uncased's. Save the tokenizer beside the weights "
            f"(`tokenizer.save_pretrained('{folder}')`).")
    ref = get_tokenizer().convert_ids_to_tokens(list(range(VOCAB_SIZE)))
    if vocabulary_digest(tokens) != vocabulary_digest(ref):
        first = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), min(len(tokens), len(ref)))
        found = tokens[first] if first < len(tokens) else "<end>"
        raise ModelSourceError(
            f"{folder} (model spec {spec_name!r}) has a vocabulary that differs from bert-base-uncased's, which every "
            f"model here shares: {len(tokens)} wordpieces vs {VOCAB_SIZE}, first difference at id {first} "
            f"({found!r} vs {ref[first] if first < len(ref) else '<end>'!r}). Use a checkpoint trained with the "
            f"bert-base-uncased vocabulary, or train the spec from scratch (`{spec_name}: random`).")


def _copy_bert_layer_into_distilbert(src: nn.Module, dst: nn.Module) -> None:
    pairs = {
        "attention.q_lin": src.attention.self.query, "attention.k_lin": src.attention.self.key,
        "attention.v_lin": src.attention.self.value, "attention.out_lin": src.attention.output.dense,
        "sa_layer_norm": src.attention.output.LayerNorm, "ffn.lin1": src.intermediate.dense,
        "ffn.lin2": src.output.dense, "output_layer_norm": src.output.LayerNorm,
    }
    for name, module in pairs.items():
        dst.get_submodule(name).load_state_dict(module.state_dict())


def _copy_word_embeddings(src: nn.Embedding, dst: nn.Embedding) -> None:
    """Copy word-embedding rows from `src` to `dst`, either of them possibly trimmed (rows matched by token id)."""
    src_ids = src.keep_ids if isinstance(src, TrimmedEmbedding) else torch.arange(src.num_embeddings)
    dst_ids = dst.keep_ids if isinstance(dst, TrimmedEmbedding) else torch.arange(dst.num_embeddings)
    src_row = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
    src_row[src_ids] = torch.arange(len(src_ids))
    rows = src_row[dst_ids]
    if (rows < 0).any():
        raise ValueError("the teacher's vocabulary lacks wordpieces the student keeps")
    dst.weight.copy_(src.weight[rows])


def init_from_teacher_layers(student: PreTrainedModel, teacher: PreTrainedModel) -> list[int]:
    """Copy the teacher's embeddings and every k-th encoder layer into `student` (DistilBERT-style)."""
    t_cfg, s_cfg = teacher.config, student.config
    if teacher.config.model_type != "bert":
        raise ValueError("teacher_layers initialisation needs a BERT-family teacher")
    s_hidden = getattr(s_cfg, "hidden_size", getattr(s_cfg, "dim", None))
    s_layers = getattr(s_cfg, "num_hidden_layers", getattr(s_cfg, "n_layers", None))
    if s_hidden != t_cfg.hidden_size:
        raise ValueError(f"teacher_layers needs equal widths: teacher {t_cfg.hidden_size}, student {s_hidden}")
    if s_layers > t_cfg.num_hidden_layers:
        raise ValueError("teacher_layers needs a student no deeper than the teacher")
    k = t_cfg.num_hidden_layers // s_layers
    picked = [i * k for i in range(s_layers)]
    t_layers = teacher.bert.encoder.layer
    with torch.no_grad():
        _copy_word_embeddings(teacher.get_input_embeddings(), student.get_input_embeddings())
        if student.config.model_type == "bert":
            emb_t, emb_s = teacher.bert.embeddings, student.bert.embeddings
            for name in ("position_embeddings", "token_type_embeddings", "LayerNorm"):
                getattr(emb_s, name).load_state_dict(getattr(emb_t, name).state_dict())
            for i, j in enumerate(picked):
                student.bert.encoder.layer[i].load_state_dict(t_layers[j].state_dict())
            if teacher.bert.pooler is not None and student.bert.pooler is not None:
                student.bert.pooler.load_state_dict(teacher.bert.pooler.state_dict())
        else:
            emb_t, emb_s = teacher.bert.embeddings, student.distilbert.embeddings
            emb_s.position_embeddings.load_state_dict(emb_t.position_embeddings.state_dict())
            emb_s.LayerNorm.load_state_dict(emb_t.LayerNorm.state_dict())
            for i, j in enumerate(picked):
                _copy_bert_layer_into_distilbert(t_layers[j], student.distilbert.transformer.layer[i])
    return picked


def build_model(spec: ModelSpec, teacher: PreTrainedModel | None = None, num_labels: int = 2,
                seed: int = 0, keep_ids: list[int] | None = None) -> PreTrainedModel:
    """A fresh classifier for `spec`: pretrained weights, random init from the config, or teacher layers.

    With `keep_ids` the word embeddings are trimmed to those wordpieces after initialisation, so the kept rows
    hold exactly the values the untrimmed model would have.
    """
    if spec.init == "pretrained":
        torch.manual_seed(seed)  # the new classifier head
        model = _load_pretrained(spec, num_labels)
        return model if keep_ids is None else trim_vocabulary(model, keep_ids)
    torch.manual_seed(seed)
    config = config_for(spec, num_labels)
    cls = BertForSequenceClassification if spec.family == "bert" else DistilBertForSequenceClassification
    model = cls(config)
    if keep_ids is not None:
        trim_vocabulary(model, keep_ids)
    if spec.init == "teacher_layers":
        if teacher is None:
            raise ValueError(f"Spec {spec.name!r} is initialised from teacher layers: pass the fine-tuned teacher")
        init_from_teacher_layers(model, teacher)
    elif spec.init != "random":
        raise ValueError(f"Spec {spec.name!r}: unknown init {spec.init!r} (pretrained | random | teacher_layers)")
    return model


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total parameters, parameters outside the embedding block)."""
    total = sum(p.numel() for p in model.parameters())
    base = getattr(model, model.base_model_prefix, model)
    embedding = sum(p.numel() for p in base.embeddings.parameters())
    return total, total - embedding


def save_model(model: PreTrainedModel, folder: str | Path, spec: ModelSpec | None = None) -> Path:
    """Save config.json + model.safetensors (and the spec) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    if spec is not None:
        (folder / "spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return folder


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> PreTrainedModel:
    """Load a classifier saved by `save_model` (safetensors only, never pickle), in eval mode."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder / 'model.safetensors'} not found: train that model first")
    config = json.loads((folder / "config.json").read_text())
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True, local_files_only=True)
    if config.get("trimmed_vocabulary"):
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
        key = next((k for k in state if k.endswith("word_embeddings.id_map")), None)
        if key is None:
            raise ValueError(f"{folder}: config says trimmed_vocabulary but model.safetensors has no id_map")
        old = model.get_input_embeddings()
        id_map = state[key]
        unk_row = int(id_map[UNK_ID])
        keep = torch.full((old.num_embeddings,), UNK_ID, dtype=torch.long)
        hit = id_map != unk_row
        keep[id_map[hit]] = torch.arange(VOCAB_SIZE)[hit]
        model.set_input_embeddings(TrimmedEmbedding(old.weight.detach(), keep, padding_idx=old.padding_idx))
    return model.to(device).eval()


def load_spec(folder: str | Path) -> ModelSpec:
    """The spec saved beside a checkpoint."""
    return ModelSpec(**json.loads((Path(folder) / "spec.json").read_text()))


def checkpoint_size_mb(folder: str | Path) -> float:
    """On-disk size of a checkpoint's model.safetensors in MB (10^6 bytes)."""
    return (Path(folder) / "model.safetensors").stat().st_size / 1e6
