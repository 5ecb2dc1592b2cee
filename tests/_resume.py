"""One check that fine-tuning resumes exactly, shared by the transformers and timm tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def assert_resume_equals_straight(dataset, config, root: Path) -> None:
    """Interrupt before epoch 2, resume: the weights equal an uninterrupted run's, bit for bit."""
    from thumbview.finetune.train import FinetuneInterrupted, finetune

    finetune(dataset, config, root / "straight")

    def stop(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(FinetuneInterrupted, match="--resume"):
        finetune(dataset, config, root / "broken", before_epoch=stop)
    finetune(dataset, config, root / "broken", resume=True)
    a = load_file(root / "straight" / "model.safetensors")
    b = load_file(root / "broken" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
