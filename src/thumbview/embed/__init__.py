"""Features, computed once and cached: CLIP, MiniLM titles, visual and title descriptors, context.

The API is in the modules (`thumbview.embed.registry.get_encoder`, `.cache.embed`, ...);
the package exports nothing so that asking for one encoder never imports another's model.
"""

__all__: list[str] = []
