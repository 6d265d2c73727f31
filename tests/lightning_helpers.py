"""A tiny LightningModule and DataModule on generated data, shared by the Lightning tests."""

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_data(n: int = 512, d: int = 8, classes: int = 3, seed: int = 0) -> TensorDataset:
    w = torch.randn(d, classes, generator=torch.Generator().manual_seed(1234))   # one rule for every split
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x @ w + 0.8 * torch.randn(n, classes, generator=g)).argmax(dim=1)
    return TensorDataset(x, y)


class TinyClassifier(pl.LightningModule):
    def __init__(self, d: int = 8, classes: int = 3, lr: float = 0.2, optimizer: str = "sgd"):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        if self.hparams.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class TinyData(pl.LightningDataModule):
    def __init__(self, batch_size: int = 8, n: int = 512):
        super().__init__()
        self.batch_size = batch_size
        self.n = n

    def setup(self, stage=None):
        self.train = make_data(self.n, seed=0)
        self.val = make_data(self.n // 4, seed=1)

    def train_dataloader(self):
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self):
        return DataLoader(self.val, batch_size=64)


def trainer(tmp_path, callbacks, **kw) -> pl.Trainer:
    from lightning.pytorch.loggers import CSVLogger

    opts = dict(max_epochs=1, accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False,
                enable_checkpointing=False, log_every_n_steps=1, num_sanity_val_steps=0, limit_val_batches=0,
                logger=CSVLogger(tmp_path, name="logs"), deterministic=True)
    opts.update(kw)
    return pl.Trainer(callbacks=callbacks, **opts)
