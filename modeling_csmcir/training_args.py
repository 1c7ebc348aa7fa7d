"""`CSMCIRTrainingArguments`: `TrainingArguments` plus the memory bank's settings.

Kept apart from the trainer so a command line can be parsed (and ``--help`` answered) without importing
`transformers.Trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .memory_bank import BANK_STRATEGIES, MemoryBank, check_bank_settings


@dataclass
class CSMCIRTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the memory bank's settings (see `MemoryBank` for the formulas)."""

    bank_strategy: str = field(
        default="entropy",
        metadata={"help": "Memory bank strategy: none, fifo (every entry), hard (top k_max), entropy (per-query k).",
                  "choices": list(BANK_STRATEGIES)},
    )
    # The bank defaults are settings measured not to collapse training (tests/csmcir/test_finetune_defaults.py,
    # benchmarks/results/finetune_csmcir.md): a bank of recent entries, at most 16 negatives per query, each counted
    # as 0.1 of an in-batch one, served after a warm-up. The earlier defaults (4096 entries, k 16..256, weight 1,
    # from step 0) collapsed the README's headline run, and k <= 32 at weight 1 still collapses a batch-16
    # fine-tune whose in-batch loss has not left its plateau: the bank's detached negatives take over the softmax
    # (csmcir_bank_diagnosis.md).
    bank_size: int = field(default=1024, metadata={"help": "Number of target embeddings the bank holds."})
    bank_k_min: int = field(default=4, metadata={"help": "Fewest bank negatives per query (entropy strategy)."})
    bank_k_max: int = field(default=16, metadata={"help": "Most bank negatives per query (entropy and hard)."})
    bank_age_decay: float = field(
        default=100.0, metadata={"help": "Age down-weighting: log w = -age / bank_age_decay (steps); <= 0 disables."}
    )
    bank_max_age: int = field(default=200, metadata={"help": "Evict entries older than this many steps; < 0 never."})
    bank_start_step: int = field(
        default=50, metadata={"help": "First optimiser step at which the bank serves negatives (XBM-style warm-up)."}
    )
    bank_weight: float = field(
        default=0.1,
        metadata={"help": "Weight w of every served bank negative in the InfoNCE denominator (log w added to its logit); "
                          "w < 1 keeps a large bank from outweighing the in-batch terms in fast from-scratch training."},
    )
    bank_refresh_every: int = field(
        default=0, metadata={"help": "Re-encode the oldest bank entries with the current model every N steps; 0 = off."}
    )
    bank_refresh_size: int = field(default=256, metadata={"help": "How many of the oldest entries each refresh re-encodes."})
    freeze_temperature: bool = field(
        default=False,
        metadata={"help": "Keep the InfoNCE temperature fixed. Adam moves the raw temperature by about the learning "
                          "rate every step, so at from-scratch rates (1e-3) it collapses to its clamp within tens of "
                          "steps, fastest with bank negatives; freeze it there (BLIP-2 fine-tuning rates are fine)."},
    )
    vision_feature_cache: str = field(
        default="none",
        metadata={"help": "With a frozen vision tower (config.freeze_vision), reuse each image's vision features after "
                          "the first epoch, keyed by image id (target_ids / reference_ids) under a hash of the tower's "
                          "weights: 'none', 'memory', 'auto' (memory, spilling to $HF_HOME/csmcir/vision_features past "
                          "2 GiB) or a folder (disk, memory-mapped shards reused by later runs). See "
                          "modeling_csmcir/vision_feature_cache.py."},
    )
    # The CIR collators build model inputs from raw image/text columns that `forward` does not take; the
    # Trainer's default (True) would drop them before the collator sees them.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Drop dataset columns forward() does not take (off: the collator needs them)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # The bank's own validation, run at parse time so a bad flag fails before any data is loaded.
        check_bank_settings(self.bank_size, 1, self.bank_strategy, self.bank_k_min, self.bank_k_max,
                            self._bank_max_age(), self.bank_weight)
        if self.bank_refresh_every < 0 or self.bank_refresh_size < 0:
            raise ValueError(
                f"bank_refresh_every and bank_refresh_size must be >= 0, got {self.bank_refresh_every} and "
                f"{self.bank_refresh_size}"
            )

    def _bank_max_age(self) -> int | None:
        return self.bank_max_age if self.bank_max_age >= 0 else None

    def build_memory_bank(
        self, dim: int, device: torch.device | str | None = None, tokens_per_entry: int | None = None
    ) -> MemoryBank:
        """The `MemoryBank` these arguments describe, for embeddings of size `dim`; `tokens_per_entry=K` for a model
        whose targets are token-level (`config.target_representation="tokens"`: K = `config.num_query_tokens`)."""
        return MemoryBank(
            capacity=self.bank_size,
            dim=dim,
            strategy=self.bank_strategy,
            k_min=self.bank_k_min,
            k_max=self.bank_k_max,
            age_decay=self.bank_age_decay if self.bank_age_decay > 0 else None,
            max_age=self._bank_max_age(),
            start_step=self.bank_start_step,
            device=device,
            weight=self.bank_weight,
            tokens_per_entry=tokens_per_entry,
        )


@dataclass
class CSMCIRPretrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the ITC stage's own settings."""

    temperature_learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Learning rate of the ITC temperature τ (its own parameter group, no weight decay). Adam "
                          "moves a parameter by about its learning rate per step, so the model's rate would send τ "
                          "to its clamp in tens of steps; 0 freezes τ."},
    )
    completion_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the caption-completion term (ours, beyond BLIP-2's ITC): the joint pass over "
                          "(image, caption with words masked) — the CIR query computation — contrasted with the "
                          "full caption's text feature, so the query path learns to read the image; 0 = ITC only."},
    )
    completion_mask_rate: float = field(
        default=0.5, metadata={"help": "Share of caption words masked for the caption-completion term."}
    )
    freeze_word_embeddings: bool = field(
        default=False,
        metadata={"help": "Keep the Q-Former's word embeddings fixed (e.g. MiniLM's): cheaper steps with a large "
                          "vocabulary, and the seeded lexical space is kept."},
    )
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep the row index the collator needs."})


__all__ = ["CSMCIRPretrainingArguments", "CSMCIRTrainingArguments"]
