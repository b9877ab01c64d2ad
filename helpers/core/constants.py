"""Names shared by every layer: splits, arms, precisions, launchers and the shortest max_len."""
from __future__ import annotations

MIN_MAX_LEN = 8  # fewest WordPiece tokens per case: [CLS], [SEP] and a few words (data.prepare and validate)

BEYOND_ARMS = ("distilled_hidden", "distilled_attention", "distilled_attribution")  # logits + one inner term
ARMS = ("independent", "distilled", "distilled_transfer", "pseudo_label_transfer", "chain", *BEYOND_ARMS)
LOGIT_ARMS = ARMS[:5]  # the arms that distil the teacher's outputs alone (the default profile's arms)
TRANSFER_ARMS = ("distilled_transfer", "pseudo_label_transfer")
CHAIN_ARM = "chain"  # the distilled loss, with the previous (larger) student's logits in place of the teacher's
PRECISIONS = ("auto", "fp32", "bf16")

LAUNCHERS = ("inprocess", "accelerate")

SPLITS = ("train", "val", "test")
TRANSFER = "transfer"  # key of the unlabelled transfer pool next to the splits (see load_cases)
