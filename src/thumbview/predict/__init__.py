"""The frozen-feature model kind: heads on encoder features, evaluated honestly.

The API is in the modules (`thumbview.predict.model.ViewPredictor`, `.workflow.train`,
`.crossval.cross_validate`, ...); the package exports nothing so that loading a model for
inference never imports the training workflow or plotting.
"""

__all__: list[str] = []
