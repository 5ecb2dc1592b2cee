"""The light inference layer: load a trained model once, then predict.

Everything that *uses* a trained model (predict, compare, frames, explain, serve, bot) goes
through here. Each model kind registers how its folder loads (`kinds`, by entry point), so
this layer imports no training code (`thumbview.predict.workflow`, heads' fitting, plots,
training loops): scoring a frame or answering a web request never imports the training stack.
"""

from thumbview.inference.predictor import LoadedPredictor, Prediction, predict_files
from thumbview.inference.sae import SaeEncoder

__all__ = ["LoadedPredictor", "Prediction", "SaeEncoder", "predict_files"]
