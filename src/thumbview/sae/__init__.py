"""Sparse autoencoders on CLIP activations and the study of which features go with views.

The API is in the modules (`thumbview.sae.architectures.build_sae`, `.folder.load_sae`,
`.study.run_study`, ...); the package exports nothing so that the CLI can read the options
in `sae.config` without importing torch.
"""

__all__: list[str] = []
