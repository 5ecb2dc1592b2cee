"""End-to-end fine-tuning: a vision backbone trained on the thumbnails' pixels, title fused in.

`thumbview train` fits a head on frozen features (fast, strong on small data). This stage
trains the image model itself (a ViT from scratch, a small ConvNeXt, CLIP's vision tower
from local weights, or any timm model with the `thumbview[timm]` extra), with the MiniLM
title embedding concatenated into a small MLP head.
The saved folder loads through `thumbview.inference.LoadedPredictor.load`, so predict,
evaluate, compare, frames, explain and serve accept it like any other model.

Importing this package is light; torch, transformers and timm load inside the functions.
"""

from thumbview.finetune.config import BACKBONES, FinetuneConfig, FinetuneError

__all__ = ["BACKBONES", "FinetuneConfig", "FinetuneError"]
