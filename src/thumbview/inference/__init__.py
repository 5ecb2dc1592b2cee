"""The light inference layer: load a trained model once, then predict.

Everything that *uses* a trained model (predict, compare, frames, explain, serve, bot) goes
through here; training code (`thumbview.predict.workflow`, heads' fitting, plots) stays apart,
so scoring a frame or answering a web request never imports the training stack.
"""

from thumbview.inference.predictor import LoadedPredictor, Prediction
from thumbview.inference.sae import SaeEncoder

__all__ = ["LoadedPredictor", "Prediction", "SaeEncoder"]
