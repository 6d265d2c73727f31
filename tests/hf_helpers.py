"""A tiny Hugging Face model built from a config (no download) and generated token data."""

import torch
from torch.utils.data import Dataset


class TokenData(Dataset):
    """Sequences of 12 tokens; the label is whether the first token is 1 or 2, with 10% of labels flipped."""

    def __init__(self, n: int = 256, seed: int = 0, vocab: int = 20, length: int = 12):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, length), generator=g)
        marks = torch.randint(0, 3, (n, length), generator=g)
        self.ids[marks == 1] = 1
        self.ids[marks == 2] = 2
        self.ids[:, 0] = torch.randint(1, 3, (n,), generator=g)
        flip = torch.rand(n, generator=g) < 0.1
        self.labels = ((self.ids[:, 0] == 1) ^ flip).long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=16, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg)


def args(tmp_path, **kw):
    from transformers import TrainingArguments

    opts = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, gradient_accumulation_steps=4,
                learning_rate=0.05, optim="sgd", lr_scheduler_type="constant", num_train_epochs=1, logging_steps=1,
                report_to=[], save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, max_grad_norm=1.0)
    opts.update(kw)
    return TrainingArguments(**opts)
