"""A one-weight model whose loss turns NaN at its third forward, as an fp16 overflow does: the stand-in behind the
tests that training stops at the first non-finite loss (the notebooks' ``loss_printer`` and the script's Trainer)."""
from __future__ import annotations

import torch


class OverflowsAtStep3(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.calls = torch.nn.Parameter(torch.ones(1)), 0

    def forward(self, input_ids, attention_mask=None, labels=None):
        self.calls += 1
        loss = ((self.w * input_ids.float() - labels.float()) ** 2).mean()
        return {"loss": loss * float("nan") if self.calls >= 3 else loss}
